#!/usr/bin/env python
"""Teacher vs distilled students on the demo world's tasks: the README's distillation table.

For each task (landcover: 5 classes, flood: 2 classes) it

1. makes the chip dataset from the demo world (unless ``--chips TASK=DIR`` names one),
2. fine-tunes a teacher (default: a 12-block, 128-dim Prithvi-layout ViT — Prithvi-EO-1.0's
   depth at CPU size),
3. runs ``distill --layers auto`` (tolerance 1 pp mIoU) and distils fixed-depth students,
4. optionally a no-distillation control (α = 1: the truncated teacher fine-tuned on labels
   alone) at the auto depth,
5. measures CPU fp32 throughput of every model in one process, interleaved over ``--rounds``
   rounds (best round of batch / median batch latency: robust to other processes on a
   shared machine), and prints / writes the table: depth, params, encoder MACs, CPU img/s,
   val and test mIoU, and the teacher / auto-student ratios against the targets
   (≥ 4× fewer encoder MACs, ≥ 3× CPU img/s, ≤ 1 pp mIoU loss).

``--regression`` adds the regression question: a synthetic sparse-label regression chip folder,
students trained with the MSE-to-teacher term (α = 0.5) and without it (α = 1).

Example (CPU, a few minutes per task on an idle 2-core machine)::

    python scripts/bench_distill.py --world demo-out/world --work demo-out/bench-distill \\
        --out bench-results/distill

Every step skips work whose output already exists, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TASKS = {
    "landcover": {"classes": "water,forest,cropland,urban,bare", "obs": "landcover.csv"},
    "flood": {"classes": "land,water", "obs": "flood.csv"},
}
CHIP_ARGS = ["--num-steps", "3", "--temporal-step", "14", "--temporal-tolerance", "7",
             "--max-cloud", "60", "--min-valid", "0.3", "--label-window", "3"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_chips(world: Path, task: str, out: Path, chip_size: int | None = None) -> Path:
    if (out / "dataset.json").is_file():
        return out
    cfg = TASKS[task]
    cmd = [sys.executable, "-m", "terrastill.cli", "chips", str(world / "observations" /
                                                               cfg["obs"]),
           "--catalog", str(world / "catalog.json"), "--classes", cfg["classes"], "--out",
           str(out), *CHIP_ARGS, *(["--chip-size", str(chip_size)] if chip_size else [])]
    log("chips: " + " ".join(cmd[3:]))
    subprocess.run(cmd, check=True)
    return out


def train_teacher(chips: Path, out: Path, args: argparse.Namespace) -> Path:
    from terrastill.training.train import TrainOptions, fit

    if (out / "model.pt").is_file():
        return out / "model.pt"
    log(f"teacher: {args.teacher_depth} blocks × {args.teacher_dim} dim on {chips.name}")
    opts = TrainOptions(model="tiny", epochs=args.teacher_epochs, batch_size=args.batch_size,
                        lr=args.lr, patience=args.patience, seed=args.seed, device=args.device,
                        progress=False, name=f"teacher-{args.teacher_depth}x{args.teacher_dim}",
                        encoder_overrides={"depth": args.teacher_depth,
                                           "embed_dim": args.teacher_dim,
                                           "num_heads": args.teacher_dim // 32})
    return fit(chips, out, opts)


def run_distill(teacher: Path, chips: Path, out: Path, args: argparse.Namespace,
                **kw: Any) -> Path:
    from terrastill.training.distill import DistillOptions, distill

    if (out / "model.pt").is_file():
        return out / "model.pt"
    base = dict(epochs=args.student_epochs, search_epochs=args.search_epochs,
                batch_size=args.batch_size, lr=args.lr, patience=args.patience, seed=args.seed,
                device=args.device, progress=False, bench_seconds=0.5, alpha=args.alpha,
                temperature=args.temperature, tolerance=args.tolerance)
    ref = args.reference_dirs.get(args.current_task)
    if ref:  # the depth search judges candidates on the dense reference over the val chips
        base["reference"] = [ref]
    base.update(kw)
    log(f"distill → {out.name}: layers={base.get('layers')} alpha={base['alpha']}")
    return distill(teacher, chips, out, DistillOptions(**base)).model_path


def cpu_throughput(paths: list[Path], threads: int, batch: int, seconds: float, rounds: int
                   ) -> dict[str, float]:
    """Best-of-rounds CPU fp32 img/s (batch / median batch latency), models interleaved."""
    import torch

    from terrastill.bench.throughput import load_bench_model, measure

    torch.set_num_threads(threads)
    models = {str(p): load_bench_model(str(p)) for p in paths}
    best = dict.fromkeys(models, 0.0)
    for r in range(rounds):
        for key, bm in models.items():
            t = measure(bm, device="cpu", precision="fp32", compile=False, batch_size=batch,
                        seconds=seconds, warmup=2)
            best[key] = max(best[key], batch / (t.percentile_ms(50) / 1000.0))
        log(f"  throughput round {r + 1}/{rounds}: " + ", ".join(
            f"{Path(k).parent.name} {v:.1f}" for k, v in best.items()))
    return best


def dense_miou(model: Path, dirs: list[Path], device: str) -> tuple[float, int]:
    """mIoU over every chip of dense-label folders (``terrastill chips TRUTH.tif --date``),
    confusions summed over the folders."""
    import numpy as np

    from terrastill.training.metrics import scores_from_confusion
    from terrastill.training.train import evaluate

    conf = None
    for d in dirs:
        r = evaluate(model, d, split="all", device=device)
        c = np.asarray(r["confusion"], dtype=np.int64)
        conf = c if conf is None else conf + c
    s = scores_from_confusion(conf)
    return float(s["miou"]), int(s["n_pixels"])


def _metric(card: Any, split: str, name: str) -> float | None:
    v = (card.metrics.get(split) or {}).get(name)
    return None if v is None else float(v)


def run_task(task: str, chips: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from terrastill.models.modelfile import read_card

    tdir = work / task
    teacher = train_teacher(chips, tdir / "teacher", args)
    auto = run_distill(teacher, chips, tdir / "auto", args, layers="auto",
                       candidates=args.candidates, search_all=args.search_all)
    auto_depth = read_card(auto).depth
    models: list[tuple[str, Path]] = [("teacher", teacher), (f"auto ({auto_depth})", auto)]
    for d in [int(v) for v in args.depths.split(",") if v.strip()]:
        if d == auto_depth:
            continue
        models.append((f"student {d}", run_distill(teacher, chips, tdir / f"student-{d}",
                                                   args, layers=d)))
    if args.control:
        models.append((f"no KD ({auto_depth})",
                       run_distill(teacher, chips, tdir / f"nokd-{auto_depth}", args,
                                   layers=auto_depth, alpha=1.0)))
    log(f"{task}: CPU throughput ({args.threads} threads, batch {args.bench_batch}, "
        f"{args.rounds} rounds)")
    ips = cpu_throughput([p for _, p in models], args.threads, args.bench_batch,
                         args.bench_seconds, args.rounds)
    rows = []
    for label, path in models:
        card = read_card(path)
        rows.append({"model": label, "path": str(path), "depth": card.depth,
                     "params": card.params, "encoder_macs": card.encoder_macs,
                     "macs": card.macs, "cpu_img_s": round(ips[str(path)], 2),
                     "val_miou": _metric(card, "val", "miou"),
                     "test_miou": _metric(card, "test", "miou"),
                     "alpha": (card.training.get("distillation") or {}).get("alpha")})
    ref = args.reference_dirs.get(task)
    if ref:
        from terrastill.data.dataset import ChipDataset
        from terrastill.training.train import evaluate

        # the test chips; a dataset too small to have any (the smoke world) uses all chips
        split = "test" if len(ChipDataset(chips, split="test")) else "all"
        log(f"{task}: {split} chips scored against the dense reference {ref}")
        for r in rows:
            r["ref_split"] = split
            m = evaluate(Path(r["path"]), chips, split, device=args.device, reference=[ref])
            r["ref_miou"], r["ref_pixels"] = float(m["miou"]), int(m["n_pixels"])
            r["ref_miou_ci"] = list((m.get("intervals") or {}).get("miou") or [])
    dense = [Path(d) for d in args.dense_dirs.get(task, [])]
    if dense:
        log(f"{task}: dense-truth evaluation on {', '.join(d.name for d in dense)}")
        for r in rows:
            r["dense_miou"], r["dense_pixels"] = dense_miou(Path(r["path"]), dense, args.device)
    rows.sort(key=lambda r: (r["model"] != "teacher", -r["depth"], r["model"]))
    t = next(r for r in rows if r["model"] == "teacher")
    a = next(r for r in rows if r["model"].startswith("auto"))
    ratios = {
        "encoder_macs": t["encoder_macs"] / a["encoder_macs"],
        "macs": t["macs"] / a["macs"],
        "cpu_img_s": a["cpu_img_s"] / t["cpu_img_s"],
        "val_miou_pp": None if t["val_miou"] is None else (a["val_miou"] - t["val_miou"]) * 100,
        "test_miou_pp": None if t["test_miou"] is None else
        (a["test_miou"] - t["test_miou"]) * 100,
    }
    if "dense_miou" in t:
        ratios["dense_miou_pp"] = (a["dense_miou"] - t["dense_miou"]) * 100
    if "ref_miou" in t:
        ratios["ref_miou_pp"] = (a["ref_miou"] - t["ref_miou"]) * 100
    # issue 14: ≥ 4× fewer total MACs / ≥ 3× img/s than a `tiny` teacher, ≥ 8× / ≥ 6× for 12
    macs_x, ips_x = (8, 6) if t["depth"] >= 12 else (4, 3)
    ratios["targets_met"] = {
        f"total_macs_{macs_x}x": ratios["macs"] >= macs_x,
        f"cpu_img_s_{ips_x}x": ratios["cpu_img_s"] >= ips_x,
        "val_miou_within_1pp": ratios["val_miou_pp"] is not None
        and ratios["val_miou_pp"] >= -1.0,
        "test_miou_within_1pp": ratios["test_miou_pp"] is not None
        and ratios["test_miou_pp"] >= -1.0,
    }
    if "ref_miou_pp" in ratios:
        ratios["targets_met"]["dense_reference_within_1pp"] = ratios["ref_miou_pp"] >= -1.0
    search = json.loads((tdir / "auto" / "search.json").read_text())
    return {"task": task, "rows": rows, "ratios": ratios, "search": search,
            "search_png": str(tdir / "auto" / "search.png")}


def regression_study(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Sparse-label synthetic regression: students with and without the MSE-to-teacher term."""
    import numpy as np
    import rasterio

    from terrastill.models.modelfile import read_card

    sys.path.insert(0, str(ROOT / "tests"))
    from chipfolder import write_chip_folder

    chips = work / "regression" / "chips"
    if not (chips / "dataset.json").is_file():
        write_chip_folder(chips, n_chips=60, size=32, seed=7, task="regression", noise=0.03)
        rng = np.random.default_rng(0)
        for p in sorted((chips / "labels").glob("*.tif")):  # keep ~3% of the labels
            with rasterio.open(p, "r+") as ds:
                lab = ds.read(1)
                lab[rng.random(lab.shape) > 0.03] = -1
                ds.write(lab, 1)
    teacher = train_teacher(chips, work / "regression" / "teacher", args)
    rows = []
    for d in (1, 2):
        for alpha in (1.0, 0.5):
            p = run_distill(teacher, chips, work / "regression" / f"d{d}-a{alpha}", args,
                            layers=d, alpha=alpha)
            c = read_card(p)
            rows.append({"depth": d, "alpha": alpha, "kd": "MSE to teacher" if alpha < 1
                         else "none (labels only)",
                         "val_rmse": _metric(c, "val", "rmse"),
                         "test_rmse": _metric(c, "test", "rmse"),
                         "test_r2": _metric(c, "test", "r2")})
    tc = read_card(teacher)
    return {"teacher": {"depth": tc.depth, "val_rmse": _metric(tc, "val", "rmse"),
                        "test_rmse": _metric(tc, "test", "rmse"),
                        "test_r2": _metric(tc, "test", "r2")}, "rows": rows}


