"""The ``superres`` pipeline: pick clear acquisitions, fit crop by crop, blend, write."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from terrastill import __version__
from terrastill.atomic import write_text_atomic
from terrastill.data.chips import ReadOptions
from terrastill.data.grid import GridSpec
from terrastill.errors import BadInputError, NoImageryError
from terrastill.superres import acquire, output, tiling
from terrastill.superres.fit import FitOptions, estimate_bytes, fit, resolve_device
from terrastill.superres.shifts import phase_shifts

log = logging.getLogger(__name__)
GIB = 2**30


@dataclass(frozen=True)
class SuperresRequest:
    """Everything one ``terrastill superres`` run needs."""

    catalog: str
    bbox: tuple[float, float, float, float]
    start: dt.date
    end: dt.date
    out: Path
    bands: tuple[str, ...] = ("red", "green", "blue", "nir")
    source: str = "s2"
    factor: int = 4
    max_acquisitions: int = 32
    max_cloud: float = 50.0  # percent of the area masked
    min_valid: float = 0.2  # share of a crop's pixels an acquisition must have to enter it
    crop: int = 256
    overlap: int = 16
    memory_limit_gb: float = 8.0
    device: str = "auto"
    fit: FitOptions = dataclasses.field(default_factory=FitOptions)

    @property
    def shifts_csv(self) -> Path:
        return self.out.with_name(self.out.stem + "_shifts.csv")


def check_memory(req: SuperresRequest, acquisitions: int, grid: GridSpec) -> int:
    """Bytes one crop's fit plus the output mosaic need; a clear error over the limit."""
    h, w = min(req.crop, grid.height), min(req.crop, grid.width)
    per_crop = estimate_bytes((acquisitions, len(req.bands), h, w), grid.resolution, req.fit,
                              req.factor)
    mosaic = 4 * (len(req.bands) + 1) * grid.height * grid.width * req.factor**2
    need = per_crop + mosaic
    limit = req.memory_limit_gb * GIB
    if need > limit:
        raise BadInputError(
            f"--factor {req.factor} / --splat-spacing {req.fit.spacing:g} m over "
            f"{grid.width}x{grid.height} px ({acquisitions} acquisitions, --crop {req.crop}) "
            f"needs about {need / GIB:.1f} GiB ({per_crop / GIB:.1f} GiB per crop fit, "
            f"{mosaic / GIB:.1f} GiB for the output), over the --memory-limit of "
            f"{req.memory_limit_gb:g} GiB: use a larger spacing, a smaller crop, factor or area")
    return need


