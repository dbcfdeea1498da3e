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
from one confusion matrix). The pretraining windows are read with the chips' temporal options.

``--recipes`` adds pretrained arms that fine-tune differently (an encoder learning-rate scale
and layer decay, e.g. ``1:1,0.1:1``; ``frozen``: the pretrained encoder is frozen, as
``train --freeze-encoder``, and only the head learns); ``--pretrain-world`` pretrains on
another world's imagery, ``--pretrained`` reuses an encoder and ``--tag`` names its arms, so
several encoders share one scratch arm; each teacher's score is cached (``score.json``), so a
re-run only trains and scores what is new.

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
FROZEN = 0.0  # a recipe's encoder lr scale meaning "frozen encoder" (train --freeze-encoder)


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
    """``terrastill pretrain`` on ``world``'s unlabelled imagery, read with the chips' temporal
    options (resumes if present)."""
    model = out / "model.pt"
    if model.exists():
        return model
    bbox = [str(v) for v in world["bbox"]]
    t = temporal(args.smoke)
    cmd = [sys.executable, "-m", "terrastill.cli", "pretrain", "--catalog", world["catalog"],
           "--bbox", *bbox, "--start", world["start"], "--end", world["end"],
           "--model", "tiny", "--num-steps", "3", "--chip-size", str(args.chip_size),
           "--temporal-step", str(t.temporal_step),
           "--temporal-tolerance", str(t.temporal_tolerance), "--max-cloud", str(t.max_cloud),
           "--samples", str(args.pretrain_samples), "--epochs", str(args.pretrain_epochs),
           "--seed", "0", "--out", str(out)]
    console.print("[bold]pretraining[/] " + " ".join(cmd[3:]))
    subprocess.run(cmd, check=True)
    return model


def temporal(quick: bool) -> Any:
    """The demo's temporal options for the flood chips (and for pretraining windows)."""
    from terrastill.data.temporal import TemporalOptions

    return TemporalOptions(num_steps=3, temporal_step=8 if quick else 14,
                           temporal_tolerance=4 if quick else 7, max_cloud=60)


def prediction_date(world: dict[str, Any], quick: bool) -> dt.date:
    """The demo's rule: the clearest acquisition date within 30 days after the flood."""
    from terrastill.demo import clearest_date

    flood = dt.date.fromisoformat(world["tasks"]["flood"]["date"])
    last = min(flood + dt.timedelta(days=30), dt.date.fromisoformat(world["end"]))
    return clearest_date(world["catalog"], flood, last, temporal(quick))