def _f4(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _ci(v: list[float] | None) -> str:
    return f"[{v[0]:.3f}, {v[1]:.3f}]" if v else ""


def _pp(v: float | None) -> str:
    return "— (no labelled pixels)" if v is None else f"{v:+.2f} pp"


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for res in results["tasks"]:
        lines.append(f"### {res['task']}\n")
        has_dense = "dense_miou" in res["rows"][0]
        has_ref = "ref_miou" in res["rows"][0]
        lines.append("| model | depth | params | encoder MMACs | MMACs | CPU img/s | val mIoU "
                     "| test mIoU |" + (" dense-truth mIoU |" if has_dense else "")
                     + (" test vs dense reference [95 % CI] |" if has_ref else ""))
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_dense else "")
                     + ("---:|" if has_ref else ""))
        for r in res["rows"]:
            lines.append(f"| {r['model']} | {r['depth']} | {r['params']:,} | "
                         f"{r['encoder_macs'] / 1e6:.1f} | {r['macs'] / 1e6:.1f} | "
                         f"{r['cpu_img_s']:.1f} | {_f4(r['val_miou'])} | {_f4(r['test_miou'])} |"
                         + (f" {_f4(r.get('dense_miou'))} |" if has_dense else "")
                         + (f" {_f4(r.get('ref_miou'))} {_ci(r.get('ref_miou_ci'))} |"
                            if has_ref else ""))
        q = res["ratios"]
        lines.append("")
        lines.append(f"auto student vs teacher: {q['encoder_macs']:.1f}× fewer encoder MACs, "
                     f"{q['macs']:.1f}× fewer MACs, {q['cpu_img_s']:.1f}× CPU img/s, "
                     f"val mIoU {_pp(q['val_miou_pp'])}, test mIoU "
                     f"{_pp(q['test_miou_pp'])}"
                     + (f", dense-truth mIoU {q['dense_miou_pp']:+.2f} pp"
                        if "dense_miou_pp" in q else "")
                     + (f", test vs dense reference {q['ref_miou_pp']:+.2f} pp"
                        if "ref_miou_pp" in q else "") + "; targets met: "
                     + ", ".join(f"{k} {'yes' if v else 'NO'}"
                                 for k, v in q["targets_met"].items()))
        lines.append("")
    reg = results.get("regression")
    if reg:
        lines.append("### regression (synthetic, ~3% of pixels labelled)\n")
        lines.append("| student depth | distillation | val RMSE | test RMSE | test R² |")
        lines.append("|---:|---|---:|---:|---:|")
        t = reg["teacher"]
        lines.append(f"| teacher ({t['depth']}) | — | {t['val_rmse']:.4f} | "
                     f"{t['test_rmse']:.4f} | {t['test_r2']:.3f} |")
        for r in reg["rows"]:
            lines.append(f"| {r['depth']} | {r['kd']} | {r['val_rmse']:.4f} | "
                         f"{r['test_rmse']:.4f} | {r['test_r2']:.3f} |")
    return "\n".join(lines) + "\n"


