"""The ``diagnose`` pipeline: load a segmentation model and chips, measure ERF and recall of
hidden pixels, write JSON, CSV and plots."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terrastill.atomic import write_text_atomic
from terrastill.errors import BadInputError


@dataclass(frozen=True)
class DiagnoseRequest:
    model: Path
    chips: Path
    out: Path
    chips_max: int = 200
    pixels_per_chip: int = 4
    split: str = "all"
    batch_size: int = 8
    device: str = "auto"
    seed: int = 0
    reference: tuple[str, ...] = ()
    occlude: int = 0  # side (px) of a seeded square masked at the target step of each chip


def _dataset(req: DiagnoseRequest, card: Any) -> Any:
    from terrastill.data.dataset import ChipDataset, read_dataset_meta
    from terrastill.models.modelfile import check_input_spec
    from terrastill.models.registry import uses_coords

    meta = read_dataset_meta(req.chips)
    check_input_spec(card.input_spec, meta, what=str(req.chips))
    meta = {**meta, "stats": {"mean": card.input_spec["mean"], "std": card.input_spec["std"]}}
    ds = ChipDataset(req.chips, req.split, coords=uses_coords(card.arch), meta=meta)
    if len(ds) == 0:
        raise BadInputError(f"{req.chips}: no chips in split {req.split!r}")
    if req.reference:
        from terrastill.training.reference import apply_reference, resolve_references

        apply_reference(ds, resolve_references(list(req.reference), card.class_names))
    return ds


def _subset(n: int, limit: int, seed: int) -> list[int]:
    if n <= limit:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


def diagnose(req: DiagnoseRequest) -> dict[str, Any]:
    """Run both diagnostics; return (and write to ``out/diagnose.json``) the summary."""
    from torch.utils.data import DataLoader, Subset

    from terrastill.data.normalize import normalize_chip
    from terrastill.diagnostics import erf, recall
    from terrastill.models.modelfile import load_model_file
    from terrastill.models.registry import uses_coords
    from terrastill.training.train import collate_items, resolve_device

    t0 = time.perf_counter()
    device = resolve_device(req.device)
    loaded = load_model_file(req.model)
    card = loaded.card
    task = getattr(loaded.model, "task", card.task)
    if card.task != "segmentation" or task != "segmentation":
        raise BadInputError(f"{req.model}: a {card.task} model has no segmentation head; "
                            "diagnose needs per-pixel class logits")
    names = list(card.class_names)
    ds = _dataset(req, card)
    idx = _subset(len(ds), req.chips_max, req.seed)
    loader = DataLoader(Subset(ds, idx), batch_size=req.batch_size, shuffle=False,
                        collate_fn=collate_items)
    coords = uses_coords(card.arch)
    res = float(card.input_spec.get("resolution") or ds.meta.get("resolution") or 1.0)
    erf_result = erf.effective_receptive_field(loaded.model, loader, len(names),
                                               req.pixels_per_chip, device, req.seed, coords)
    # recall of hidden pixels: raw labels (before invalid inputs become "ignore")
    cls_all, dist_all, ok_all = [], [], []
    model = loaded.model.to(device).eval()
    rng = np.random.default_rng(req.seed + 1)
    with torch.no_grad():
        for i in idx:
            img, label = ds._read(i)  # raw reflectance and labels (-1 ignore)
            label = _reference_label(ds, i, label)
            img = _occlude(img, req.occlude, rng)
            x = normalize_chip(img, ds.mean, ds.std)[0][None].to(device)
            kw = {}
            if coords:
                c = ds._coords(i)
                kw = {"temporal_coords": c["temporal_coords"][None].to(device),
                      "location_coords": c["location_coords"][None].to(device)}
            pred = model(x, **kw).argmax(dim=1)[0].cpu().numpy()
            c, d, where = recall.chip_distances(label, recall.hidden_mask(img), len(names))
            cls_all.append(c)
            dist_all.append(d)
            ok_all.append(pred.ravel()[where] == c)
    strat = recall.stratify(np.concatenate(cls_all), np.concatenate(dist_all),
                            np.concatenate(ok_all), names, res)
    summary = {"model": str(req.model), "model_name": card.name, "depth": card.depth,
               "params": card.params, "chips": str(req.chips), "split": req.split,
               "chips_used": len(idx), "chip_size": int(card.input_spec.get("chip_size", 0)),
               "resolution_m": res, "class_names": names, "device": device,
               "reference": list(req.reference), "occlude_px": req.occlude,
               "erf": {"chips": erf_result["chips"],
                       "pixels_per_chip": erf_result["pixels_per_chip"],
                       "classes": [{"class": names[c["class"]], "samples": c["samples"],
                                    **{k: c[k] for k in ("d50", "d90", "d99")},
                                    **{f"{k}_m": c[k] * res for k in ("d50", "d90", "d99")}}
                                   for c in erf_result["classes"]]},
               "recall": strat, "seconds": round(time.perf_counter() - t0, 2)}
    req.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(req.out / "diagnose.json", json.dumps(_clean(summary), indent=2) + "\n")
    _write_csvs(req.out, summary)
    _plots(req.out, erf_result, strat, names, res, card.name)
    return summary


def _occlude(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``img`` (T, C, H, W) with a random ``size`` square masked (NaN) at the last
    step: synthetic cloud over known labels (the reference's Cutout)."""
    if size <= 0:
        return img
    out = img.copy()
    h, w = out.shape[-2:]
    s = min(size, h, w)
    r, c = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    out[-1, :, r:r + s, c:c + s] = np.nan
    return out


