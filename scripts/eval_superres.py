#!/usr/bin/env python
"""Splat super-resolution scored against the demo world's fine truth (issue 19's evidence).

It builds (or reuses) an S2 world whose 10 m scenes are rendered from a 2.5 m truth through a
Gaussian PSF (σ = 3 m) and known per-acquisition shifts, then on crops of one tile:

1. PSNR / SSIM of the fit against the fine truth, for N = 1, 2, 4, 8, 16, 32 acquisitions (as
   many as the season has), against bicubic and nearest upsampling of the best (least masked)
   single acquisition and bicubic upsampling of the N-acquisition mean;
2. the same for an assumed σ_psf of 2, 3, 4, 5 m (the truth is 3 m);
3. recovered shifts vs the known ones and vs scikit-image phase correlation (Pearson r, mean
   absolute deviation, per axis), from the all-acquisition fit of a 256² crop;
4. seconds per 256² crop on this machine's CPU (torch threads as set).

The truth an output is scored against: the SR output lives in the frame of the mean shift of
its acquisitions (the fit's shifts are zero-mean) and its scene is one latent surface, so its
truth is the mean fine truth of those dates, shifted by their mean known shift; a single
acquisition is scored against its own date's truth shifted by its own shift. PSNR and SSIM use
each band's truth range over the crop as the data range, leave out a 2-native-pixel border, and
average the bands.

    python scripts/eval_superres.py --out /work/evidence/issue19 --timing-crop 0   # curves only
    python scripts/eval_superres.py --smoke --out /tmp/sr-smoke           # seconds
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

BANDS = ("red", "green", "blue", "nir")
SEASON = ("2024-10-01", "2024-12-31")  # a static surface in the demo world (see build_world)


def build_world(root: Path, smoke: bool, start: str = SEASON[0], end: str = SEASON[1],
                revisit: int = 1) -> dict:
    """The evaluation world (built if ``root`` has none). The default window, Oct 1 – Dec 31,
    is when the demo world's surface is static (crops harvested, forest past its September
    decline), so 32+ acquisitions see one scene; a summer window mixes in green-up and harvest.
    The flood is put on the last day, which the evaluation leaves out."""
    from terrastill.world.build import build_world as build
    from terrastill.world.build import load_manifest
    from terrastill.world.config import WorldConfig

    if not (root / "world.json").exists():
        if smoke:
            start, end, revisit = "2024-07-20", "2024-08-06", 2
        cfg = WorldConfig(source="s2", zones=1, tiles_x=1, tiles_y=1,
                          tile_size=48 if smoke else 256, start=start, end=end, flood_date=end,
                          revisit=revisit, observations=10, fine_factor=4)
        build(root, cfg)
    return load_manifest(root)


def tile_grid(world: dict):
    from affine import Affine

    from terrastill.data.grid import GridSpec

    t = world["tiles"][0]
    return GridSpec(int(t["epsg"]), Affine(*t["transform"]), t["shape"][1], t["shape"][0])


def fine_truth(world: dict, day: str, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """(4, ...) truth reflectance (band order BANDS) of a native-pixel window."""
    import rasterio
    from rasterio.windows import Window

    fine = world["fine"]
    f = fine["factor"]
    path = Path(world["root"]) / fine["truth"][str(world["epsg"][0])][day]
    with rasterio.open(path) as src:
        order = [list(src.descriptions).index(b) + 1 for b in BANDS]
        data = src.read(order, window=Window(c0 * f, r0 * f, (c1 - c0) * f, (r1 - r0) * f))
    return data.astype(np.float32) * fine["scale"]


def shifted(img: np.ndarray, dx: float, dy: float, res: float) -> np.ndarray:
    """Content moved by (dx east, dy north) metres (cubic spline, edges repeated)."""
    from scipy.ndimage import shift

    return np.stack([shift(b, (-dy / res, dx / res), order=3, mode="nearest") for b in img])


def scores(truth: np.ndarray, pred: np.ndarray, border: int) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    e = border
    t, p = truth[:, e:-e, e:-e], pred[:, e:-e, e:-e]
    ps, ss = [], []
    for b in range(t.shape[0]):
        rng = float(t[b].max() - t[b].min()) or 1.0
        ps.append(peak_signal_noise_ratio(t[b], p[b], data_range=rng))
        ss.append(structural_similarity(t[b], p[b], data_range=rng))
    return float(np.mean(ps)), float(np.mean(ss))


def upsample(img: np.ndarray, f: int, order: int) -> np.ndarray:
    from skimage.transform import resize

    filled = img.copy()
    for b in range(filled.shape[0]):
        bad = ~np.isfinite(filled[b])
        filled[b][bad] = np.nanmean(filled[b]) if (~bad).any() else 0.0
    if order == 0:
        return np.repeat(np.repeat(filled, f, axis=1), f, axis=2)
    c, h, w = filled.shape
    return resize(filled, (c, h * f, w * f), order=order, mode="edge", anti_aliasing=False)


class Crop:
    """The acquisitions, stack and truth of one native-pixel window of the tile."""

    def __init__(self, world: dict, picked: list, r0: int, r1: int, c0: int, c1: int):
        from terrastill.data.chips import ReadOptions
        from terrastill.superres import acquire

        self.world, self.box = world, (r0, r1, c0, c1)
        self.grid = tile_grid(world).part(r0, r1, c0, c1)
        self.read = ReadOptions(source="s2", bands=BANDS)
        self.stack = acquire.read_stack(picked, self.read, self.grid)
        valid = np.isfinite(self.stack).all(axis=1).reshape(len(picked), -1).mean(axis=1)
        keep = [i for i in range(len(picked)) if valid[i] >= 0.5]
        self.stack, self.valid = self.stack[keep], valid[keep]
        self.dates = [picked[i].acquisition.date for i in keep]
        self.shifts = np.array([world["fine"]["shifts"][d] for d in self.dates])
        self.truths = {d: fine_truth(world, d, *self.box) for d in self.dates}
        self.f = world["fine"]["factor"]
        self.res = world["fine"]["resolution"]
        # the order of use: least masked first, then date (the CLI's choice)
        self.order = sorted(range(len(self.dates)), key=lambda i: (-self.valid[i], self.dates[i]))

    def subset(self, n: int) -> list[int]:
        return sorted(self.order[:n])

    def mean_truth(self, idx: list[int]) -> np.ndarray:
        m = self.shifts[idx].mean(axis=0)
        return shifted(np.mean([self.truths[self.dates[i]] for i in idx], axis=0), m[0], m[1],
                       self.res)

    def own_truth(self, i: int) -> np.ndarray:
        return shifted(self.truths[self.dates[i]], *self.shifts[i], self.res)


def evaluate(crop: Crop, idx: list[int], opts, border: int) -> dict:
    from terrastill.superres.fit import fit

    row: dict = {"n": len(idx)}
    best = crop.order[0]
    truth_best = crop.own_truth(best)
    low = crop.stack[best]
    for name, order in (("bicubic", 3), ("nearest", 0)):
        row[f"psnr_{name}"], row[f"ssim_{name}"] = scores(truth_best, upsample(low, crop.f,
                                                                               order), border)
    truth = crop.mean_truth(idx)
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(crop.stack[idx], axis=0)
    row["psnr_bicubic_mean"], row["ssim_bicubic_mean"] = scores(truth, upsample(mean, crop.f, 3),
                                                                border)
    t0 = time.perf_counter()
    res = fit(crop.stack[idx], 10.0, opts)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    out = res.render_fine(crop.f)
    row["psnr_sr"], row["ssim_sr"] = scores(truth, out, border)
    row["rmse_fit"] = res.rmse
    row["lbfgs_iterations"] = res.lbfgs.get("iterations", 0)
    row["lbfgs_evaluations"] = res.lbfgs.get("evaluations", 0)
    row["_fit"], row["_out"], row["_truth"] = res, out, truth
    return row


def shift_stats(crop: Crop, idx: list[int], res) -> list[dict]:
    from terrastill.superres.shifts import phase_shifts

    known = crop.shifts[idx] - crop.shifts[idx].mean(axis=0)
    pc = phase_shifts(crop.stack[idx], 10.0)
    rows = []
    pairs = (("recovered vs known", res.shifts, known), ("phase corr vs known", pc, known),
             ("recovered vs phase corr", res.shifts, pc))
    for name, a, b in pairs:
        for ax, axis in ((0, "dx"), (1, "dy")):
            rows.append({"pair": name, "axis": axis, "n": len(idx),
                         "pearson_r": float(np.corrcoef(a[:, ax], b[:, ax])[0, 1]),
                         "mean_abs_dev_m": float(np.abs(a[:, ax] - b[:, ax]).mean()),
                         "std_known_m": float(known[:, ax].std()),
                         "max_abs_known_m": float(np.abs(known[:, ax]).max())})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
             if not k.startswith("_")} for r in rows]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(out: Path, curve: list[dict], psf: list[dict], example: dict, crop: Crop) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    n = [r["n"] for r in curve]
    for key, label, style in (("sr", "splat SR (N acquisitions)", "o-"),
                              ("bicubic_mean", "bicubic of the N-mean", "s--"),
                              ("bicubic", "bicubic, best single", ":"),
                              ("nearest", "nearest, best single", ":")):
        axes[0].plot(n, [r[f"psnr_{key}"] for r in curve], style, label=label)
        axes[1].plot(n, [r[f"ssim_{key}"] for r in curve], style, label=label)
    for a, name in ((axes[0], "PSNR (dB)"), (axes[1], "SSIM")):
        a.set_xscale("log", base=2)
        a.set_xlabel("acquisitions N")
        a.set_ylabel(name)
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    s = [r["sigma_psf"] for r in psf]
    axes[2].plot(s, [r["psnr_sr"] for r in psf], "o-", label="splat SR")
    axes[2].axhline(psf[0]["psnr_bicubic"], ls=":", color="gray", label="bicubic, best single")
    axes[2].axvline(3.0, ls="--", color="k", lw=0.8, label="true σ_psf")
    axes[2].set_xlabel("assumed σ_psf (m)")
    axes[2].set_ylabel("PSNR (dB)")
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "superres_curves.png", dpi=110)
    plt.close(fig)

    truth, sr = example["_truth"], example["_out"]
    best = crop.order[0]
    bic = upsample(crop.stack[best], crop.f, 3)
    low = upsample(crop.stack[best], crop.f, 0)

    def rgb(a: np.ndarray) -> np.ndarray:
        return np.clip(np.moveaxis(a[:3], 0, -1) / 0.3, 0, 1)

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for a, img, title in zip(axes, (low, bic, sr, truth),
                             ("10 m acquisition (nearest)", "bicubic ×4",
                              f"splat SR, N = {example['n']}", "2.5 m truth (mean, aligned)"),
                             strict=True):
        a.imshow(rgb(img), interpolation="nearest")
        a.set_title(title)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(out / "superres_example.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--world", type=Path, default=None, help="World folder (built if missing).")
    p.add_argument("--smoke", action="store_true", help="Tiny world and fits: seconds.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default).")
    p.add_argument("--curve-crop", type=int, default=64)
    p.add_argument("--timing-crop", type=int, default=256,
                   help="0: no timing crop (shifts are scored on the largest curve fit).")
    p.add_argument("--timing-acquisitions", type=int, default=0,
                   help="Acquisitions in the timing fit (0: all).")
    p.add_argument("--start", default=SEASON[0], help="World start (when it is built).")
    p.add_argument("--end", default=SEASON[1], help="World end (left out; the flood day).")
    p.add_argument("--revisit", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from terrastill.data.chips import ReadOptions
    from terrastill.superres import acquire
    from terrastill.superres.fit import FitOptions, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    args.out.mkdir(parents=True, exist_ok=True)
    world_dir = args.world or args.out / ("world-smoke" if args.smoke else "world")
    t_world = time.perf_counter()
    world = build_world(world_dir, args.smoke, args.start, args.end, args.revisit)
    t_world = time.perf_counter() - t_world
    grid = tile_grid(world)
    read = ReadOptions(source="s2", bands=BANDS)
    start, end = dt.date.fromisoformat(world["start"]), dt.date.fromisoformat(world["end"])
    found = acquire.find_acquisitions(world["catalog"], read, grid, start,
                                      end - dt.timedelta(days=1))  # the flood is on the end day
    picked = acquire.pick_clear(found, read, grid, 0.5, 64)
    if args.smoke:
        steps = {"adam_steps": 40, "lbfgs_steps": 10}
        cc, ns, sigmas, tc = 16, (1, 2, 4), (2.0, 3.0), 24
    else:
        steps = {"adam_steps": 200, "lbfgs_steps": 60}
        cc, ns, sigmas, tc = args.curve_crop, (1, 2, 4, 8, 16, 32), (2.0, 3.0, 4.0, 5.0), \
            args.timing_crop
    opts = FitOptions(device=device, **steps)
    h, w = grid.height, grid.width
    r0, c0 = (h - cc) // 2, (w - cc) // 2
    crop = Crop(world, picked, r0, r0 + cc, c0, c0 + cc)
    border = 2 * crop.f
    avail = len(crop.dates)
    ns = sorted({min(n, avail) for n in ns})
    curve = []
    for n in ns:
        row = evaluate(crop, crop.subset(n), opts, border)
        curve.append(row)
        print(f"N={n:2d}  SR {row['psnr_sr']:.2f} dB / {row['ssim_sr']:.3f}   bicubic "
              f"{row['psnr_bicubic']:.2f} / {row['ssim_bicubic']:.3f}   nearest "
              f"{row['psnr_nearest']:.2f}   bicubic(mean) {row['psnr_bicubic_mean']:.2f}   "
              f"{row['seconds']:.1f}s", flush=True)
    n_psf = min(8, avail)
    psf = []
    for s in sigmas:
        row = evaluate(crop, crop.subset(n_psf), FitOptions(device=device, sigma_psf=s, **steps),
                       border)
        row = {"sigma_psf": s, **row}
        psf.append(row)
        print(f"sigma_psf={s}  SR {row['psnr_sr']:.2f} dB / {row['ssim_sr']:.3f}", flush=True)
    # timing crop: all acquisitions, shifts against the known ones and phase correlation
    timing: dict = {}
    if tc:
        tc = min(tc, h, w)
        tr0, tc0 = (h - tc) // 2, (w - tc) // 2
        big = Crop(world, picked, tr0, tr0 + tc, tc0, tc0 + tc)
        allidx = (big.subset(args.timing_acquisitions) if args.timing_acquisitions
                  else list(range(len(big.dates))))
        t0 = time.perf_counter()
        row = evaluate(big, allidx, opts, border)
        timing_s = time.perf_counter() - t0
        shifts = shift_stats(big, allidx, row["_fit"])
        evals = len(row["_fit"].losses)
        timing = {"crop_px": tc, "acquisitions": len(allidx), "seconds_fit": row["seconds"],
                  "seconds_total": round(timing_s, 2), "loss_evaluations": evals,
                  "seconds_per_evaluation": round(row["seconds"] / max(1, evals), 4),
                  **{k: row[k] for k in ("psnr_sr", "ssim_sr", "psnr_bicubic", "ssim_bicubic",
                                         "psnr_nearest", "psnr_bicubic_mean",
                                         "lbfgs_iterations", "lbfgs_evaluations")}}
        print(f"{tc}² crop, {len(allidx)} acquisitions: fit {row['seconds']:.1f}s "
              f"({evals} loss evaluations) on {device}; PSNR SR {row['psnr_sr']:.2f} vs "
              f"bicubic {row['psnr_bicubic']:.2f} dB", flush=True)
    else:  # shifts from the largest curve fit
        allidx = crop.subset(curve[-1]["n"])
        shifts = shift_stats(crop, allidx, curve[-1]["_fit"])
    for r in shifts:
        print(f"{r['pair']:24s} {r['axis']}: r = {r['pearson_r']:.3f}, MAD = "
              f"{r['mean_abs_dev_m']:.2f} m", flush=True)
    summary = {
        "machine": "2-core AMD EPYC (Zen 4), shared with other jobs" if device == "cpu"
        else torch.cuda.get_device_name(0),
        "device": device, "torch_threads": torch.get_num_threads(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "world": {"tile_px": grid.width, "acquisitions_clear_enough": len(picked),
                  "acquisitions_in_curve_crop": avail, "fine_resolution_m": 2.5,
                  "psf_sigma_m": world["fine"]["psf_sigma"],
                  "shift_std_m": world["fine"]["shift_std"], "build_seconds": round(t_world, 1)},
        "world_window": [world["start"], world["end"]], "curve_crop_px": cc,
        "shifts_from": f"{tc}² timing crop" if tc else f"{cc}² curve crop, N = {len(allidx)}",
        "fit": {**steps, "spacing_m": opts.spacing, "sigma_psf_m": opts.sigma_psf,
                "tv_weight": opts.tv_weight},
        "curve": [{k: v for k, v in r.items() if not k.startswith("_")} for r in curve],
        "psf_sweep": [{k: v for k, v in r.items() if not k.startswith("_")} for r in psf],
        "timing": timing,
        "shifts": shifts,
    }
    write_csv(args.out / "superres_curve.csv", curve)
    write_csv(args.out / "superres_psf.csv", psf)
    write_csv(args.out / "superres_shifts.csv", shifts)
    (args.out / "superres_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(args.out, curve, psf, curve[-1], crop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
