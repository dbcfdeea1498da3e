"""The one raster-reading path: assets → target grid, QA masks, reflectance, mosaics.

``terrastill chips`` and ``terrastill predict`` both read imagery only through this module,
so a model sees at inference exactly the tensors it was trained on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.env import hasenv
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box, shape

from terrastill.data.grid import GridSpec
from terrastill.data.pixelmap import pixel_map
from terrastill.errors import AssetReadError
from terrastill.io_http import call_with_retries, gdal_env, gdal_path, header_problem
from terrastill.retry import RetryPolicy
from terrastill.sources.base import SourceProfile

log = logging.getLogger(__name__)

_CRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _crs_of(src: rasterio.DatasetReader) -> tuple[int | None, str]:
    """(EPSG code, WKT) of an open dataset's CRS, worked out once per dataset: each lookup
    costs 20-40 µs, more than a small read from GDAL's block cache."""
    got = _CRS.get(src)
    if got is None:
        got = _CRS[src] = ((src.crs.to_epsg(), src.crs.to_wkt()) if src.crs is not None
                           else (None, ""))
    return got


def _aligned_window(src: rasterio.DatasetReader, grid: GridSpec) -> Window | None:
    """The source window equal to ``grid`` when both share CRS, resolution and pixel phase."""
    if _crs_of(src)[0] != grid.epsg:
        return None
    st, gt = src.transform, grid.transform
    if not (math.isclose(st.a, gt.a) and math.isclose(st.e, gt.e) and st.b == 0 and st.d == 0):
        return None
    col = (gt.c - st.c) / st.a
    row = (gt.f - st.f) / st.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return Window(round(col), round(row), grid.width, grid.height)