def parse_recipes(text: str) -> dict[str, tuple[float, float]]:
    """``ELS:LD,…`` -> {arm name: (encoder lr scale, layer decay)}; ``1:1`` is ``pretrained``;
    ``frozen`` is ``pretrained-frozen``, held as scale 0 (the encoder does not learn at all:
    ``train --freeze-encoder``); ``none``: the scratch arm only (no pretraining)."""
    recipes: dict[str, tuple[float, float]] = {}
    if text.strip() == "none":
        return recipes
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "frozen":
            recipes["pretrained-frozen"] = (FROZEN, 1.0)
            continue
        try:
            els, ld = (float(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"--recipes {part!r}: expected ENCODER_LR_SCALE:LAYER_DECAY, "
                             "e.g. 1:1 or 0.1:0.75") from None
        if not (0 < els <= 1 and 0 < ld <= 1):
            raise ValueError(f"--recipes {part!r}: both values must be in (0, 1] "
                             "('frozen' for a frozen encoder)")
        name = "pretrained" if (els, ld) == (1.0, 1.0) else f"pretrained-e{els:g}-d{ld:g}"
        recipes[name] = (els, ld)
    if not recipes:
        raise ValueError("--recipes: give at least one recipe")
    return recipes


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
    if args.pretrained or not args.recipes:
        mae = args.pretrained
    else:
        source = load_manifest(args.pretrain_world) if args.pretrain_world else world
        mae = pretrain(source, out / "pretrain", args)
    date = prediction_date(world, args.smoke)
    console.print(f"predicting on {date}, the clearest date after the flood")
    arms: dict[str, tuple[str | None, float, float]] = {"scratch": (None, 1.0, 1.0)}
    tag = f"{args.tag}-" if args.tag else ""
    arms.update({tag + name: (str(mae), els, ld) for name, (els, ld) in args.recipes.items()})
    rows: list[dict[str, Any]] = []
    for seed in range(args.seed, args.seed + args.seeds):
        for size in args.sizes.split(","):
            n = None if size == "all" else int(size)
            data = out / f"subset-{size}-s{seed}"
            picked = subset(chips, data, n, seed)
            for arm, (weights, els, ld) in arms.items():
                model_dir = out / f"teacher-{size}-{arm}-s{seed}"
                model = model_dir / "model.pt"
                done = model_dir / "score.json"
                if weights is None and args.no_scratch and not done.exists():
                    continue  # another run of this --out trains the scratch arm
                t0 = time.perf_counter()
                frozen = weights is not None and els == FROZEN
                if not model.exists():
                    fit(data, model_dir, TrainOptions(model="tiny", epochs=args.epochs,
                                                      seed=seed, weights=weights,
                                                      encoder_lr_scale=1.0 if frozen else els,
                                                      layer_decay=ld, freeze_encoder=frozen,
                                                      progress=False,
                                                      name=f"flood-{arm}-{size}"))
                if done.exists():  # a re-run with more recipes scores each teacher once
                    s = json.loads(done.read_text())
                else:
                    s = score(model, world, model_dir / "prediction", date)
                    s = {"miou": s["miou"], "accuracy": s["accuracy"],
                         "water_iou": s["iou"].get("water"), "pixels": s["pixels"]}
                    done.write_text(json.dumps(s))
                val = json.loads((model_dir / "metrics.json").read_text()).get("val", {})
                rows.append({"size": size, "arm": arm, "seed": seed, **picked,
                             "weights": weights, "encoder_lr_scale": els, "layer_decay": ld,
                             "freeze_encoder": frozen,
                             "miou": round(s["miou"], 4), "accuracy": round(s["accuracy"], 4),
                             "water_iou": s["water_iou"], "pixels": s["pixels"],
                             "val_miou": val.get("miou"),
                             "seconds": round(time.perf_counter() - t0, 1)})
                console.print(rows[-1])
    return rows


def paired_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided Student-t interval (NaN below 2 pairs)."""
    from scipy import stats

    d = np.asarray(d, dtype=float)
    mean = float(d.mean()) if len(d) else float("nan")
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return mean, mean - half, mean + half


def _ci(lo: float, hi: float) -> str:
    return "–" if np.isnan(lo) else f"[{lo:+.3f}, {hi:+.3f}]"


def report(rows: list[dict[str, Any]], out: Path, small: int = 50) -> str:
    """Per size and arm: mean ± standard deviation over seeds, the paired difference with its
    95 % t-interval over seeds, and one pooled row over every (size ≤ ``small``, seed) pair —
    the issue's target."""
    frame = pd.DataFrame(rows)
    lines = []
    for arm in dict.fromkeys(r["arm"] for r in rows if r["arm"] != "scratch"):
        first = next(r for r in rows if r["arm"] == arm)
        lines += [f"{arm}: from {first['weights']}, {arm_recipe(first)}", "",
                  "| training observations (chips), mean over seeds | scratch mIoU | pretrained "
                  "mIoU | Δ (paired) | 95 % interval of Δ | seeds ahead | seeds |",
                  "|---|---:|---:|---:|---|---:|---:|"]
        pooled: list[float] = []
        for size in dict.fromkeys(r["size"] for r in rows):
            sub = frame[frame["size"] == size]
            s = sub[sub["arm"] == "scratch"].set_index("seed")
            p = sub[sub["arm"] == arm].set_index("seed")
            both = s.index.intersection(p.index)
            if not len(both):
                continue
            s, p = s.loc[both], p.loc[both]
            d = (p["miou"] - s["miou"]).to_numpy()
            if size != "all" and int(size) <= small:
                pooled += list(d)
            mean, lo, hi = paired_interval(d)
            lines.append(f"| {size}: {s['observations'].mean():.0f} ({s['chips'].mean():.0f}) "
                         f"| {s['miou'].mean():.3f} ± {s['miou'].std(ddof=0):.3f} | "
                         f"{p['miou'].mean():.3f} ± {p['miou'].std(ddof=0):.3f} | "
                         f"{mean:+.3f} | {_ci(lo, hi)} | {int((d > 0).sum())} | {len(both)} |")
        if pooled:
            mean, lo, hi = paired_interval(np.array(pooled))
            ahead = int((np.array(pooled) > 0).sum())
            lines.append(f"| pooled, ≤ {small} observations | | | {mean:+.3f} | {_ci(lo, hi)} "
                         f"| {ahead} | {len(pooled)} pairs |")
        lines.append("")
    md = "\n".join(lines)
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


def arm_recipe(row: dict[str, Any]) -> str:
    """How an arm fine-tunes, in words."""
    els, ld = row["encoder_lr_scale"], row["layer_decay"]
    if row.get("freeze_encoder"):
        return "encoder frozen (train --freeze-encoder): only the head learns, at the same lr"
    if (els, ld) == (1.0, 1.0):
        return "every parameter at the same learning rate"
    return f"encoder learning rate × {els:g}, layer decay {ld:g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, help="demo world folder (built if missing)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--chip-size", type=int, default=32)
    ap.add_argument("--pretrain-samples", type=int, default=512)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--pretrain-world", type=Path,
                    help="pretrain on this world's imagery instead of the scored world's")
    ap.add_argument("--pretrained", help="an existing pretrain model.pt (skips pretraining)")
    ap.add_argument("--recipes", default="1:1",
                    help="fine-tuning recipes from the pretrained encoder, ENCODER_LR_SCALE:"
                         "LAYER_DECAY or frozen, comma-separated (1:1: as from scratch; frozen: "
                         "only the head learns; none: only the scratch arm)")
    ap.add_argument("--no-scratch", action="store_true",
                    help="train only the pretrained arms (scratch teachers that another run of "
                         "this --out finished are still reported)")
    ap.add_argument("--tag", default="", help="prefix of the pretrained arms' names (several "
                                              "pretrained encoders against one scratch arm)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="repeats (subset draw and training)")
    ap.add_argument("--smoke", action="store_true", help="a tiny world and sizes, seconds")
    args = ap.parse_args(argv)
    try:
        args.recipes = parse_recipes(args.recipes)
    except ValueError as exc:
        ap.error(str(exc))
    if args.pretrain_world and not (args.pretrain_world / "world.json").exists():
        ap.error(f"--pretrain-world {args.pretrain_world}: no world.json there")
    if args.pretrained and not Path(args.pretrained).is_file():
        ap.error(f"--pretrained {args.pretrained}: no such file")
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
