#!/usr/bin/env python
"""Embedding products and their compression, measured for three encoders on one labelled set.

For a folder of labelled images (the EuroSAT layout, e.g. ../shared/data/real/eurosat) or a
chip dataset (e.g. the demo world's landcover chips), this script makes an embedding table
with each of

- ``spectral``: per-band statistics, no model (the floor every encoder must beat);
- ``random``: a seeded, randomly initialised ``tiny`` encoder (what pretraining starts from);
- ``pretrained``: the same encoder after ``terrastill pretrain`` (masked autoencoder) on the
  same images or on the chips' catalogue, without labels;

runs ``terrastill embed-bench`` on each (every compression method against float32: kNN and
linear probe with intervals, McNemar, recall@10) and writes one summary table with the
issue's targets checked: int8 inside float32's interval on both evaluators, Hamming kNN ≥
decoded-binary kNN, rot-int4 recall@10 ≥ int4's, and the pretrained encoder above the other
two. Everything goes through the command line, as a user would run it.

    python scripts/bench_embeddings.py --images ../shared/data/real/eurosat \\
        --image-bands eurosat --scale 0.0001 --out bench-emb/eurosat
    python scripts/bench_embeddings.py --chips demo-out/chips/landcover \\
        --catalog demo-out/world/catalog.json --out bench-emb/landcover
    python scripts/bench_embeddings.py --smoke --out /tmp/bench-emb   # seconds, synthetic
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

ENCODERS = ("spectral", "random", "pretrained")


def terrastill(*args: str) -> None:
    """Run one terrastill command; stop the script with its error if it fails."""
    cmd = [sys.executable, "-m", "terrastill.cli", *args]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): terrastill {' '.join(args)}\n{res.stderr[-3000:]}")
    print(f"  {time.perf_counter() - t0:6.1f} s  terrastill {' '.join(args)}", file=sys.stderr)


def source_args(args: argparse.Namespace) -> list[str]:
    if args.images:
        return ["--images", str(args.images), *(["--image-bands", args.image_bands]
                                                if args.image_bands else []),
                "--scale", str(args.scale)]
    return ["--chips", str(args.chips)]


def pretrain_args(args: argparse.Namespace, out: Path) -> list[str]:
    common = ["--model", "tiny", "--epochs", str(args.epochs), "--seed", str(args.seed),
              "--out", str(out)]
    if args.images:
        return ["pretrain", *source_args(args), *common]
    meta = json.loads((Path(args.chips) / "dataset.json").read_text())
    import geopandas as gpd

    index = gpd.read_parquet(Path(args.chips) / "index.parquet")
    bounds = index.total_bounds
    dates = sorted(index["date"])
    return ["pretrain", "--catalog", args.catalog or meta["catalog"], "--bbox",
            *(f"{v:.6f}" for v in bounds), "--start", args.start or dates[0], "--end",
            args.end or dates[-1], "--source", meta["source"], "--num-steps",
            str(meta["num_steps"]), "--temporal-step", str(meta["temporal_step"]),
            "--temporal-tolerance", str(meta["temporal_tolerance"]), "--max-cloud",
            str(meta["max_cloud"]), "--chip-size", str(meta["chip_size"]), "--samples",
            str(args.samples), "--bands", ",".join(meta["bands"]), *common]


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, Path] = {}
    for enc in args.encoders:
        table = out / enc / "embeddings.parquet"
        if not table.exists():
            if enc == "spectral":
                terrastill("embed", "--encoder", "spectral", *source_args(args), "--out",
                           str(out / enc))
            elif enc == "random":
                terrastill("embed", "--encoder", "random:tiny", "--seed", str(args.seed),
                           *source_args(args), "--out", str(out / enc))
            else:
                mae = out / "mae"
                if not (mae / "model.pt").exists():
                    terrastill(*pretrain_args(args, mae))
                terrastill("embed", str(mae / "model.pt"), *source_args(args), "--out",
                           str(out / enc))
        tables[enc] = table
        bench = out / f"bench-{enc}"
        if not (bench / "results.json").exists():
            terrastill("embed-bench", str(table), "--out", str(bench), "--seed", str(args.seed),
                       *(["--methods", args.methods] if args.methods else []))
    return summarise(out, list(tables))


def _row(rows: list[dict], method: str) -> dict | None:
    return next((r for r in rows if r.get("method") == method), None)


def summarise(out: Path, encoders: list[str]) -> dict[str, Any]:
    """One table across encoders, and the targets checked on it."""
    lines = ["| encoder | dim | test rows | kNN float32 | linear float32 | int8 kNN Δ [95 % CI] | "
             "int8 linear Δ [95 % CI] | binary decoded / Hamming kNN | int4 / rot-int4 "
             "recall@10 |", "|---|---:|---:|---:|---:|---|---|---|---|"]
    checks: dict[str, dict[str, bool]] = {}
    acc: dict[str, tuple[float, float]] = {}
    for enc in encoders:
        res = json.loads((out / f"bench-{enc}" / "results.json").read_text())
        rows = pd.read_csv(out / f"bench-{enc}" / "results.csv").to_dict("records")
        f32, i8 = _row(rows, "float32"), _row(rows, "int8")
        dec, ham = _row(rows, "binary"), _row(rows, "binary/hamming")
        i4, r4 = _row(rows, "int4"), _row(rows, "rot:int4") or _row(rows, "rot-int4")
        n_test = res.get("counts", {}).get("test")
        assert f32 and i8, f"{enc}: float32 and int8 rows expected"
        acc[enc] = (float(f32["knn_acc"]), float(f32["linear_acc"]))

        def ci(r: dict, k: str) -> str:
            return (f"{100 * r[f'{k}_diff']:+.1f} [{100 * r[f'{k}_ci_lo']:+.1f}, "
                    f"{100 * r[f'{k}_ci_hi']:+.1f}]")

        lines.append(
            f"| {enc} | {res.get('dim', '')} | {n_test} | "
            f"{100 * f32['knn_acc']:.1f} | {100 * f32['linear_acc']:.1f} | {ci(i8, 'knn')} | "
            f"{ci(i8, 'linear')} | "
            + (f"{100 * dec['knn_acc']:.1f} / {100 * ham['knn_acc']:.1f}" if dec and ham else "–")
            + " | "
            + (f"{i4['recall_at_10']:.2f} / {r4['recall_at_10']:.2f}" if i4 and r4 else "–")
            + " |")
        checks[enc] = {
            "int8_within_interval": bool(all(i8[f"{k}_ci_lo"] <= 0 <= i8[f"{k}_ci_hi"]
                                             for k in ("knn", "linear"))),
            "hamming_ge_decoded": bool(dec and ham and ham["knn_acc"] >= dec["knn_acc"]),
            "rot_int4_recall_ge_int4": bool(i4 and r4 and
                                            r4["recall_at_10"] >= i4["recall_at_10"]),
        }
    if {"pretrained", "spectral", "random"} <= set(acc):
        p = acc["pretrained"]
        checks["pretrained_above_baselines"] = {
            "knn": bool(p[0] > max(acc["spectral"][0], acc["random"][0])),
            "linear": bool(p[1] > max(acc["spectral"][1], acc["random"][1]))}
    md = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(md)
    summary = {"table": md, "checks": checks,
               "accuracy": {k: {"knn": v[0], "linear": v[1]} for k, v in acc.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def smoke_images(root: Path) -> Path:
    """Forty tiny labelled GeoTIFFs in the EuroSAT layout (two separable classes)."""
    import numpy as np
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    for k, cls in enumerate(("Water", "Field")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(20):
            data = (rng.normal(500 + 2500 * k, 150, (13, 16, 16))).clip(1, 10000)
            with rasterio.open(root / cls / f"{cls}_{i}.tif", "w", driver="GTiff", width=16,
                               height=16, count=13, dtype="uint16", crs="EPSG:32632",
                               transform=Affine(10, 0, 500000 + 200 * i, 0, -10,
                                                5000000 + 200 * k)) as dst:
                dst.write(data.astype("uint16"))
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="labelled images (EuroSAT layout)")
    src.add_argument("--chips", type=Path, help="a labelled chip dataset")
    ap.add_argument("--image-bands", default=None)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--catalog", help="--chips: the catalogue to pretrain on (default: the "
                                      "dataset's)")
    ap.add_argument("--start")
    ap.add_argument("--end")
    ap.add_argument("--samples", type=int, default=512, help="--chips: pretraining windows")
    ap.add_argument("--epochs", type=int, default=30, help="pretraining epochs")
    ap.add_argument("--methods", default=None, help="embed-bench methods (default: its list)")
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="synthetic images, seconds")
    args = ap.parse_args(argv)
    args.encoders = [e for e in args.encoders.split(",") if e]
    if args.smoke:
        args.images = smoke_images(args.out / "images")
        args.image_bands, args.scale, args.epochs = "eurosat", 0.0001, 1
        args.methods = "float32,int8,int4,binary,binary/hamming,rot:int4"
    if not args.images and not args.chips:
        ap.error("give --images, --chips or --smoke")
    summary = run(args)
    print(summary["table"])
    print(json.dumps(summary["checks"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