def _holds(dtype: np.dtype, value: float) -> bool:
    """Whether ``value`` (a fill/nodata value) is representable in ``dtype``."""
    if np.issubdtype(dtype, np.floating):
        return True
    if not np.isfinite(value) or value != int(value):
        return False
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def _covered_part(src: rasterio.DatasetReader, grid: GridSpec, todo: np.ndarray | None,
                  margin: int = 2) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) of the part of ``grid`` that the source raster can reach (its
    bounds in the grid's CRS plus a few pixels), shrunk to the ``todo`` pixels in it; None
    when nothing is left. Warping only that part gives the same pixels as warping the whole
    grid, at a fraction of the cost."""
    left, bottom, right, top = _bounds_in(_crs_of(src)[1], tuple(src.bounds), grid.epsg)
    inv = ~grid.transform
    c0, r0 = inv @ (left, top)
    c1, r1 = inv @ (right, bottom)
    r0, c0 = max(0, math.floor(r0) - margin), max(0, math.floor(c0) - margin)
    r1 = min(grid.height, math.ceil(r1) + margin)
    c1 = min(grid.width, math.ceil(c1) + margin)
    if r1 <= r0 or c1 <= c0:
        return None
    return _shrink(todo, r0, r1, c0, c1) if todo is not None else (r0, r1, c0, c1)


@lru_cache(maxsize=4096)
def _bounds_in(crs_wkt: str, bounds: tuple[float, float, float, float],
               epsg: int) -> tuple[float, float, float, float]:
    """A raster's bounds in another CRS (densified edges), once per raster and CRS."""
    return transform_bounds(crs_wkt, f"EPSG:{epsg}", *bounds, densify_pts=21)


def _shrink(todo: np.ndarray, r0: int, r1: int, c0: int,
            c1: int) -> tuple[int, int, int, int] | None:
    """The bounding box of the ``todo`` pixels inside rows [r0, r1) and columns [c0, c1)."""
    part = todo[r0:r1, c0:c1]
    rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
    if not rows.size:
        return None
    return r0 + rows[0], r0 + rows[-1] + 1, c0 + cols[0], c0 + cols[-1] + 1


def gdal_session() -> contextlib.AbstractContextManager:
    """A GDAL environment for a batch of reads (reused when one is already active)."""
    return contextlib.nullcontext() if hasenv() else rasterio.Env(**read_env())


def read_env() -> dict[str, str | int]:
    """GDAL options for reading: :func:`~terrastill.io_http.gdal_env`, and tiled files'
    tiles decoded on every core (``GDAL_NUM_THREADS=ALL_CPUS`` unless the environment
    variable says otherwise): a read that meets several tiles decodes them in parallel, the
    same pixels in a fraction of the time while the model waits for them."""
    env = gdal_env()
    if "GDAL_NUM_THREADS" not in os.environ:
        env["GDAL_NUM_THREADS"] = "ALL_CPUS"
    return env


MAX_OPEN_DATASETS = 512  # per thread; the least recently used is closed beyond it
OPENED_LOG_SIZE = 4096  # hrefs remembered by :func:`open_assets`, most recent last


class _OpenedLog:
    """Every thread's dataset opens since :func:`close_datasets`, most recent last (bounded):
    a prediction that reads ahead in another thread opens its files there."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hrefs: OrderedDict[str, None] = OrderedDict()

    def add(self, href: str) -> None:
        with self.lock:
            self.hrefs[href] = None
            self.hrefs.move_to_end(href)
            while len(self.hrefs) > OPENED_LOG_SIZE:
                self.hrefs.popitem(last=False)


_OPENED = _OpenedLog()


class _OpenDatasets(threading.local):
    """Per-thread LRU of open datasets: a scene asset is opened once, not once per chip."""

    size = MAX_OPEN_DATASETS

    def __init__(self) -> None:
        self.open: OrderedDict[str, rasterio.DatasetReader] = OrderedDict()

    def get(self, href: str) -> rasterio.DatasetReader:
        ds = self.open.pop(href, None)
        if ds is None or ds.closed:
            ds = rasterio.open(gdal_path(href))
            problem = header_problem(ds)
            if problem is not None:  # a truncated remote header: retried with a clean cache
                ds.close()
                raise RasterioIOError(f"{href}: {problem}")
            _OPENED.add(href)
        self.open[href] = ds
        while len(self.open) > self.size:
            self.open.popitem(last=False)[1].close()
        return ds

    def drop(self, href: str) -> None:
        ds = self.open.pop(href, None)
        if ds is not None:
            ds.close()


_DATASETS = _OpenDatasets()


def close_datasets() -> None:
    """Close this thread's open datasets (with GDAL's cached blocks of them), forget the
    reprojection pixel maps and start :func:`open_assets`'s record afresh: the next reads
    open and decode their files afresh, as in a new process. Long-lived processes can call it
    to give file handles back."""
    for href in list(_DATASETS.open):
        _DATASETS.drop(href)
    with _OPENED.lock:
        _OPENED.hrefs.clear()
    pixel_map.cache_clear()
    _gather.cache_clear()


def open_assets() -> list[str]:
    """The hrefs of the datasets opened since :func:`close_datasets`, by any thread (a
    prediction's read-ahead thread too), least recently opened first: which assets a run has
    read, for benchmarks and diagnostics (all of them while fewer than
    :data:`OPENED_LOG_SIZE`; beyond that, the most recent ones)."""
    with _OPENED.lock:
        return list(_OPENED.hrefs)


Box = tuple[int, int, int, int]  # rows [r0, r1) and columns [c0, c1) of a grid


def _read_once(href: str, read: Callable[..., Any], *args: Any) -> Any:
    """``read(dataset, *args)`` on ``href``'s open dataset; a failure closes it."""
    try:
        with gdal_session():
            return read(_DATASETS.get(href), *args)
    except (RasterioError, OSError):
        _DATASETS.drop(href)  # a retry reopens it
        raise


def _read_open(src: rasterio.DatasetReader, grid: GridSpec, resampling: Resampling,
               fill: float, band: int = 1, todo: np.ndarray | None = None) -> np.ndarray:
    """:func:`_read_part` placed on the whole grid (``fill`` elsewhere)."""
    got = _read_part(src, grid, resampling, fill, band, todo)
    if got is not None and got[0] == (0, grid.height, 0, grid.width):
        return got[1]
    out = np.full((grid.height, grid.width), fill, dtype=np.dtype(src.dtypes[band - 1]))
    if got is not None:
        (r0, r1, c0, c1), data = got
        out[r0:r1, c0:c1] = data
    return out


def _read_part(src: rasterio.DatasetReader, grid: GridSpec, resampling: Resampling,
               fill: float, band: int = 1,
               todo: np.ndarray | None = None) -> tuple[Box, np.ndarray] | None:
    """(box, data): ``band`` of ``src`` over the box of ``grid`` it can reach, shrunk to the
    bounding box of the ``todo`` pixels; pixels of the box it does not cover hold ``fill``.
    None when it reaches none of them. Callers work on the box, not on the whole grid."""
    dtype = np.dtype(src.dtypes[band - 1])
    if not _holds(dtype, fill):
        raise AssetReadError(f"{src.name}: data type {dtype} cannot hold nodata {fill} "
                             "(not the data type this source's profile expects)")
    win = _aligned_window(src, grid)
    if win is not None:
        # Fast path: same grid, so a plain windowed read of the overlapping part.
        r0, r1 = max(0, -win.row_off), min(grid.height, src.height - win.row_off)
        c0, c1 = max(0, -win.col_off), min(grid.width, src.width - win.col_off)
        box_: Box | None = (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None
        if box_ is not None and todo is not None:
            box_ = _shrink(todo, *box_)
        if box_ is None:
            return None
        r0, r1, c0, c1 = box_
        return box_, src.read(band, window=Window(c0 + win.col_off, r0 + win.row_off,
                                                  c1 - c0, r1 - r0))
    part = _covered_part(src, grid, todo)
    if part is None:
        return None
    r0, r1, c0, c1 = part
    if resampling == Resampling.nearest:
        return part, _read_nearest(src, grid, band, fill, dtype, part)
    # tiny tolerance: exact per-pixel transforms, so nearest picks the true pixel
    sub = grid.part(r0, r1, c0, c1)
    with WarpedVRT(src, crs=grid.crs, transform=sub.transform, width=sub.width,
                   height=sub.height, resampling=resampling, nodata=fill,
                   tolerance=1e-6,
                   src_nodata=src.nodata if src.nodata is not None else fill) as vrt:
        return part, vrt.read(band, out_dtype=dtype)


def _read_nearest(src: rasterio.DatasetReader, grid: GridSpec, band: int, fill: float,
                  dtype: np.dtype, part: Box) -> np.ndarray:
    """Nearest-neighbour reprojection of ``part`` of ``grid`` (an array of the part's shape,
    ``fill`` where the source does not reach): each pixel takes the source pixel containing
    its centre (the same pixel as GDAL's warper with a zero error threshold), through a
    :func:`~terrastill.data.pixelmap.pixel_map` computed once per source grid and a
    :func:`_gather` plan per part, both reused for every band and date sharing them."""
    full = _covered_part(src, grid, None)
    assert full is not None
    key = (_crs_of(src)[1], tuple(src.transform)[:6], src.width, src.height)
    plan = _gather(key, grid, full, part)
    shape = (part[1] - part[0], part[3] - part[2])
    if plan is None:
        return np.full(shape, fill, dtype=dtype)
    window, index, inside = plan
    values = src.read(band, window=window).ravel().take(index)
    nodata = src.nodata
    # nodata becomes ``fill``: nothing to do for whole numbers when they are the same value
    if nodata is not None and not (np.issubdtype(values.dtype, np.integer) and nodata == fill):
        hit = np.isnan(values) if np.isnan(nodata) else values == nodata
        np.copyto(values, np.asarray(fill, dtype=values.dtype), where=hit)
    if inside is None:
        return values.reshape(shape)
    out = np.full(shape, fill, dtype=dtype)
    out[inside] = values
    return out


@lru_cache(maxsize=8)  # a part's bands are read one after another
def _gather(key: tuple, grid: GridSpec, full: Box,
            part: Box) -> tuple[Window, np.ndarray, np.ndarray | None] | None:
    """How to read ``part`` of ``grid`` from the source ``key`` (see
    :func:`~terrastill.data.pixelmap.pixel_map`, over the ``full`` part it reaches): the source
    window holding every source pixel the part needs, the flat index in that window of each
    part pixel the source reaches (row-major), and the mask of those pixels (None when it
    reaches them all); None when it reaches none. Computed once per part: the bands and
    dates of one source grid read the same parts."""
    r0, r1, c0, c1 = part
    mr0, mc0, rows, cols = pixel_map(key, grid, full)
    rows = rows[r0 - mr0:r1 - mr0, c0 - mc0:c1 - mc0]
    cols = cols[r0 - mr0:r1 - mr0, c0 - mc0:c1 - mc0]
    inside = rows >= 0
    mask: np.ndarray | None = None
    if inside.all():
        sr, sc = rows.ravel(), cols.ravel()
    elif inside.any():
        sr, sc, mask = rows[inside], cols[inside], inside
    else:
        return None
    top, left = int(sr.min()), int(sc.min())
    width = int(sc.max()) - left + 1
    window = Window(left, top, width, int(sr.max()) - top + 1)
    index = (sr - top).astype(np.intp) * width + (sc - left)
    return window, index, mask


def read_asset(
    href: str,
    grid: GridSpec,
    fill: float,
    resampling: Resampling = Resampling.nearest,
    policy: RetryPolicy | None = None,
    band: int = 1,
    todo: np.ndarray | None = None,
) -> np.ndarray:
    """Read ``band`` of ``href`` onto ``grid``; pixels the asset does not cover get ``fill``.

    With a ``todo`` mask (the pixels a mosaic still needs), only the bounding box of the
    needed pixels the asset can reach is read; pixels outside it get ``fill`` too.

    Remote failures are retried with GDAL's cache of the asset cleared and the header checked
    (``terrastill.io_http``); a missing, corrupt or unreadable asset becomes an
    :class:`AssetReadError` naming it (``transient`` when it was only unreachable).
    """
    return call_with_retries(href, lambda: _read_once(
        href, _read_open, grid, resampling, fill, band, todo), retry=policy)


def read_asset_part(
    href: str,
    grid: GridSpec,
    fill: float,
    resampling: Resampling = Resampling.nearest,
    policy: RetryPolicy | None = None,
    band: int = 1,
    todo: np.ndarray | None = None,
) -> tuple[Box, np.ndarray] | None:
    """:func:`read_asset` limited to the box of ``grid`` that the asset reaches (and that
    holds ``todo`` pixels): ``((r0, r1, c0, c1), data)``, or None when it reaches nothing.
    Mosaics work on the box instead of the whole grid."""
    return call_with_retries(href, lambda: _read_once(
        href, _read_part, grid, resampling, fill, band, todo), retry=policy)


def read_whole(href: str, policy: RetryPolicy | None = None, band: int = 1) -> np.ndarray:
    """Read a whole band of ``href`` on its own grid, through the same open, retry and
    header checks as :func:`read_asset` (used by checks and reports, not by chips)."""

    def own_grid(src: rasterio.DatasetReader) -> np.ndarray:
        epsg = src.crs.to_epsg() if src.crs is not None else 4326
        grid = GridSpec(epsg, src.transform, src.width, src.height)
        return _read_open(src, grid, Resampling.nearest,
                          src.nodata if src.nodata is not None else 0, band)

    return call_with_retries(href, lambda: _read_once(href, own_grid), retry=policy)


@dataclass(frozen=True)
class Acquisition:
    """Items of one collection acquired on one day, mosaicked together (tile edges)."""

    collection: str
    date: str  # ISO date
    items: tuple[dict, ...]  # STAC item dicts, sorted by id

    @cached_property
    def key(self) -> str:
        return f"{self.collection}/{self.date}"

    @cached_property
    def day(self) -> dt.date:
        return dt.date.fromisoformat(self.date)

    @property
    def item_ids(self) -> list[str]:
        return [it["id"] for it in self.items]


@dataclass
class StepRead:
    """One acquisition read onto a grid: scaled, masked reflectance plus provenance."""

    data: np.ndarray  # (C, H, W) float32, NaN = masked / nodata / not covered
    invalid_fraction: float
    cloud_fraction: float
    acquisition: Acquisition
    hrefs: dict[str, list[str]] = field(default_factory=dict)
    filled_from: list[str] = field(default_factory=list)  # composites: the other dates used


def _item_epsg(props: dict) -> int | None:
    """The EPSG code of an item's grid from the projection extension (v1 or v2)."""
    if props.get("proj:epsg") is not None:
        return int(props["proj:epsg"])
    code = str(props.get("proj:code") or "")
    return int(code.split(":")[1]) if code.upper().startswith("EPSG:") else None


def _hrefs(acq: Acquisition, profile: SourceProfile, band: str,
           epsg: int | None = None) -> list[tuple[str, dict, dict]]:
    """(href, item properties, item) per item of the acquisition that carries ``band``, in
    mosaic order: items on the target grid's own CRS first (no resampling), then the others,
    each group in id order."""
    out = []
    items = sorted(acq.items, key=lambda it: (_item_epsg(it["properties"]) != epsg, it["id"]))
    for it in items:
        key = profile.asset_key(it["assets"], band)
        if key is not None:
            out.append((it["assets"][key]["href"], it["properties"], it))
    return out


def _check_footprint(href: str, item: dict) -> None:
    """Raise a (non-transient) :class:`AssetReadError` when the raster at ``href`` does not
    overlap its item's footprint at all: the item says it covers a place its asset does not
    (a wrong href, a mislabelled tile), which must not pass as "not covered"."""
    geometry = item.get("geometry")
    if not geometry:
        return
    problem = _footprint_problem(href, json.dumps(geometry, sort_keys=True))
    if problem:
        raise AssetReadError(f"{href}: asset of item {item.get('id')!r} {problem}")


@lru_cache(maxsize=4096)
def _footprint_problem(href: str, geometry_json: str) -> str:
    def bounds(src: rasterio.DatasetReader) -> tuple[float, float, float, float] | None:
        crs = _crs_of(src)[1]
        return _bounds_in(crs, tuple(src.bounds), 4326) if crs else None

    got = call_with_retries(href, lambda: _read_once(href, bounds))
    if got is None:
        return ""
    footprint = shape(json.loads(geometry_json))
    if box(*got).intersects(footprint):
        return ""
    fb = ", ".join(f"{v:.4f}" for v in footprint.bounds)
    return (f"does not overlap the item's footprint (raster bounds "
            f"{', '.join(f'{v:.4f}' for v in got)} vs footprint {fb}, lon/lat)")


def read_qa(acq: Acquisition, profile: SourceProfile, grid: GridSpec,
            mask_classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(invalid, cloud) boolean masks of an acquisition over ``grid``, mosaicking its items.

    ``invalid`` is true where no item covers the pixel, QA says nodata or a masked class;
    ``cloud`` is true where QA says a masked class (clouds, shadows, ...). Items are mosaicked
    first-valid-wins in mosaic order (see :func:`_hrefs`); once every pixel is covered the
    remaining items are not read. Sources without QA only get the coverage mask.
    """
    covered = np.zeros((grid.height, grid.width), dtype=bool)
    flagged = np.zeros_like(covered)
    qa_items = _hrefs(acq, profile, "qa", grid.epsg)
    if not qa_items:
        # No QA asset: coverage comes from the first band's nodata.
        first = profile.band_names[0]
        for href, _props, item in _hrefs(acq, profile, first, grid.epsg):
            if covered.all():
                break
            got = read_asset_part(href, grid, fill=_fill(profile), todo=~covered)
            if got is None:
                _check_footprint(href, item)
            else:
                box_, dn = got
                covered[_slices(box_)] |= _valid_dn(dn, profile)
        return ~covered, flagged
    qa_fill = profile.qa_nodata if profile.qa_nodata is not None else 0
    for href, _props, item in qa_items:
        if covered.all():
            break
        got = read_asset_part(href, grid, fill=qa_fill, todo=~covered)
        if got is None:
            _check_footprint(href, item)
            continue
        box_, qa = got
        cov = covered[_slices(box_)]  # views: updated in place
        here = (qa != qa_fill) & ~cov if profile.qa_nodata is not None else ~cov
        flagged[_slices(box_)] |= here & profile.invalid_mask(qa, mask_classes)
        cov |= here
    return ~covered | flagged, flagged


def _slices(box_: Box) -> tuple[slice, slice]:
    return slice(box_[0], box_[1]), slice(box_[2], box_[3])


def _fill(profile: SourceProfile) -> float:
    return profile.nodata if profile.nodata is not None else 0


def _valid_dn(dn: np.ndarray, profile: SourceProfile) -> np.ndarray:
    valid = np.ones(dn.shape, dtype=bool) if profile.nodata is None else dn != profile.nodata
    if np.issubdtype(dn.dtype, np.floating):
        valid &= np.isfinite(dn)
    return valid


def read_acquisition(
    acq: Acquisition,
    profile: SourceProfile,
    bands: Sequence[str],
    grid: GridSpec,
    mask_classes: Sequence[str],
    resampling: Resampling = Resampling.nearest,
    qa: tuple[np.ndarray, np.ndarray] | None = None,
    need: np.ndarray | None = None,
) -> StepRead:
    """Read ``bands`` of one acquisition onto ``grid`` as masked float32 reflectance.

    A pixel is NaN in every band when QA masks it, no item covers it, or any band is nodata
    there, so a pixel is either fully valid or fully missing. ``qa`` passes masks already
    computed by :func:`read_qa` (the acquisition choice reads them first). With ``need``,
    only those pixels are read (the others are NaN); masked pixels are never read.
    """
    invalid, cloud = qa if qa is not None else read_qa(acq, profile, grid, mask_classes)
    skip = invalid | ~need if need is not None else invalid  # NaN whatever the bands hold
    invalid = skip.copy()  # grows with every band's unfilled pixels
    todo = ~skip  # what each band reads from its first item
    anything = bool(todo.any())
    # every pixel left valid in the end was written by every band, the others become NaN
    out = np.empty((len(bands), grid.height, grid.width), dtype=np.float32)
    hrefs: dict[str, list[str]] = {}
    for b, band in enumerate(bands):
        filled: np.ndarray | None = None  # None: nothing filled yet (``skip``)
        hrefs[band] = []
        for href, props, item in _hrefs(acq, profile, band, grid.epsg):
            need_now = todo if filled is None else ~filled
            if not (anything if filled is None else need_now.any()):
                break  # the items left could only fill pixels that are already filled
            got = read_asset_part(href, grid, fill=_fill(profile), resampling=resampling,
                                  todo=need_now)
            hrefs[band].append(href)
            if got is None:
                _check_footprint(href, item)
                continue
            box_, dn = got
            here = _valid_dn(dn, profile)
            here &= need_now[_slices(box_)]
            if here.any():
                np.copyto(out[b][_slices(box_)], profile.to_reflectance(dn, props), where=here)
                if filled is None:
                    filled = skip.copy()
                filled[_slices(box_)] |= here
        if filled is None:
            invalid |= todo
        else:
            invalid |= ~filled
    hrefs["qa"] = [h for h, _props, _item in _hrefs(acq, profile, "qa", grid.epsg)]
    np.copyto(out, np.float32(np.nan), where=invalid)
    n = invalid.size
    return StepRead(out, np.count_nonzero(invalid) / n, np.count_nonzero(cloud) / n, acq,
                    hrefs)
