#!/usr/bin/env python
"""Data efficiency of pretraining: teachers fine-tuned from a pretrained encoder vs from
scratch, with 10, 20, 50, 100 and all training observations, scored against the demo world's
dense truth.

The flood task's chips are made once from every observation of the world (spatial-block
split, as the demo does). For each size N, training chips are drawn from the train split in
one seeded order (nested: the chips of N = 10 are among those of N = 20) until their
observations reach N; the validation split stays whole for both arms, so only the training
labels differ. Both arms use the same chips, seed, epochs and options; one starts from the
encoder that ``terrastill pretrain`` learnt on the world's unlabelled imagery (no labels),
the other from a random initialisation. Each teacher then predicts the flood over the whole
world, and its classes are scored against the truth rasters (mIoU over both UTM zones,
from one confusion matrix).

    python scripts/data_efficiency.py --world demo-out/world --out efficiency/
    python scripts/data_efficiency.py --smoke --out /tmp/eff   # seconds, tiny world
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
SIZES = ("10", "20", "50", "100", "all")


def make_flood_chips(world: dict[str, Any], out: Path, chip_size: int, quick: bool) -> Path:
    """The flood task's chips, as the demo makes them (made once, reused)."""
    from terrastill.data.build import ChipJob, make_chips
    from terrastill.data.chips import ReadOptions
    from terrastill.data.observations import ObservationOptions
    from terrastill.data.temporal import TemporalOptions

    if (out / "dataset.json").exists():
        return out
    task = world["tasks"]["flood"]
    t = TemporalOptions(num_steps=3, temporal_step=8 if quick else 14,
                        temporal_tolerance=4 if quick else 7, max_cloud=60)
    job = ChipJob(read=ReadOptions(source=world["source"], temporal=t), chip_size=chip_size,
                  min_valid=0.3, label_window=3, split_block=600 if quick else 3000, seed=0)
    make_chips(task["observations"], out, world["catalog"], job,
               ObservationOptions(classes=task["classes"]), command="data_efficiency")
    return out