def _reference_label(ds: Any, i: int, label: np.ndarray) -> np.ndarray:
    """The dense reference label of chip ``i`` when ``--reference`` replaced the labels."""
    from terrastill.data.read import read_asset
    from terrastill.training.reference import ReferenceLabels

    t = ds.transform
    if not isinstance(t, ReferenceLabels):
        return label
    grid = t.grids[ds.ids[i]]
    return read_asset(str(t.refs[grid.epsg]), grid, fill=-1).astype(np.int64)


def _clean(o: Any) -> Any:
    """Strict JSON: NaN / infinity become null, numpy scalars plain numbers."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


def _write_csvs(out: Path, s: dict) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "samples", "d50_px", "d90_px", "d99_px", "d50_m", "d90_m", "d99_m"])
    for c in s["erf"]["classes"]:
        w.writerow([c["class"], c["samples"], c["d50"], c["d90"], c["d99"], c["d50_m"],
                    c["d90_m"], c["d99_m"]])
    write_text_atomic(out / "erf.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "from_px", "to_px", "from_m", "to_m", "pixels", "recall"])
    for c in s["recall"]["classes"]:
        for b in c["bins"]:
            w.writerow([c["class"], b["from_px"], b["to_px"], b["from_m"], b["to_m"],
                        b["pixels"], round(b["recall"], 4)])
    write_text_atomic(out / "recall.csv", buf.getvalue())


def _plots(out: Path, erf_result: dict, strat: dict, names: list[str], res: float,
           title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radii = np.asarray(erf_result["radii_px"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in erf_result["classes"]:
        ax.plot(2 * radii * res, c["cdf"], label=f"{names[c['class']]} (d50 "
                                                 f"{c['d50'] * res:.0f} m)")
    for q in (0.5, 0.9, 0.99):
        ax.axhline(q, color="gray", lw=0.6, ls=":")
    ax.set_xlabel("diameter around the output pixel (m)")
    ax.set_ylabel("share of input-gradient mass")
    ax.set_title(f"Effective receptive field: {title}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "erf.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in strat["classes"]:
        b = [r for r in c["bins"] if np.isfinite(r["from_px"])]
        if b:
            mid = [np.sqrt(r["from_px"] * r["to_px"]) * res for r in b]
            ax.plot(mid, [r["recall"] for r in b], "o-",
                    label=f"{c['class']} (DWR {c['distance_weighted_recall']:.2f})")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("distance to the nearest visible pixel of the class (m)")
    ax.set_ylabel("recall of hidden pixels")
    ax.set_title(f"Recall under masks: {title}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "recall.png", dpi=110)
    plt.close(fig)
