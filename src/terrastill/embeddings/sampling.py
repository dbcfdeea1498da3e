"""Random unlabelled windows for pretraining: places × dates through the chip read path.

Each window is a ``chip_size`` square on the scene's UTM pixel grid centred on a seeded random
point inside the AOI, read with :func:`terrastill.data.chips.read_chip` (the same acquisition
choice, cloud masking and scaling as ``terrastill chips`` and ``predict``) for a random last
date in [start + (T-1)·step, end]; windows without usable imagery (too cloudy, no item) are
skipped and counted. ``--images`` folders give one-step windows instead. The windows are
cached in the output folder (``windows.npz``) keyed by the request, so re-runs do not re-read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from terrastill.atomic import atomic_path
from terrastill.errors import AssetReadError, BadInputError, NoImageryError
from terrastill.progress import progress_bar

log = logging.getLogger(__name__)
CACHE_NAME = "windows.npz"


@dataclass
class Windows:
    """Sampled windows (N, T, C, H, W) float32 reflectance, NaN = nodata, and their story."""

    array: np.ndarray
    ids: list[str]
    dates: list[str]
    spec: dict[str, Any]  # the input spec the windows were read with (no mean/std)
    attempted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def stats(self) -> tuple[list[float], list[float]]:
        """Per-band mean and std over every window, step and valid pixel (NaN-aware)."""
        return band_stats(self.array)

    def summary(self) -> dict[str, Any]:
        return {"samples": len(self.ids), "attempted": self.attempted,
                "rejected": dict(self.rejected), "source": self.spec.get("source")}


def band_stats(array: np.ndarray) -> tuple[list[float], list[float]]:
    """NaN-aware per-band mean/std of an (N, T, C, H, W) stack (std 1 where undefined)."""
    c = array.shape[2]
    flat = np.moveaxis(array, 2, 0).reshape(c, -1).astype(np.float64)
    n = np.isfinite(flat).sum(axis=1)
    if (n == 0).any():
        band = int(np.flatnonzero(n == 0)[0])
        raise BadInputError(f"band {band} has no valid pixel in any sampled window")
    mean = np.nansum(flat, axis=1) / n
    var = np.nansum((flat - mean[:, None]) ** 2, axis=1) / np.maximum(n - 1, 1)
    std = np.sqrt(var)
    std = np.where(std > 0, std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


@dataclass(frozen=True)
class SampleRequest:
    """Where and when to sample, how to read, and how many windows to keep."""

    catalog: str
    aois: tuple[BaseGeometry, ...]
    start: dt.date
    end: dt.date
    read: Any  # terrastill.data.chips.ReadOptions
    chip_size: int
    samples: int
    seed: int = 0
    max_attempts: int | None = None

    def key(self) -> str:
        """A digest of everything that determines the windows (the cache key)."""
        body = {"catalog": str(Path(self.catalog).resolve()) if "://" not in self.catalog
                else self.catalog, "aois": [a.wkt for a in self.aois],
                "start": self.start.isoformat(), "end": self.end.isoformat(),
                "read": self.read.to_dict(), "chip_size": self.chip_size,
                "samples": self.samples, "seed": self.seed, "max_attempts": self.max_attempts}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_dates(start: dt.date, end: dt.date, num_steps: int, step_days: int) -> dt.date:
    """The first possible last date of a window; refuses an empty or too short range."""
    if start > end:
        raise BadInputError(f"--start {start} is after --end {end}")
    first = start + dt.timedelta(days=step_days * (num_steps - 1))
    if first > end:
        raise BadInputError(f"--start {start} --end {end}: too short for {num_steps} steps "
                            f"{step_days} days apart (needs {step_days * (num_steps - 1)} days)")
    return first


def _random_point(rng: np.random.Generator, geom: BaseGeometry) -> Point:
    minx, miny, maxx, maxy = geom.bounds
    for _ in range(1000):
        p = Point(rng.uniform(minx, maxx), rng.uniform(miny, maxy))
        if geom.contains(p):
            return p
    return geom.representative_point()


def window_at(point: Point, epsg: int, size: int, resolution: float) -> Any:
    """The ``size`` px window on the UTM pixel grid (multiples of the resolution) centred on
    ``point`` (given in that zone's CRS)."""
    from terrastill.data.grid import GridSpec

    col = int(np.floor(point.x / resolution)) - size // 2
    row = int(np.floor(point.y / resolution)) + (size - size // 2)
    return GridSpec(epsg, Affine(resolution, 0.0, col * resolution, 0.0, -resolution,
                                 row * resolution), size, size)


def sample_windows(req: SampleRequest,
                   on_window: Callable[[int, int], None] | None = None) -> Windows:
    """Read up to ``req.samples`` random windows (see the module docstring)."""
    from terrastill.catalog import Search, open_catalog
    from terrastill.data.chips import items_over, read_chip
    from terrastill.data.plan import catalog_collections
    from terrastill.inference.aoi import split_by_zone, validate_aois

    read = req.read
    temporal = read.temporal
    first = check_dates(req.start, req.end, temporal.num_steps, temporal.temporal_step)
    if req.samples < 1:
        raise BadInputError(f"--samples {req.samples}: expected at least 1")
    aois = validate_aois(list(req.aois), float("inf"))
    cat = open_catalog(str(req.catalog))
    collections = catalog_collections(cat, read)
    res = float(read.profile.resolution)
    lo, hi = temporal.search_window(first)[0], req.end + dt.timedelta(
        days=temporal.temporal_tolerance)
    zones = []
    for epsg, piece in split_by_zone(aois):
        from terrastill.data.grid import to_crs

        bounds = to_crs(piece, epsg, 4326).bounds
        s = Search(collections, bounds, dt.datetime.combine(lo, dt.time.min, tzinfo=dt.UTC),
                   dt.datetime.combine(hi, dt.time.max, tzinfo=dt.UTC))
        zones.append((epsg, piece, [it.to_dict(transform_hrefs=False) for it in cat.search(s)]))
    if not any(z[2] for z in zones):
        raise NoImageryError(f"{req.catalog}: no {read.profile.name.upper()} item over the AOI "
                             f"between {lo} and {hi}")
    area = np.array([z[1].area for z in zones], dtype=np.float64)
    rng = np.random.default_rng(req.seed)
    days = (req.end - first).days + 1
    attempts = req.max_attempts or max(20, 10 * req.samples)
    arrays, ids, dates = [], [], []
    rejected: Counter[str] = Counter()
    first_reason = ""
    tried = 0
    with progress_bar("windows") as bar:
        task = bar.add_task("sampling windows", total=req.samples)
        while len(arrays) < req.samples and tried < attempts:
            tried += 1
            epsg, piece, items = zones[int(rng.choice(len(zones), p=area / area.sum()))]
            grid = window_at(_random_point(rng, piece), epsg, req.chip_size, res)
            last = first + dt.timedelta(days=int(rng.integers(days)))
            try:
                chip = read_chip(grid, last, items_over(items, grid), read)
            except NoImageryError as exc:
                rejected["no usable imagery (too cloudy or none)"] += 1
                first_reason = first_reason or str(exc)
                continue
            except AssetReadError as exc:
                if exc.transient:
                    raise
                rejected["unreadable asset"] += 1
                first_reason = first_reason or str(exc)
                continue
            arrays.append(chip.array.astype(np.float32))
            x0, y1 = grid.transform.c, grid.transform.f
            ids.append(f"{epsg}_{int(x0)}_{int(y1)}_{last:%Y%m%d}")
            dates.append(last.isoformat())
            bar.advance(task)
            if on_window:
                on_window(len(arrays), tried)
    if not arrays:
        raise NoImageryError(f"no usable window in {tried} tries over the AOI between "
                             f"{req.start} and {req.end}: {first_reason}")
    if len(arrays) < req.samples:
        log.warning("kept %d of %d windows after %d tries (%s)", len(arrays), req.samples,
                    tried, ", ".join(f"{k}: {v}" for k, v in rejected.items()))
    spec = {**read.to_dict(), "chip_size": int(req.chip_size), "resolution": res,
            "catalog": str(req.catalog)}
    return Windows(np.stack(arrays), ids, dates, spec, tried, dict(rejected))


def image_windows(spec: str | os.PathLike[str], bands: Sequence[str] | None = None,
                  image_bands: str | None = None, scale: float = 1.0,
                  patch: int | None = None) -> Windows:
    """Every image of a folder or glob as a one-step window (all the same size)."""
    import rasterio

    from terrastill.embeddings.images import (
        canonical_name,
        file_band_names,
        list_images,
        parse_band_names,
        read_image,
    )

    records = list_images(spec)
    given = parse_band_names(image_bands)
    names = file_band_names(records[0].path, given)
    wanted = [canonical_name(b) for b in bands] if bands else names
    with rasterio.open(records[0].path) as src:
        height, width, res = src.height, src.width, float(src.res[0])
        projected = bool(src.crs and src.crs.is_projected)
    if height != width:
        raise BadInputError(f"{records[0].path}: {width}×{height} px; pretraining needs square "
                            "images")
    if patch and height % patch:
        raise BadInputError(f"{records[0].path}: images are {height} px, not a multiple of the "
                            f"model's patch size {patch}")
    arrays, dates = [], []
    with progress_bar("images") as bar:
        task = bar.add_task("reading images", total=len(records))
        for rec in records:
            img = read_image(rec, wanted, given, scale)
            if img.array.shape[1:] != (height, width):
                raise BadInputError(f"{rec.path}: {img.array.shape[2]}×{img.array.shape[1]} px, "
                                    f"the first image is {width}×{height}")
            arrays.append(img.array[None])
            dates.append(img.date or "")
            bar.advance(task)
    spec_out = {"source": "images", "bands": list(wanted), "num_steps": 1,
                "chip_size": int(height), "resolution": res if projected else None,
                "image_bands": image_bands, "scale": float(scale), "images": str(spec)}
    return Windows(np.stack(arrays), [r.id for r in records], dates, spec_out, len(records), {})


def cached_windows(out_dir: Path, key: str, make: Callable[[], Windows]) -> Windows:
    """``make()`` unless ``out_dir/windows.npz`` holds the windows of the same ``key``."""
    path = out_dir / CACHE_NAME
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("key") == key:
                    log.info("reusing the %d windows cached in %s", len(meta["ids"]), path)
                    return Windows(z["array"], meta["ids"], meta["dates"], meta["spec"],
                                   meta["attempted"], meta["rejected"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring an unreadable window cache %s (%s)", path, exc)
    got = make()
    meta = {"key": key, "ids": got.ids, "dates": got.dates, "spec": got.spec,
            "attempted": got.attempted, "rejected": got.rejected}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, array=got.array, meta=np.array(json.dumps(meta)))
    return got


def images_key(spec: str, bands: Sequence[str] | None, image_bands: str | None,
               scale: float) -> str:
    """The cache key of an image folder: file paths, sizes and times, and the read options."""
    from terrastill.embeddings.images import list_images

    files = [(str(r.path), r.path.stat().st_size, r.path.stat().st_mtime_ns)
             for r in list_images(spec)]
    body = {"files": files, "bands": list(bands or []), "image_bands": image_bands,
            "scale": scale}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