def subset(chips: Path, out: Path, n: int | None, seed: int) -> dict[str, int]:
    """A chip folder with the train chips holding the first ``n`` observations of a seeded
    order (all when ``n`` is None) and the whole validation split; chips are linked."""
    import pandas as pd

    index = pd.read_parquet(chips / "index.parquet")
    train = index[index["split"] == "train"]
    order = np.random.default_rng(seed).permutation(len(train))
    obs = train["num_observations"].to_numpy()[order]
    keep = len(order) if n is None else int(np.searchsorted(np.cumsum(obs), n) + 1)
    chosen = train.iloc[order[:keep]]
    rows = pd.concat([chosen, index[index["split"] == "val"]])
    out.mkdir(parents=True, exist_ok=True)
    for name in ("chips", "labels"):
        link = out / name
        if not link.exists():
            link.symlink_to((chips / name).resolve(), target_is_directory=True)
    meta = json.loads((chips / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps(meta))
    rows.to_parquet(out / "index.parquet")
    return {"chips": int(len(chosen)), "observations": int(chosen["num_observations"].sum())}


def pretrain(world: dict[str, Any], out: Path, args: argparse.Namespace) -> Path:
    """``terrastill pretrain`` on the world's unlabelled imagery (resumes if present)."""
    model = out / "model.pt"
    if model.exists():
        return model
    bbox = [str(v) for v in world["bbox"]]
    cmd = [sys.executable, "-m", "terrastill.cli", "pretrain", "--catalog", world["catalog"],
           "--bbox", *bbox, "--start", world["start"], "--end", world["end"],
           "--model", "tiny", "--num-steps", "3", "--chip-size", str(args.chip_size),
           "--samples", str(args.pretrain_samples), "--epochs", str(args.pretrain_epochs),
           "--seed", "0", "--out", str(out)]
    console.print("[bold]pretraining[/] " + " ".join(cmd[3:]))
    subprocess.run(cmd, check=True)
    return model


def prediction_date(world: dict[str, Any], quick: bool) -> dt.date:
    """The demo's rule: the clearest acquisition date within 30 days after the flood."""
    from terrastill.data.temporal import TemporalOptions
    from terrastill.demo import clearest_date

    flood = dt.date.fromisoformat(world["tasks"]["flood"]["date"])
    last = min(flood + dt.timedelta(days=30), dt.date.fromisoformat(world["end"]))
    t = TemporalOptions(num_steps=3, temporal_step=8 if quick else 14,
                        temporal_tolerance=4 if quick else 7, max_cloud=60)
    return clearest_date(world["catalog"], flood, last, t)


def score(model: Path, world: dict[str, Any], out: Path, date: dt.date) -> dict[str, Any]:
    """Predict the flood over the whole world and score it against the truth rasters."""
    from terrastill.inference.aoi import bbox_aoi
    from terrastill.inference.predict import PredictRequest, predict
    from terrastill.inference.truth import confusion, scores

    task = world["tasks"]["flood"]
    res = predict(PredictRequest(model=model, aois=[bbox_aoi(world["bbox"])], date=date,
                                 out_dir=out, catalog=world["catalog"], name="flood",
                                 precision="fp32"))
    import rasterio

    from terrastill.data.grid import GridSpec
    from terrastill.data.read import read_asset

    names = task["classes"]
    total = np.zeros((len(names), len(names)), np.int64)
    for cog in res.classes:
        epsg = cog.name.split("_")[-2]
        with rasterio.open(cog) as src:
            pred = src.read(1)
            grid = GridSpec(src.crs.to_epsg(), src.transform, src.width, src.height)
        ref = read_asset(str(task["truth"][epsg]), grid, fill=-1).astype(np.int64)
        pred = np.where(pred == 255, len(names), pred)
        total += confusion(pred, ref, len(names))
    return scores(total, names)


def run(world_dir: Path, out: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from terrastill.training.train import TrainOptions, fit
    from terrastill.world.build import load_manifest

    world = load_manifest(world_dir)
    chips = make_flood_chips(world, out / "chips", args.chip_size, args.smoke)
    mae = pretrain(world, out / "pretrain", args)
    date = prediction_date(world, args.smoke)
    console.print(f"predicting on {date}, the clearest date after the flood")
    rows: list[dict[str, Any]] = []
    for seed in range(args.seed, args.seed + args.seeds):
        for size in args.sizes.split(","):
            n = None if size == "all" else int(size)
            data = out / f"subset-{size}-s{seed}"
            picked = subset(chips, data, n, seed)
            for arm, weights in (("scratch", None), ("pretrained", str(mae))):
                model_dir = out / f"teacher-{size}-{arm}-s{seed}"
                model = model_dir / "model.pt"
                t0 = time.perf_counter()
                if not model.exists():
                    fit(data, model_dir, TrainOptions(model="tiny", epochs=args.epochs,
                                                      seed=seed, weights=weights,
                                                      progress=False,
                                                      name=f"flood-{arm}-{size}"))
                s = score(model, world, model_dir / "prediction", date)
                rows.append({"size": size, "arm": arm, "seed": seed, **picked,
                             "miou": round(s["miou"], 4), "accuracy": round(s["accuracy"], 4),
                             "water_iou": s["iou"].get("water"), "pixels": s["pixels"],
                             "seconds": round(time.perf_counter() - t0, 1)})
                console.print(rows[-1])
    return rows


def report(rows: list[dict[str, Any]], out: Path) -> str:
    """Mean ± standard deviation over seeds per size and arm, and the paired difference."""
    frame = pd.DataFrame(rows)
    lines = ["| training observations (chips), mean over seeds | scratch mIoU | pretrained "
             "mIoU | Δ (paired) | seeds |", "|---|---:|---:|---:|---:|"]
    for size in dict.fromkeys(r["size"] for r in rows):
        sub = frame[frame["size"] == size]
        s = sub[sub["arm"] == "scratch"].set_index("seed")
        p = sub[sub["arm"] == "pretrained"].set_index("seed")
        both = s.index.intersection(p.index)
        if not len(both):
            continue
        d = p.loc[both, "miou"] - s.loc[both, "miou"]
        lines.append(f"| {size}: {s['observations'].mean():.0f} ({s['chips'].mean():.0f}) | "
                     f"{s['miou'].mean():.3f} ± {s['miou'].std(ddof=0):.3f} | "
                     f"{p['miou'].mean():.3f} ± {p['miou'].std(ddof=0):.3f} | "
                     f"{d.mean():+.3f} ± {d.std(ddof=0):.3f} | {len(both)} |")
    md = "\n".join(lines) + "\n"
    (out / "data_efficiency.md").write_text(md)
    (out / "data_efficiency.json").write_text(json.dumps(rows, indent=2))
    table = Table(title="data efficiency (dense-truth mIoU)")
    cols = ("size", "arm", "seed", "observations", "chips", "miou", "water_iou", "seconds")
    for col in cols:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c]) for c in cols))
    console.print(table)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, help="demo world folder (built if missing)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--chip-size", type=int, default=32)
    ap.add_argument("--pretrain-samples", type=int, default=512)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="repeats (subset draw and training)")
    ap.add_argument("--smoke", action="store_true", help="a tiny world and sizes, seconds")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    world = args.world or args.out / "world"
    if args.smoke:
        args.sizes, args.epochs, args.chip_size, args.seeds = "5", 1, 16, 1
        args.pretrain_samples, args.pretrain_epochs = 8, 1
    if not (world / "world.json").exists():
        from terrastill.world.build import build_world
        from terrastill.world.config import WorldConfig

        cfg = dict(seed=0)
        if args.smoke:
            cfg.update(tiles_x=1, tiles_y=1, tile_size=96, start="2024-06-01",
                       end="2024-08-31", revisit=4, flood_date="2024-07-20", observations=60)
        build_world(world, WorldConfig(**cfg))
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    rows = run(world, args.out, args)
    print(report(rows, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