def superres(req: SuperresRequest, progress: Callable[[int, int, str], None] | None = None,
             ) -> dict[str, Any]:
    """Run the whole request; return a summary (also written beside the COG as JSON)."""
    t_start = time.perf_counter()
    if req.factor < 1:
        raise BadInputError(f"--factor {req.factor}: expected a positive integer")
    if req.fit.spacing <= 0:
        raise BadInputError(f"--splat-spacing {req.fit.spacing}: expected metres > 0")
    device = str(resolve_device(req.device))
    opts = dataclasses.replace(req.fit, device=device)
    read = ReadOptions(source=req.source, bands=tuple(req.bands))
    bands = read.resolved_bands()
    grid = acquire.area_grid(req.bbox, read.profile.resolution)
    found = acquire.find_acquisitions(req.catalog, read, grid, req.start, req.end)
    picked = acquire.pick_clear(found, read, grid, req.max_cloud / 100.0, req.max_acquisitions)
    if len(picked) < 2:
        raise BadInputError(
            f"only {len(picked)} usable acquisition(s) of {len(found)} between {req.start} and "
            f"{req.end} with at most {req.max_cloud:g} % of the area masked: super-resolution "
            "needs at least 2 (widen the dates or raise --max-cloud)")
    check_memory(req, len(picked), grid)
    f = req.factor
    acc = np.zeros((len(bands), grid.height * f, grid.width * f), dtype=np.float32)
    wsum = np.zeros((grid.height * f, grid.width * f), dtype=np.float32)
    boxes = tiling.crops(grid.height, grid.width, req.crop, req.overlap)
    steps = opts.adam_steps + opts.lbfgs_steps
    rows: list[dict] = []
    skipped = 0
    fit_seconds: list[float] = []
    for ci, (r0, r1, c0, c1) in enumerate(boxes):
        cg = grid.part(r0, r1, c0, c1)
        stack = acquire.read_stack(picked, read, cg)
        valid = np.isfinite(stack).all(axis=1).reshape(len(picked), -1).mean(axis=1)
        use = np.flatnonzero(valid >= req.min_valid)
        if len(use) < 2:
            skipped += 1
            log.warning("crop %d (rows %d-%d, cols %d-%d): %d acquisition(s) with >= %.0f %% "
                        "valid pixels, skipped", ci, r0, r1, c0, c1, len(use),
                        100 * req.min_valid)
            if progress is not None:
                progress((ci + 1) * steps, len(boxes) * steps, f"crop {ci + 1}/{len(boxes)}")
            continue
        sub = stack[use]
        pc = phase_shifts(sub, grid.resolution)

        def tick(done: int, total: int, ci: int = ci) -> None:
            if progress is not None:
                progress(ci * steps + done, len(boxes) * steps, f"crop {ci + 1}/{len(boxes)}")

        res = fit(sub, grid.resolution, opts,
                  init_shifts=pc if opts.shift_init == "phase" else None, progress=tick)
        fit_seconds.append(res.seconds)
        fine = res.render_fine(f)
        wt = tiling.taper(fine.shape[1], fine.shape[2], req.overlap * f // 2)
        acc[:, r0 * f:r1 * f, c0 * f:c1 * f] += fine * wt
        wsum[r0 * f:r1 * f, c0 * f:c1 * f] += wt
        for k, i in enumerate(use):
            acq = picked[i].acquisition
            rows.append({"crop": ci, "row0": r0, "col0": c0, "date": acq.date,
                         "collection": acq.collection, "items": ";".join(acq.item_ids),
                         "valid_fraction": float(valid[i]), "dx_m": float(res.shifts[k, 0]),
                         "dy_m": float(res.shifts[k, 1]), "pc_dx_m": float(pc[k, 0]),
                         "pc_dy_m": float(pc[k, 1])})
    if skipped == len(boxes):
        raise NoImageryError(f"no crop had 2 acquisitions with >= {100 * req.min_valid:.0f} % "
                             "valid pixels (lower --min-valid or widen the dates)")
    with np.errstate(invalid="ignore", divide="ignore"):
        scene = np.where(wsum > 0, acc / np.maximum(wsum, 1e-12), np.nan).astype(np.float32)
    del acc
    fine_grid = GridSpec(grid.epsg, grid.transform @ Affine.scale(1.0 / f),
                         grid.width * f, grid.height * f)
    params = {"factor": f, "sigma_psf": opts.sigma_psf, "splat_spacing": opts.spacing,
              "sigma_splat": opts.splat_sigma, "adam_steps": opts.adam_steps,
              "lbfgs_steps": opts.lbfgs_steps, "tv_weight": opts.tv_weight,
              "shift_init": opts.shift_init, "crop": req.crop, "overlap": req.overlap,
              "device": device}
    dates = [p.acquisition.date for p in picked]
    output.write_cog(req.out, scene, fine_grid, bands, {
        "software": f"terrastill {__version__}", "dates": " ".join(dates),
        "parameters": json.dumps(params, sort_keys=True), "scale": "1 (reflectance)"})
    output.write_shifts(req.shifts_csv, rows)
    summary = {"out": str(req.out), "shifts": str(req.shifts_csv), "grid": fine_grid.to_dict(),
               "acquisitions": dates, "crops": len(boxes), "skipped_crops": skipped,
               "parameters": params, "fit_seconds": [round(s, 3) for s in fit_seconds],
               "seconds": round(time.perf_counter() - t_start, 3)}
    write_text_atomic(req.out.with_name(req.out.stem + ".json"), json.dumps(summary, indent=2))
    return summary


def parse_bands(text: str | Sequence[str]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out = tuple(b.strip() for b in items if b.strip())
    if not out:
        raise BadInputError("--bands: expected names like red,green,blue,nir")
    return out
