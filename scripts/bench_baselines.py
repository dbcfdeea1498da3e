"""Honest baselines on the water workflow: CNNs from scratch beside the ViT and its students.

On an S2 demo world (flood task, one acquisition per chip, six bands blue/green/red/nir/
swir1/swir2 + NDWI, MNDWI and NDVI — the TorchGeo earth-surface-water recipe) this trains

    deeplabv3-r50 (from scratch), unet-r18 (from scratch), the tiny ViT (from scratch: no
    pretrained tiny weights exist), its distilled student (first N blocks) and a unet-r18
    student of the same ViT (logit distillation across architectures)

with the same `train` / `distill` code and budget (epochs, batch size, lr), predicts every
model over the whole world on the clearest date after the flood, and writes ONE table:
dense-truth mIoU (the world's truth raster) with a 95 % bootstrap interval over 32 px tiles,
total MACs per chip, CPU img/s fp32 / bf16 (bf16 autocast) and km²/s with the hours to map
the Earth's land once (the `terrastill bench` rows, in `bench.csv`).

Outputs in ``--out``: baselines.json, baselines.md, bench.csv (+ .hardware.json), models/,
predictions/, chips/, world/. ``--smoke`` shrinks everything to run in well under a minute.
``--device-check`` instead times the three architectures on CUDA (fp32, bf16 AMP, each with
and without torch.compile) at the workflow's input shape and prints img/s.

    python scripts/bench_baselines.py --out /work/evidence/issue20
    python scripts/bench_baselines.py --smoke --out /tmp/bb
    python scripts/bench_baselines.py --device-check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIX = ("blue", "green", "red", "nir", "swir1", "swir2")
INDICES = ("ndwi", "mndwi", "ndvi")


@dataclass(frozen=True)
class Sizes:
    tiles_x: int
    tiles_y: int
    tile_size: int
    observations: int
    chip_size: int
    epochs: int
    student_layers: int
    batch_size: int
    bench_seconds: float
    bench_batch: int
    boot: int


FULL = Sizes(tiles_x=2, tiles_y=1, tile_size=192, observations=320, chip_size=32, epochs=6,
             student_layers=2, batch_size=16, bench_seconds=3.0, bench_batch=16, boot=1000)
SMOKE = Sizes(tiles_x=1, tiles_y=1, tile_size=64, observations=40, chip_size=16, epochs=1,
              student_layers=1, batch_size=8, bench_seconds=0.05, bench_batch=2, boot=50)

MODELS = [  # (row name, how it is made, what it is)
    ("deeplabv3-r50", "train", "DeepLabV3 (dilated ResNet-50 + ASPP), from scratch"),
    ("unet-r18", "train", "U-Net, ResNet-18 encoder, from scratch"),
    ("tiny", "train", "tiny Prithvi-layout ViT (6 blocks), from scratch"),
    ("tiny-student", "distill", "first N blocks of the tiny ViT, distilled"),
    ("unet-r18-student", "distill", "unet-r18 distilled from the tiny ViT's logits"),
]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_world(out: Path, s: Sizes, seed: int) -> dict[str, Any]:
    from terrastill.world.build import build_world as build
    from terrastill.world.build import load_manifest
    from terrastill.world.config import WorldConfig

    wdir = out / "world"
    if not (wdir / "world.json").exists():
        say(f"S2 world: {s.tiles_x}×{s.tiles_y} tiles of {s.tile_size} px (10 m)")
        build(wdir, WorldConfig(source="s2", seed=seed, zones=1, tiles_x=s.tiles_x,
                                tiles_y=s.tiles_y, tile_size=s.tile_size, start="2024-05-01",
                                end="2024-08-31", revisit=5, flood_date="2024-07-10",
                                observations=s.observations))
    return load_manifest(wdir)


def make_chips(out: Path, world: dict[str, Any], s: Sizes, seed: int) -> Path:
    from terrastill.data.build import ChipJob
    from terrastill.data.build import make_chips as build
    from terrastill.data.chips import ReadOptions
    from terrastill.data.observations import ObservationOptions
    from terrastill.data.temporal import TemporalOptions

    chips = out / "chips"
    if not (chips / "dataset.json").exists():
        task = world["tasks"]["flood"]
        job = ChipJob(read=ReadOptions(source="s2", bands=SIX,
                                       temporal=TemporalOptions(1, 0, 6, 60)),
                      chip_size=s.chip_size, min_valid=0.3, label_window=3,
                      split_block=600 if s.chip_size <= 16 else 1000, seed=seed)
        res = build(task["observations"], chips, world["catalog"], job,
                    ObservationOptions(classes=task["classes"]), indices=INDICES,
                    command="scripts/bench_baselines.py")
        c = res.dataset["counts"]
        say(f"chips: {res.chips} ({c['train']} train, {c['val']} val, {c['test']} test) of "
            f"{s.chip_size} px, bands {', '.join(SIX)} + {', '.join(INDICES)}")
    return chips


def train_models(out: Path, chips: Path, s: Sizes, seed: int) -> dict[str, dict[str, Any]]:
    from terrastill.models.modelfile import read_card
    from terrastill.training.distill import DistillOptions, distill
    from terrastill.training.train import TrainOptions, fit

    made: dict[str, dict[str, Any]] = {}
    common = {"epochs": s.epochs, "batch_size": s.batch_size, "seed": seed, "progress": False,
              "device": "cpu"}
    for name, how, _ in MODELS:
        path = out / "models" / name / "model.pt"
        t0 = time.perf_counter()
        if not path.exists():
            say(f"{how} {name} ({s.epochs} epochs)")
            if how == "train":
                fit(chips, path.parent, TrainOptions(model=name, name=name, patience=s.epochs,
                                                     **common))
            else:
                teacher = out / "models" / "tiny" / "model.pt"
                extra = {"student": "unet-r18"} if name.startswith("unet") else {
                    "layers": s.student_layers}
                distill(teacher, chips, path.parent,
                        DistillOptions(name=name, bench_seconds=0, patience=s.epochs,
                                       **common, **extra))
            # resume checkpoints hold the optimiser state too (≈0.5 GB for deeplabv3-r50)
            shutil.rmtree(path.parent / "checkpoints", ignore_errors=True)
            shutil.rmtree(path.parent / "search", ignore_errors=True)
        # the fit's own time (Lightning loop), recorded in the card: also right on a rerun
        secs = (read_card(path).training or {}).get("seconds")
        made[name] = {"path": path, "seconds": secs or round(time.perf_counter() - t0, 1)}
    return made


def predict_and_score(out: Path, world: dict[str, Any], made: dict[str, dict[str, Any]],
                      s: Sizes) -> dt.date:
    import numpy as np

    from terrastill.data.temporal import TemporalOptions
    from terrastill.demo import clearest_date
    from terrastill.inference.aoi import bbox_aoi
    from terrastill.inference.predict import PredictRequest, predict
    from terrastill.inference.truth import (
        block_confusions,
        bootstrap_miou,
        read_pair,
        scores,
    )

    task = world["tasks"]["flood"]
    classes = list(task["classes"])
    after = dt.date.fromisoformat(task["date"])
    date = clearest_date(world["catalog"], after + dt.timedelta(days=1),
                         dt.date.fromisoformat(world["end"]), TemporalOptions(1, 0, 6, 60))
    for name, rec in made.items():
        t0 = time.perf_counter()
        res = predict(PredictRequest(model=rec["path"], aois=[bbox_aoi(world["bbox"])],
                                     date=date, out_dir=out / "predictions" / name,
                                     catalog=world["catalog"], name=f"water_{date:%Y%m%d}",
                                     composite=True, tolerance=6, device="cpu"))
        confs = []
        for cog in res.classes:
            epsg = cog.name.split("_")[-2]
            if epsg in task["truth"]:
                pred, ref = read_pair(cog, Path(task["truth"][epsg]), len(classes))
                confs.append(block_confusions(pred, ref, len(classes), 32))
        conf = np.concatenate(confs)
        sc = scores(conf.sum(0), classes)
        lo, hi = bootstrap_miou(conf, classes, s.boot, seed=0)
        rec.update(miou=sc["miou"], miou_ci95=[lo, hi], iou=sc["iou"], pixels=sc["pixels"],
                   tiles=len(conf), predict_s=round(time.perf_counter() - t0, 1))
        say(f"{name}: dense-truth mIoU {sc['miou']:.4f} [{lo:.4f}, {hi:.4f}] over "
            f"{sc['pixels']:,} px ({len(conf)} tiles)")
    return date


def bench(out: Path, made: dict[str, dict[str, Any]], s: Sizes, threads: int) -> None:
    from terrastill.bench.throughput import BenchOptions, run_bench

    csv = out / "bench.csv"
    csv.unlink(missing_ok=True)  # every figure from this run
    rows = run_bench(BenchOptions(models=[str(r["path"]) for r in made.values()],
                                  precisions=("fp32", "bf16"), compiles=(False,),
                                  batch_sizes=(s.bench_batch,), seconds=s.bench_seconds,
                                  warmup=2, out=csv, device="cpu", threads=threads))
    by_path = {str(r["path"]): r for r in made.values()}
    for row in rows:
        rec = by_path[row["model"]]
        p = row["precision"]
        rec[f"img_s_{p}"] = float(row["img_s"]) if row.get("status") == "ok" else None
        if p == "fp32":
            for k in ("params", "macs", "chip_size", "gsd_m", "km2_per_s", "earth_hours"):
                rec[k] = row[k]
        if row.get("status") == "ok":
            rec["km2_per_s_best"] = max(rec.get("km2_per_s_best") or 0.0,
                                        float(row["km2_per_s"]))
            rec["earth_hours_best"] = min(rec.get("earth_hours_best") or float("inf"),
                                          float(row["earth_hours"]))


def test_scores(made: dict[str, dict[str, Any]], chips: Path) -> None:
    from terrastill.training.train import evaluate

    for rec in made.values():
        rec["test_chip_miou"] = evaluate(rec["path"], chips, "test", device="cpu")["miou"]


def machine() -> str:
    import torch

    from terrastill.bench.hardware import cpu_model

    cpu = cpu_model()
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def _f(v: Any, nd: int = 3) -> str:
    return "—" if v is None else f"{float(v):.{nd}f}"


def write_table(out: Path, made: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    rows = []
    for name, how, what in MODELS:
        r = made[name]
        rows.append({"model": name, "how": how, "what": what, "params": int(r["params"]),
                     "macs": int(r["macs"]), "miou": r["miou"], "miou_ci95": r["miou_ci95"],
                     "iou": r["iou"], "test_chip_miou": r.get("test_chip_miou"),
                     "img_s_fp32": r.get("img_s_fp32"), "img_s_bf16": r.get("img_s_bf16"),
                     "km2_per_s": float(r["km2_per_s"]),
                     "km2_per_s_best": r.get("km2_per_s_best"),
                     "earth_hours": float(r["earth_hours"]),
                     "earth_hours_best": r.get("earth_hours_best"),
                     "train_s": r["seconds"], "predict_s": r["predict_s"],
                     "tiles": r["tiles"], "pixels": r["pixels"]})
    (out / "baselines.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        "| model | made by | params | MACs / chip | dense-truth mIoU [95 % CI] | water IoU "
        "| test-chip mIoU | CPU img/s fp32 | CPU img/s bf16 | km²/s (best) | Earth, h (best) "
        "| train s |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["miou_ci95"]
        water = r["iou"].get("water")
        lines.append(
            f"| {r['model']} | {r['how']} | {r['params'] / 1e6:.2f} M | "
            f"{r['macs'] / 1e6:,.0f} M | {r['miou']:.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{_f(water)} | {_f(r['test_chip_miou'])} | {_f(r['img_s_fp32'], 0)} | "
            f"{_f(r['img_s_bf16'], 0)} | {_f(r['km2_per_s_best'], 1)} | "
            f"{_f(r['earth_hours_best'], 0)} | {r['train_s']:.0f} |")
    s = meta["sizes"]
    lines += ["", f"Machine: {meta['machine']}. S2 demo world {s['tiles_x']}×{s['tiles_y']} "
              f"tiles of {s['tile_size']} px at 10 m; {meta['chips']['train']} train / "
              f"{meta['chips']['val']} val / {meta['chips']['test']} test chips of "
              f"{s['chip_size']} px, T = 1, 9 channels ({', '.join(SIX)} + "
              f"{', '.join(INDICES)}); every model {s['epochs']} epochs, batch "
              f"{s['batch_size']}, AdamW lr 1e-3. Dense truth: the whole world predicted on "
              f"{meta['date']} ({meta['pixels']:,} px), 95 % percentile bootstrap over "
              f"{meta['tiles']} tiles of 32 px ({s['boot']} resamples). img/s: batch "
              f"{s['bench_batch']}, {s['bench_seconds']} s per configuration; km²/s at "
              f"{s['chip_size']} px × 10 m windows without overlap."]
    (out / "baselines.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def device_check(chip: int, batch: int, seconds: float, device: str = "cuda",
                 compiles: tuple[bool, ...] = (False, True)) -> None:
    """img/s of the three architectures (random weights) at the workflow's input shape: 6
    bands + 3 indices, T = 1, ``chip`` px; fp32 and bf16 autocast, eager and compiled."""
    import torch

    from terrastill.bench.throughput import BenchModel, measure
    from terrastill.data.indices import input_config, resolve_indices
    from terrastill.models.registry import build_model, make_arch

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device-check: no CUDA device")
    specs = resolve_indices(INDICES, SIX, "s2")
    inputs = input_config(SIX, [0.1] * 6, [0.05] * 6, specs, [0.0] * 3, [0.5] * 3)
    where = (f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
             if device == "cuda" else machine())
    print(f"{where}; input 6 bands + 3 indices, T=1, {chip} px, "
          f"batch {batch}", flush=True)
    for name in ("unet-r18", "deeplabv3-r50", "tiny"):
        arch = make_arch(name, "segmentation", 2, bands=SIX, num_steps=1, chip_size=chip,
                         inputs=inputs)
        model = build_model(arch).eval()
        bm = BenchModel(key=name, name=name, model=model, task="segmentation", in_chans=6,
                        num_frames=1, chip_size=chip, gsd_m=10.0, params=0, macs=0,
                        encoder_macs=0, depth=0)
        for precision in ("fp32", "bf16"):
            for comp in compiles:
                t = measure(bm, device=device, precision=precision, compile=comp,
                            batch_size=batch, seconds=seconds, warmup=5)
                img_s = batch / (t.percentile_ms(50) / 1000.0)
                print(f"{name:14s} {precision} compile={'on' if comp else 'off':3s} "
                      f"{img_s:10.1f} img/s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/work/evidence/issue20"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: least overhead on a shared machine)")
    ap.add_argument("--epochs", type=int, default=None, help="override the epochs")
    ap.add_argument("--fresh", action="store_true", help="delete earlier outputs in --out")
    ap.add_argument("--device-check", action="store_true",
                    help="time the architectures on CUDA instead (prints img/s)")
    ap.add_argument("--chip", type=int, default=256, help="--device-check chip size")
    ap.add_argument("--batch", type=int, default=32, help="--device-check batch size")
    ap.add_argument("--device", default="cuda", help="--device-check device")
    ap.add_argument("--seconds", type=float, default=3.0, help="--device-check timed s")
    ap.add_argument("--no-compile", action="store_true", help="--device-check: eager only")
    a = ap.parse_args(argv)
    import torch

    if a.device_check:
        device_check(a.chip, a.batch, a.seconds, a.device,
                     (False,) if a.no_compile else (False, True))
        return 0
    torch.set_num_threads(a.threads)
    s = SMOKE if a.smoke else FULL
    if a.epochs:
        s = Sizes(**{**s.__dict__, "epochs": int(a.epochs)})
    out = a.out
    if a.fresh:
        for sub in ("world", "chips", "models", "predictions"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = build_world(out, s, a.seed)
    chips = make_chips(out, world, s, a.seed)
    made = train_models(out, chips, s, a.seed)
    date = predict_and_score(out, world, made, s)
    test_scores(made, chips)
    bench(out, made, s, a.threads)
    counts = json.loads((chips / "dataset.json").read_text())["counts"]
    first = next(iter(made.values()))
    meta = {"machine": machine(), "smoke": a.smoke, "sizes": s.__dict__, "date": str(date),
            "chips": counts, "tiles": first["tiles"], "pixels": first["pixels"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "command": " ".join(["python", "scripts/bench_baselines.py", *sys.argv[1:]])}
    write_table(out, made, meta)
    say(f"done in {meta['wall_s']:.0f} s → {out / 'baselines.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