# seconds-long settings that still run every stage (CI runs the script this way so it cannot rot)
SMOKE = {"tasks": "flood", "teacher_depth": 2, "teacher_dim": 32, "teacher_epochs": 1,
         "student_epochs": 1, "search_epochs": 1, "candidates": "1", "depths": "",
         "patience": 1, "bench_seconds": 0.1, "rounds": 1, "bench_batch": 2, "chip_size": 16,
         "device": "cpu"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, default=Path("demo-out/world"),
                    help="Demo world folder (built with `terrastill world` if missing).")
    ap.add_argument("--chips", action="append", default=[],
                    help="TASK=DIR: use an existing chip folder for TASK.")
    ap.add_argument("--reference", action="append", default=[],
                    help="TASK=WORLD|RASTER: a dense reference (a demo world or truth raster) "
                         "that the depth search judges candidates on (val chips) and every "
                         "model is scored on (test chips), as `distill/evaluate --reference`")
    ap.add_argument("--dense", action="append", default=[],
                    help="TASK=DIR[,DIR]: dense-label chip folders (`terrastill chips "
                         "TRUTH.tif --date`) to score every model on (split all).")
    ap.add_argument("--work", type=Path, default=Path("demo-out/bench-distill"))
    ap.add_argument("--out", type=Path, default=Path("bench-results/distill"))
    ap.add_argument("--tasks", default="landcover,flood")
    ap.add_argument("--teacher-depth", type=int, default=12)
    ap.add_argument("--teacher-dim", type=int, default=128)
    ap.add_argument("--teacher-epochs", type=int, default=40)
    ap.add_argument("--student-epochs", type=int, default=40)
    ap.add_argument("--search-epochs", type=int, default=12)
    ap.add_argument("--candidates", default=None, help="auto search depths (default 1..d-1).")
    ap.add_argument("--search-all", action="store_true")
    ap.add_argument("--depths", default="1,2,4,6", help="Fixed-depth students to add.")
    ap.add_argument("--control", action="store_true", help="α=1 control at the auto depth.")
    ap.add_argument("--regression", action="store_true")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="Training device (auto, cpu, cuda).")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads for img/s.")
    ap.add_argument("--bench-batch", type=int, default=16)
    ap.add_argument("--bench-seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chip-size", type=int, default=None, help="Chip size (chips' default).")
    ap.add_argument("--smoke", action="store_true",
                    help="Seconds-long run of every stage (flood only, 2-block teacher, 1 epoch).")
    args = ap.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)

    logging.basicConfig(level=logging.WARNING)
    from terrastill.training.train import quiet_lightning

    quiet_lightning()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    given = dict(item.split("=", 1) for item in args.chips)
    args.dense_dirs = {k: v.split(",") for k, v in (i.split("=", 1) for i in args.dense)}
    args.reference_dirs = dict(i.split("=", 1) for i in args.reference)
    results: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                            for k, v in vars(args).items()}, "tasks": []}
    results["command"] = " ".join(sys.argv)
    from terrastill.bench.hardware import hardware_info

    results["hardware"] = hardware_info()
    t0 = time.perf_counter()
    for task in [t for t in args.tasks.split(",") if t]:
        if task in given:
            chips = Path(given[task])
        else:
            if not (args.world / "world.json").is_file():
                log(f"world: building {args.world}")
                subprocess.run([sys.executable, "-m", "terrastill.cli", "world",
                                str(args.world)], check=True)
            chips = make_chips(args.world, task, args.work / f"chips-{task}", args.chip_size)
        args.current_task = task
        res = run_task(task, chips, args.work, args)
        results["tasks"].append(res)
        shutil.copy(res["search_png"], args.out / f"search-{task}.png")
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (args.out / "table.md").write_text(markdown(results))
        print(markdown({"tasks": [res]}), flush=True)
    if args.regression:
        results["regression"] = regression_study(args.work, args)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (args.out / "table.md").write_text(markdown(results))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(markdown(results), flush=True)
    log(f"done in {results['seconds']:.0f} s → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
