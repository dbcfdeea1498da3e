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
    ambiguous_threshold: float = 0.5  # a visible pixel is ambiguous below this probability


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
    if not 0.0 < req.ambiguous_threshold <= 1.0:
        raise BadInputError(f"--ambiguous-threshold {req.ambiguous_threshold}: expected a "
                            "probability in (0, 1]")
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
    # recall of hidden and ambiguous pixels: raw labels (before invalid inputs become "ignore")
    chips = []
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
            chips.append((img[-1], label, recall.hidden_mask(img), pred))
    strat, strat_amb, amb_info = _recalls(chips, names, res, req.ambiguous_threshold, req.seed)
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
               "recall": strat, "ambiguity": amb_info, "recall_ambiguous": strat_amb,
               "seconds": round(time.perf_counter() - t0, 2)}
    req.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(req.out / "diagnose.json", json.dumps(_clean(summary), indent=2) + "\n")
    _write_csvs(req.out, summary)
    _plots(req.out, erf_result, strat, strat_amb, names, res, card.name)
    return summary


def _recalls(chips: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
             names: list[str], res: float, threshold: float, seed: int,
             ) -> tuple[dict, dict, dict]:
    """Distance-stratified recall of masked pixels and of ambiguous pixels, from each chip's
    (target-step bands (C, H, W), labels, hidden mask, prediction).

    Masked: labelled pixels hidden at the target step, by distance to the nearest visible pixel
    of their class. Ambiguous: visible labelled pixels whose own spectrum gives their class a
    cross-fitted probability below ``threshold`` (:mod:`ambiguity`), by distance to the nearest
    visible, unambiguous pixel of their class."""
    from terrastill.diagnostics import ambiguity, recall

    k = len(names)
    feats, labs, groups = [], [], []
    for g, (bands, label, hidden, _pred) in enumerate(chips):
        vis = (label >= 0) & (label < k) & ~hidden & np.isfinite(bands).all(axis=0)
        feats.append(bands[:, vis].T)
        labs.append(label[vis])
        groups.append(np.full(int(vis.sum()), g))
    feat = np.concatenate(feats).astype(np.float64) if feats else np.empty((0, 0))
    lab = np.concatenate(labs).astype(int) if labs else np.empty(0, int)
    grp = np.concatenate(groups) if groups else np.empty(0, int)
    amb = ambiguity.cross_fitted_probability(feat, lab, grp, k, threshold, seed)
    masked_parts: list[list[np.ndarray]] = [[], [], []]
    amb_parts: list[list[np.ndarray]] = [[], [], []]
    start = 0
    for (bands, label, hidden, pred), lb in zip(chips, labs, strict=True):
        vis = (label >= 0) & (label < k) & ~hidden & np.isfinite(bands).all(axis=0)
        flags = np.zeros(label.shape, dtype=bool)
        flags[vis] = amb.ambiguous[start:start + len(lb)]
        start += len(lb)
        for parts, target, source in ((masked_parts, hidden, None),
                                      (amb_parts, flags, vis & ~flags)):
            c, d, where = recall.chip_distances(label, target, k, source)
            parts[0].append(c)
            parts[1].append(d)
            parts[2].append(pred.ravel()[where] == c)
    strat = recall.stratify(*(np.concatenate(p) for p in masked_parts), names, res)
    strat_amb = recall.stratify(*(np.concatenate(p) for p in amb_parts), names, res)
    info = {"definition": "visible labelled pixel whose per-pixel logistic regression on its "
                          "target-step bands, cross-fitted by chip, gives its class a "
                          "probability below the threshold",
            "threshold": threshold, "folds": amb.folds, "grouping": amb.grouping,
            "scored_pixels": int(len(lab)), "pixel_classifier_accuracy": amb.accuracy,
            # how close the visible pixels come to ambiguity, whatever the threshold
            "own_class_probability_quantiles": (
                {str(q): float(np.nanquantile(amb.prob, q)) for q in (0.001, 0.01, 0.05, 0.5)}
                if np.isfinite(amb.prob).any() else {}),
            "ambiguous_pixels": {n: int((amb.ambiguous & (lab == c)).sum())
                                 for c, n in enumerate(names)},
            "labelled_visible_pixels": {n: int((lab == c).sum()) for c, n in enumerate(names)}}
    return strat, strat_amb, info


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
    from terrastill.training.reference import ReferenceLabels

    t = ds.transform
    return t.reference(ds.ids[i]) if isinstance(t, ReferenceLabels) else label


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
    w.writerow(["kind", "class", "from_px", "to_px", "from_m", "to_m", "pixels", "recall"])
    for kind, key in (("masked", "recall"), ("ambiguous", "recall_ambiguous")):
        for c in s[key]["classes"]:
            for b in c["bins"]:
                w.writerow([kind, c["class"], b["from_px"], b["to_px"], b["from_m"], b["to_m"],
                            b["pixels"], round(b["recall"], 4)])
    write_text_atomic(out / "recall.csv", buf.getvalue())


def _plots(out: Path, erf_result: dict, strat: dict, strat_amb: dict, names: list[str],
           res: float, title: str) -> None:
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
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, st, what, src in ((axes[0], strat, "masked (cloud)", "visible"),
                              (axes[1], strat_amb, "ambiguous", "visible, unambiguous")):
        for c in st["classes"]:
            b = [r for r in c["bins"] if np.isfinite(r["from_px"])]
            if b:
                mid = [np.sqrt(r["from_px"] * r["to_px"]) * res for r in b]
                ax.plot(mid, [r["recall"] for r in b], "o-",
                        label=f"{c['class']} (DWR {c['distance_weighted_recall']:.2f}, "
                              f"{c['hidden_pixels']} px)")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"distance to the nearest {src} pixel of the class (m)")
        ax.set_ylabel(f"recall of {what} pixels")
        ax.set_title(f"{what.capitalize()} pixels: {title}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "recall.png", dpi=110)
    plt.close(fig)
