"""Target pixel grids: the chip grid snapped to the scene's native UTM grid, and AOI windows."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.crs import CRS as RioCRS
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone containing (lon, lat) (no Norway/Svalbard exceptions)."""
    zone = min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))
    return (32600 if lat >= 0 else 32700) + zone


@lru_cache(maxsize=64)
def _transformer(src: int, dst: int) -> Transformer:
    return Transformer.from_crs(CRS.from_epsg(src), CRS.from_epsg(dst), always_xy=True)


def to_crs(geom: BaseGeometry, src_epsg: int, dst_epsg: int) -> BaseGeometry:
    """Reproject a shapely geometry between two EPSG codes."""
    if src_epsg == dst_epsg:
        return geom
    return shapely.transform(geom, _transformer(src_epsg, dst_epsg).transform, interleaved=False)


@dataclass(frozen=True)
class GridSpec:
    """A north-up pixel grid: CRS, affine transform and size. Every read targets one."""

    epsg: int
    transform: Affine
    width: int
    height: int

    @property
    def crs(self) -> RioCRS:
        return RioCRS.from_epsg(self.epsg)

    @property
    def resolution(self) -> float:
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    def lonlat_bounds(self, densify: int = 8) -> tuple[float, float, float, float]:
        """The grid's footprint as a lon/lat bbox (densified edges)."""
        return _lonlat_bounds(self, densify)

    def part(self, row0: int, row1: int, col0: int, col1: int) -> GridSpec:
        """The sub-grid of rows [row0, row1) and columns [col0, col1), on the same pixels."""
        return GridSpec(self.epsg, self.transform @ Affine.translation(col0, row0),
                        col1 - col0, row1 - row0)

    def offset_of(self, grid: GridSpec) -> tuple[int, int] | None:
        """(row, col) of ``grid`` inside this grid when it lies on the same pixels, else None."""
        rt, gt = self.transform, grid.transform
        if self.epsg != grid.epsg or rt.a != gt.a or rt.e != gt.e:
            return None
        col = (gt.c - rt.c) / rt.a
        row = (gt.f - rt.f) / rt.e
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            return None
        r, c = round(row), round(col)
        if r < 0 or c < 0 or r + grid.height > self.height or c + grid.width > self.width:
            return None
        return r, c

    def pixel_of(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the pixel containing map coordinate (x, y)."""
        col, row = ~self.transform @ (x, y)
        return int(math.floor(row)), int(math.floor(col))

    def to_dict(self) -> dict:
        return {"epsg": self.epsg, "transform": list(self.transform)[:6],
                "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict) -> GridSpec:
        return cls(int(d["epsg"]), Affine(*d["transform"][:6]), int(d["width"]), int(d["height"]))


@dataclass(frozen=True)
class ChipGrid:
    """A regular grid of square chips (``size`` pixels of ``resolution`` m) in one UTM zone.

    Chip (col, row) covers x in [col·L, (col+1)·L) and y in [row·L, (row+1)·L) with
    L = size·resolution, so chip edges fall on the sensor's pixel grid, which is aligned to
    multiples of the resolution in UTM metres.
    """

    epsg: int
    size: int
    resolution: float

    @property
    def extent(self) -> float:
        return self.size * self.resolution

    def cell_of(self, x: float, y: float) -> tuple[int, int]:
        return int(math.floor(x / self.extent)), int(math.floor(y / self.extent))

    def spec(self, col: int, row: int) -> GridSpec:
        ext = self.extent
        t = Affine(self.resolution, 0.0, col * ext, 0.0, -self.resolution, (row + 1) * ext)
        return GridSpec(self.epsg, t, self.size, self.size)

    def cells_covering(self, geom_utm: BaseGeometry) -> list[tuple[int, int]]:
        """Every chip cell whose square intersects a geometry given in this grid's CRS."""
        minx, miny, maxx, maxy = geom_utm.bounds
        c0, r0 = self.cell_of(minx, miny)
        c1, r1 = self.cell_of(maxx, maxy)
        cells = []
        for row in range(r0, r1 + 1):
            for col in range(c0, c1 + 1):
                b = self.spec(col, row).bounds
                if geom_utm.intersects(box(*b)):
                    cells.append((col, row))
        return cells


def window_grid(
    aoi_utm: BaseGeometry, epsg: int, size: int, resolution: float, overlap: float
) -> tuple[GridSpec, list[GridSpec]]:
    """Sliding windows covering ``aoi_utm``: the output grid and the window grids inside it.

    The output grid is the AOI's bounds snapped outward to the pixel grid; windows of ``size``
    pixels step by ``size·(1-overlap)`` and the last row/column is shifted back to end at the
    grid edge, so every output pixel is covered and no window leaves the output grid
    (unless the AOI is smaller than one window, in which case the grid grows to one window).
    """
    if not 0 <= overlap < 1:
        raise ValueError("overlap must be in [0, 1)")
    res = resolution
    minx, miny, maxx, maxy = aoi_utm.bounds
    x0 = math.floor(minx / res) * res
    y1 = math.ceil(maxy / res) * res
    width = max(size, math.ceil((maxx - x0) / res))
    height = max(size, math.ceil((y1 - miny) / res))
    out = GridSpec(epsg, Affine(res, 0.0, x0, 0.0, -res, y1), width, height)
    stride = max(1, int(round(size * (1 - overlap))))

    def starts(n: int) -> list[int]:
        s = list(range(0, max(1, n - size + 1), stride))
        if s[-1] + size < n:
            s.append(n - size)
        return s

    windows = []
    for r in starts(height):
        for c in starts(width):
            t = Affine(res, 0.0, x0 + c * res, 0.0, -res, y1 - r * res)
            windows.append(GridSpec(epsg, t, size, size))
    return out, windows


def union_grid(grids: Sequence[GridSpec]) -> GridSpec:
    """The smallest grid on the first grid's pixels that covers every one of ``grids``."""
    b = [g.bounds for g in grids]
    minx, miny = min(v[0] for v in b), min(v[1] for v in b)
    maxx, maxy = max(v[2] for v in b), max(v[3] for v in b)
    res = grids[0].resolution
    return GridSpec(grids[0].epsg, Affine(res, 0, minx, 0, -res, maxy),
                    int(round((maxx - minx) / res)), int(round((maxy - miny) / res)))


_FOOTPRINTS: OrderedDict[tuple[GridSpec, int], tuple[float, float, float, float]] = OrderedDict()
_FOOTPRINTS_MAX = 8192


def _lonlat_bounds(grid: GridSpec, densify: int) -> tuple[float, float, float, float]:
    """Cached: prediction asks for each window's footprint more than once."""
    hit = _FOOTPRINTS.get((grid, densify))
    return hit if hit is not None else lonlat_bounds_many([grid], densify)[0]


def lonlat_bounds_many(grids: Sequence[GridSpec], densify: int = 8
                       ) -> list[tuple[float, float, float, float]]:
    """:meth:`GridSpec.lonlat_bounds` of many grids, with one reprojection call per CRS for
    those not cached yet (a prediction's windows: thousands). Each footprint is the same
    densified box through the same transformer as one at a time, so the floats are equal;
    the results are cached for later single calls."""
    out: list[tuple[float, float, float, float] | None] = [None] * len(grids)
    todo: dict[int, list[int]] = {}
    for i, g in enumerate(grids):
        out[i] = _FOOTPRINTS.get((g, densify))
        if out[i] is None:
            todo.setdefault(g.epsg, []).append(i)
    for epsg, idx in todo.items():
        b = np.array([grids[i].bounds for i in idx], np.float64)
        res = np.array([grids[i].resolution * densify for i in idx], np.float64)
        geoms = shapely.segmentize(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]), res)
        if epsg != 4326:
            geoms = shapely.transform(geoms, _transformer(epsg, 4326).transform,
                                      interleaved=False)
        for i, row in zip(idx, shapely.bounds(geoms).tolist(), strict=True):
            out[i] = (row[0], row[1], row[2], row[3])
            _FOOTPRINTS[(grids[i], densify)] = out[i]
    while len(_FOOTPRINTS) > _FOOTPRINTS_MAX:
        _FOOTPRINTS.popitem(last=False)
    return [o for o in out if o is not None]
