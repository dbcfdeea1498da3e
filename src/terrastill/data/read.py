"""The one raster-reading path: assets → target grid, QA masks, reflectance, mosaics.

``terrastill chips`` and ``terrastill predict`` both read imagery only through this module,
so a model sees at inference exactly the tensors it was trained on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.env import hasenv
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from terrastill.data.grid import GridSpec
from terrastill.errors import AssetReadError
from terrastill.io_http import call_with_retries, gdal_env, gdal_path, header_problem
from terrastill.retry import RetryPolicy
from terrastill.sources.base import SourceProfile

log = logging.getLogger(__name__)

def _aligned_window(src: rasterio.DatasetReader, grid: GridSpec) -> Window | None:
    """The source window equal to ``grid`` when both share CRS, resolution and pixel phase."""
    if src.crs is None or src.crs.to_epsg() != grid.epsg:
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


def _overlaps(src: rasterio.DatasetReader, grid: GridSpec) -> bool:
    """Whether ``grid``'s footprint (in the source CRS) touches the source raster."""
    left, b, r, t = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=8)
    sb = src.bounds
    return left < sb.right and r > sb.left and b < sb.top and t > sb.bottom


def gdal_session() -> contextlib.AbstractContextManager:
    """A GDAL environment for a batch of reads (reused when one is already active)."""
    return contextlib.nullcontext() if hasenv() else rasterio.Env(**gdal_env())


class _OpenDatasets(threading.local):
    """Per-thread LRU of open datasets: a scene asset is opened once, not once per chip."""

    size = 512

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
        self.open[href] = ds
        while len(self.open) > self.size:
            self.open.popitem(last=False)[1].close()
        return ds

    def drop(self, href: str) -> None:
        ds = self.open.pop(href, None)
        if ds is not None:
            ds.close()


_DATASETS = _OpenDatasets()


def _read_once(href: str, grid: GridSpec, resampling: Resampling, fill: float,
               band: int = 1) -> np.ndarray:
    try:
        with gdal_session():
            return _read_open(_DATASETS.get(href), grid, resampling, fill, band)
    except (RasterioError, OSError):
        _DATASETS.drop(href)  # a retry reopens it
        raise


def _read_open(src: rasterio.DatasetReader, grid: GridSpec, resampling: Resampling,
               fill: float, band: int = 1) -> np.ndarray:
    dtype = np.dtype(src.dtypes[band - 1])
    if not _holds(dtype, fill):
        raise AssetReadError(f"{src.name}: data type {dtype} cannot hold nodata {fill} "
                             "(not the data type this source's profile expects)")
    out = np.full((grid.height, grid.width), fill, dtype=dtype)
    win = _aligned_window(src, grid)
    if win is not None:
        # Fast path: same grid, so a plain windowed read of the overlapping part.
        c0, r0 = max(0, win.col_off), max(0, win.row_off)
        c1 = min(src.width, win.col_off + win.width)
        r1 = min(src.height, win.row_off + win.height)
        if c1 > c0 and r1 > r0:
            part = src.read(band, window=Window(c0, r0, c1 - c0, r1 - r0))
            oc, orow = c0 - win.col_off, r0 - win.row_off
            out[orow:orow + part.shape[0], oc:oc + part.shape[1]] = part
        return out
    if not _overlaps(src, grid):
        return out
    # tiny tolerance: exact per-pixel transforms, so nearest picks the true pixel
    with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                   height=grid.height, resampling=resampling, nodata=fill, tolerance=1e-6,
                   src_nodata=src.nodata if src.nodata is not None else fill) as vrt:
        return vrt.read(band, out_dtype=dtype)


def read_asset(
    href: str,
    grid: GridSpec,
    fill: float,
    resampling: Resampling = Resampling.nearest,
    policy: RetryPolicy | None = None,
    band: int = 1,
) -> np.ndarray:
    """Read ``band`` of ``href`` onto ``grid``; pixels the asset does not cover get ``fill``.

    Remote failures are retried with GDAL's cache of the asset cleared and the header checked
    (``terrastill.io_http``); a missing, corrupt or unreadable asset becomes an
    :class:`AssetReadError` naming it (``transient`` when it was only unreachable).
    """
    region = _REGION.grid
    if region is not None and (off := _offset_in(region, grid)) is not None:
        key = (href, band, float(fill), int(resampling))
        whole = _REGION.cache.get(key)
        if whole is None:
            whole = call_with_retries(
                href, lambda: _read_once(href, region, resampling, fill, band), retry=policy)
            _REGION.cache[key] = whole
        r, c = off
        return whole[r:r + grid.height, c:c + grid.width].copy()
    return call_with_retries(href, lambda: _read_once(href, grid, resampling, fill, band),
                             retry=policy)


class _Region(threading.local):
    grid: GridSpec | None = None
    cache: dict = {}  # noqa: RUF012 - replaced per region


_REGION = _Region()


