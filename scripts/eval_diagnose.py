#!/usr/bin/env python
"""Teacher vs distilled student vs ``small`` on the demo flood task: effective receptive field
and recall of flood pixels hidden under (synthetic) cloud (issue 19's evidence).

Steps (each skipped when its output exists, so a rerun resumes):

1. a one-zone HLS world (the demo world's generator, 3 × 2 tiles of 160 px, 1,000 flood
   observations: enough chips dated after the flood for ≥ 200 diagnosed chips) and flood chips
   around its field observations (T = 3);
2. a ``tiny`` teacher (6 blocks, patch 4), a 2-block student distilled from it, and ``small``
   (8 blocks, patch 8) trained directly on the labels;
3. ``terrastill diagnose`` on each against the world's dense flood truth (``--reference``;
   recall of masked and of ambiguous pixels),
   with a square of each chip masked at the target date (``--occlude``: field observations
   are drawn where the sky was clear, so real clouds hide no labels);
4. a table (CSV + Markdown) and the three models' curves in one plot.

    python scripts/eval_diagnose.py --out /work/evidence/issue19      # ~30 min, 2 shared cores
    python scripts/eval_diagnose.py --smoke --out /tmp/diag-smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path


def build(work: Path, smoke: bool, observations: int = 1000) -> tuple[dict, Path]:
    from terrastill.data.build import ChipJob, make_chips
    from terrastill.data.chips import ReadOptions
    from terrastill.data.observations import ObservationOptions
    from terrastill.data.temporal import TemporalOptions
    from terrastill.world.build import build_world, load_manifest
    from terrastill.world.config import WorldConfig

    wdir = work / "world"
    if not (wdir / "world.json").exists():
        build_world(wdir, WorldConfig(seed=3, zones=1, center_lon=11.5,
                                      tiles_x=2 if smoke else 3,
                                      tiles_y=1 if smoke else 2,
                                      tile_size=64 if smoke else 160, start="2024-05-01",
                                      end="2024-07-15", revisit=3, flood_date="2024-06-20",
                                      observations=80 if smoke else observations))
    world = load_manifest(wdir)
    chips = work / "chips"
    if not (chips / "dataset.json").exists():
        t = TemporalOptions(num_steps=3, temporal_step=9, temporal_tolerance=4, max_cloud=60)
        job = ChipJob(read=ReadOptions(source=world["source"], temporal=t),
                      chip_size=16 if smoke else 32, min_valid=0.3, label_window=3,
                      split_block=600)
        make_chips(world["tasks"]["flood"]["observations"], chips, world["catalog"], job,
                   ObservationOptions(classes=world["tasks"]["flood"]["classes"]))
    return world, chips


def models(work: Path, chips: Path, smoke: bool, epochs: int = 12) -> dict[str, Path]:
    from terrastill.training.distill import DistillOptions, distill
    from terrastill.training.train import TrainOptions, fit

    ep = 2 if smoke else epochs
    out = {"teacher (tiny, 6 blocks)": work / "teacher" / "model.pt",
           "student (2 blocks of the teacher)": work / "student" / "model.pt",
           "small (8 blocks, patch 8)": work / "small" / "model.pt"}
    paths = list(out.values())
    # an interrupted run resumes from its last epoch checkpoint (a missing one: from scratch)
    if not paths[0].exists():
        fit(chips, paths[0].parent, TrainOptions(model="tiny", epochs=ep, seed=0,
                                                 progress=False, resume=True))
    if not paths[1].exists():
        distill(paths[0], chips, paths[1].parent,
                DistillOptions(layers=2, epochs=max(1, ep * 2 // 3), seed=0, progress=False))
    if not paths[2].exists():
        fit(chips, paths[2].parent, TrainOptions(model="small", epochs=ep, seed=0,
                                                 progress=False, resume=True))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=None, help="World, chips and models folder.")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chips-max", type=int, default=400,
                   help="Chips to diagnose (those the dense truth holds for, up to this).")
    p.add_argument("--observations", type=int, default=1000,
                   help="Flood observations in the world (more give more chips).")
    p.add_argument("--epochs", type=int, default=12,
                   help="Teacher and small epochs (the student gets two thirds).")
    p.add_argument("--ambiguous-threshold", type=float, default=0.5)
    p.add_argument("--pixels-per-chip", type=int, default=4)
    p.add_argument("--occlude", type=int, default=0, help="Square side (px) [chip size / 2].")
    args = p.parse_args(argv)

    from terrastill.diagnostics.run import DiagnoseRequest, diagnose
    from terrastill.models.modelfile import read_card

    work = args.work or args.out / ("diagnose-work-smoke" if args.smoke else "diagnose-work")
    t0 = time.perf_counter()
    world, chips = build(work, args.smoke, args.observations)
    files = models(work, chips, args.smoke, args.epochs)
    t_models = time.perf_counter() - t0
    chip = json.loads((chips / "dataset.json").read_text())["chip_size"]
    occlude = args.occlude or chip // 2
    rows = []
    curves = {}
    for name, path in files.items():
        tag = path.parent.name
        s = diagnose(DiagnoseRequest(model=path, chips=chips, out=args.out / f"diagnose-{tag}",
                                     chips_max=args.chips_max,
                                     pixels_per_chip=2 if args.smoke else args.pixels_per_chip,
                                     device=args.device, reference=(world["root"],),
                                     occlude=occlude,
                                     ambiguous_threshold=args.ambiguous_threshold))
        card = read_card(path)
        erf = {c["class"]: c for c in s["erf"]["classes"]}
        rec = {c["class"]: c for c in s["recall"]["classes"]}
        w = rec["water"]
        amb = {c["class"]: c for c in s["recall_ambiguous"]["classes"]}
        rows.append({
            "model": name, "blocks": card.depth, "params": card.params,
            "test_miou": round(float(card.metrics.get("test", {}).get("miou", float("nan"))), 4)
            if isinstance(card.metrics.get("test"), dict) else None,
            "chips": s["chips_used"],
            "erf_d50_water_m": erf["water"]["d50_m"], "erf_d90_water_m": erf["water"]["d90_m"],
            "erf_d99_water_m": erf["water"]["d99_m"], "erf_d50_land_m": erf["land"]["d50_m"],
            "erf_d90_land_m": erf["land"]["d90_m"],
            "hidden_water_px": w["hidden_pixels"], "hidden_water_recall": round(w["recall"], 4),
            "hidden_water_dwr": round(w["distance_weighted_recall"], 4),
            "hidden_land_recall": round(rec["land"]["recall"], 4),
            "ambiguous_water_px": amb["water"]["hidden_pixels"],
            "ambiguous_water_recall": _r(amb["water"]["recall"]),
            "ambiguous_water_dwr": _r(amb["water"]["distance_weighted_recall"]),
            "ambiguous_land_px": amb["land"]["hidden_pixels"],
            "ambiguous_land_recall": _r(amb["land"]["recall"]),
            "pixel_classifier_accuracy": _r(s["ambiguity"]["pixel_classifier_accuracy"]),
            "seconds": s["seconds"]})
        curves[name] = s
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "diagnose_table.csv").open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    _plot(args.out, curves)
    summary = {"machine": "2-core AMD EPYC (Zen 4), shared with other jobs",
               "device": args.device, "chip_size": chip, "occlude_px": occlude,
               "resolution_m": curves[next(iter(curves))]["resolution_m"],
               "models_seconds": round(t_models, 1), "epochs": {
                   "teacher": 2 if args.smoke else args.epochs,
                   "student": max(1, (2 if args.smoke else args.epochs) * 2 // 3),
                   "small": 2 if args.smoke else args.epochs},
               "ambiguity": curves[next(iter(curves))]["ambiguity"],
               "load_average_1m_at_end": round(os.getloadavg()[0], 2), "rows": rows}
    (args.out / "diagnose_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _r(v: float | None) -> float | None:
    """Rounded, or None for NaN (no such pixels)."""
    return None if v is None or v != v else round(v, 4)


def _plot(out: Path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    for name, s in curves.items():
        res = s["resolution_m"]
        w = next(c for c in s["recall"]["classes"] if c["class"] == "water")
        b = [r for r in w["bins"] if r["from_px"] is not None and np.isfinite(r["from_px"])]
        if b:
            axes[1].plot([np.sqrt(r["from_px"] * r["to_px"]) * res for r in b],
                         [r["recall"] for r in b], "o-", label=name)
        a = next(c for c in s["recall_ambiguous"]["classes"] if c["class"] == "water")
        b = [r for r in a["bins"] if r["from_px"] is not None and np.isfinite(r["from_px"])]
        if b:
            axes[2].plot([np.sqrt(r["from_px"] * r["to_px"]) * res for r in b],
                         [r["recall"] for r in b], "o-", label=name)
        d = next(c for c in s["erf"]["classes"] if c["class"] == "water")
        axes[0].bar(name.split(" ")[0], d["d50_m"], color="C0", alpha=0.9)
        axes[0].bar(name.split(" ")[0], d["d90_m"] - d["d50_m"], bottom=d["d50_m"], color="C1",
                    alpha=0.6)
    axes[0].set_ylabel("ERF diameter, water logit (m)")
    axes[0].set_title("d50 (dark) and d90 (light)")
    axes[1].set_xscale("log")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_xlabel("distance to the nearest visible water pixel (m)")
    axes[1].set_ylabel("recall of hidden water pixels")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    axes[2].set_xscale("log")
    axes[2].set_ylim(0, 1.02)
    axes[2].set_xlabel("distance to the nearest visible unambiguous water pixel (m)")
    axes[2].set_ylabel("recall of ambiguous water pixels")
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "diagnose_models.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