@contextlib.contextmanager
def read_region(grid: GridSpec) -> Iterator[None]:
    """Within this block, reads of grids lying on ``grid``'s pixels are cut from one read of
    ``grid`` per asset (neighbouring prediction windows share their reads). The values are
    those of a direct read: same pixel centres, same nearest-neighbour source pixels."""
    prev = (_REGION.grid, _REGION.cache)
    _REGION.grid, _REGION.cache = grid, {}
    try:
        yield
    finally:
        _REGION.grid, _REGION.cache = prev


def _offset_in(region: GridSpec, grid: GridSpec) -> tuple[int, int] | None:
    """(row, col) of ``grid`` inside ``region`` when it lies on the same pixels, else None."""
    rt, gt = region.transform, grid.transform
    if region.epsg != grid.epsg or rt.a != gt.a or rt.e != gt.e:
        return None
    col = (gt.c - rt.c) / rt.a
    row = (gt.f - rt.f) / rt.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    r, c = round(row), round(col)
    if r < 0 or c < 0 or r + grid.height > region.height or c + grid.width > region.width:
        return None
    return r, c


def read_whole(href: str, policy: RetryPolicy | None = None, band: int = 1) -> np.ndarray:
    """Read a whole band of ``href`` on its own grid, through the same open, retry and
    header checks as :func:`read_asset` (used by checks and reports, not by chips)."""

    def once() -> np.ndarray:
        try:
            with gdal_session():
                src = _DATASETS.get(href)
                epsg = src.crs.to_epsg() if src.crs is not None else 4326
                grid = GridSpec(epsg, src.transform, src.width, src.height)
                fill = src.nodata if src.nodata is not None else 0
                return _read_open(src, grid, Resampling.nearest, fill, band)
        except (RasterioError, OSError):
            _DATASETS.drop(href)
            raise

    return call_with_retries(href, once, retry=policy)


@dataclass(frozen=True)
class Acquisition:
    """Items of one collection acquired on one day, mosaicked together (tile edges)."""

    collection: str
    date: str  # ISO date
    items: tuple[dict, ...]  # STAC item dicts, sorted by id

    @property
    def key(self) -> str:
        return f"{self.collection}/{self.date}"

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


def _item_epsg(props: dict) -> int | None:
    """The EPSG code of an item's grid from the projection extension (v1 or v2)."""
    if props.get("proj:epsg") is not None:
        return int(props["proj:epsg"])
    code = str(props.get("proj:code") or "")
    return int(code.split(":")[1]) if code.upper().startswith("EPSG:") else None


def _hrefs(acq: Acquisition, profile: SourceProfile, band: str,
           epsg: int | None = None) -> list[tuple[str, dict]]:
    """(href, item properties) per item of the acquisition that carries ``band``, in mosaic
    order: items on the target grid's own CRS first (no resampling), then the others, each
    group in id order."""
    out = []
    items = sorted(acq.items, key=lambda it: (_item_epsg(it["properties"]) != epsg, it["id"]))
    for it in items:
        key = profile.asset_key(it["assets"], band)
        if key is not None:
            out.append((it["assets"][key]["href"], it["properties"]))
    return out


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
        for href, _props in _hrefs(acq, profile, first, grid.epsg):
            if covered.all():
                break
            dn = read_asset(href, grid, fill=_fill(profile))
            covered |= _valid_dn(dn, profile)
        return ~covered, flagged
    qa_fill = profile.qa_nodata if profile.qa_nodata is not None else 0
    for href, _props in qa_items:
        if covered.all():
            break
        qa = read_asset(href, grid, fill=qa_fill)
        here = (qa != qa_fill) & ~covered if profile.qa_nodata is not None else ~covered
        bad = profile.invalid_mask(qa, mask_classes)
        flagged |= here & bad
        covered |= here
    return ~covered | flagged, flagged


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
) -> StepRead:
    """Read ``bands`` of one acquisition onto ``grid`` as masked float32 reflectance.

    A pixel is NaN in every band when QA masks it, no item covers it, or any band is nodata
    there, so a pixel is either fully valid or fully missing. ``qa`` passes masks already
    computed by :func:`read_qa` (the acquisition choice reads them first).
    """
    invalid, cloud = qa if qa is not None else read_qa(acq, profile, grid, mask_classes)
    out = np.full((len(bands), grid.height, grid.width), np.nan, dtype=np.float32)
    hrefs: dict[str, list[str]] = {}
    for b, band in enumerate(bands):
        filled = np.zeros((grid.height, grid.width), dtype=bool)
        hrefs[band] = []
        for href, props in _hrefs(acq, profile, band, grid.epsg):
            if filled.all():
                break  # the items left could only fill pixels that are already filled
            dn = read_asset(href, grid, fill=_fill(profile), resampling=resampling)
            here = _valid_dn(dn, profile) & ~filled
            if here.any():
                refl = profile.to_reflectance(dn, props)
                out[b][here] = refl[here]
                filled |= here
            hrefs[band].append(href)
        invalid = invalid | ~filled
    hrefs["qa"] = [h for h, _props in _hrefs(acq, profile, "qa", grid.epsg)]
    out[:, invalid] = np.nan
    n = invalid.size
    return StepRead(out, float(invalid.sum()) / n, float(cloud.sum()) / n, acq, hrefs)
