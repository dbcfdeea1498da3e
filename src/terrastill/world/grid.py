"""UTM zones and MGRS-like tiles: aligned pixel grids, overlapping neighbours, two zones."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from affine import Affine
from pyproj import Transformer

from terrastill.world.config import WorldConfig

_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWXX"
_COL_SETS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")  # by zone % 3
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"

# Kilometres per degree in the local frame (equirectangular about the region centre).
KM_PER_DEG_LAT = 110.574
KM_PER_DEG_LON_EQ = 111.320


def utm_zone(lon: float) -> int:
    return int(math.floor((lon + 180.0) / 6.0)) % 60 + 1


def utm_epsg(zone: int, lat: float) -> int:
    return (32600 if lat >= 0 else 32700) + zone


def latitude_band(lat: float) -> str:
    return _LAT_BANDS[max(0, min(20, int(math.floor((lat + 80.0) / 8.0))))]


def grid_square(zone: int, easting: float, northing: float) -> str:
    """The MGRS 100 km grid-square letters of a UTM coordinate (AA lettering scheme)."""
    col = _COL_SETS[zone % 3][max(0, min(7, int(easting // 100_000) - 1))]
    row_idx = int(northing // 100_000) % 20
    if zone % 2 == 0:
        row_idx = (row_idx + 5) % 20
    return col + _ROW_LETTERS[row_idx]


@dataclass(frozen=True)
class LocalFrame:
    """Kilometres east/north of the region centre: the frame every truth function uses."""

    lon0: float
    lat0: float

    def to_km(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kx = KM_PER_DEG_LON_EQ * math.cos(math.radians(self.lat0))
        dlon = (np.asarray(lon) - self.lon0 + 180.0) % 360.0 - 180.0  # across the antimeridian
        return dlon * kx, (np.asarray(lat) - self.lat0) * KM_PER_DEG_LAT

    def to_lonlat(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kx = KM_PER_DEG_LON_EQ * math.cos(math.radians(self.lat0))
        return self.lon0 + np.asarray(x) / kx, self.lat0 + np.asarray(y) / KM_PER_DEG_LAT


@dataclass(frozen=True)
class Tile:
    """One MGRS-like tile: a window of its zone's grid."""

    id: str
    epsg: int
    zone: int
    latitude_band: str
    grid_square: str
    row_off: int  # in the zone grid, native-resolution pixels
    col_off: int
    size: int
    resolution: float
    x0: float  # upper-left corner, UTM metres
    y0: float

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        ext = self.size * self.resolution
        return (self.x0, self.y0 - ext, self.x0 + ext, self.y0)

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """The tile's footprint bbox in lon/lat (edges densified)."""
        lon, lat = self.footprint()
        return (float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat)))

    def footprint(self) -> tuple[list[float], list[float]]:
        """Counter-clockwise lon/lat ring of the tile outline (5 points per edge)."""
        x0, y0, x1, y1 = self.bounds
        t = np.linspace(0.0, 1.0, 5)[:-1]
        xs = np.concatenate([x0 + (x1 - x0) * t, np.full(4, x1), x1 - (x1 - x0) * t,
                             np.full(4, x0)])
        ys = np.concatenate([np.full(4, y0), y0 + (y1 - y0) * t, np.full(4, y1),
                             y1 - (y1 - y0) * t])
        tr = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        lon, lat = tr.transform(xs, ys)
        lon = [round(float(v), 7) for v in lon]
        lat = [round(float(v), 7) for v in lat]
        return [*lon, lon[0]], [*lat, lat[0]]


@dataclass(frozen=True)
class ZoneGrid:
    """The union grid of one zone's tiles (the truth raster grid); tiles are windows of it."""

    epsg: int
    zone: int
    x0: float
    y0: float
    width: int
    height: int
    resolution: float
    tiles: tuple[Tile, ...]

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y0)

    @cached_property
    def lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        """lon, lat of every pixel centre (height x width)."""
        return self.lonlat_of(self.resolution)

    def lonlat_of(self, res: float, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """lon, lat of pixel centres of this grid's area at resolution ``res``, padded."""
        w = round(self.width * self.resolution / res) + 2 * pad
        h = round(self.height * self.resolution / res) + 2 * pad
        xs = self.x0 + (np.arange(w) - pad + 0.5) * res
        ys = self.y0 - (np.arange(h) - pad + 0.5) * res
        xx, yy = np.meshgrid(xs, ys)
        tr = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        lon, lat = tr.transform(xx, yy)
        return np.asarray(lon), np.asarray(lat)


def _tile_id(zone: int, band: str, square: str, row: int, col: int, n: int) -> str:
    w = 1 if n <= 10 else 2
    return f"{zone:02d}{band}{square}-{row:0{w}d}{col:0{w}d}"


def _snap(v: float, step: float) -> float:
    return math.floor(v / step) * step


def layout(config: WorldConfig) -> list[ZoneGrid]:
    """The zone grids and their tiles for ``config`` (west zone first)."""
    res = config.resolution
    t, o = config.tile_size, config.overlap_px
    nx, ny = config.tiles_x, config.tiles_y
    block_w = (nx * t - (nx - 1) * o) * res
    block_h = (ny * t - (ny - 1) * o) * res
    lon0, lat0 = config.center_lon, config.center_lat
    step = math.lcm(int(config.align), int(res))

    placements: list[tuple[int, float, float]] = []  # zone, x0, y0
    if config.zones == 2:
        boundary = round(lon0 / 6.0) * 6.0
        ext = 0.3  # fraction of each block that reaches across the boundary
        for zone, frac_west in ((utm_zone(boundary - 0.5), 1 - ext), (utm_zone(boundary + 0.5),
                                                                        ext)):
            epsg = utm_epsg(zone, lat0)
            xb, yc = Transformer.from_crs(4326, epsg, always_xy=True).transform(boundary, lat0)
            placements.append((zone, _snap(xb - block_w * frac_west, step),
                               _snap(yc + block_h / 2, step)))
    else:
        zone = utm_zone(lon0 - 1e-9)
        epsg = utm_epsg(zone, lat0)
        xc, yc = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon0, lat0)
        placements.append((zone, _snap(xc - block_w / 2, step), _snap(yc + block_h / 2, step)))

    grids = []
    for zone, x0, y0 in placements:
        epsg = utm_epsg(zone, lat0)
        to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)
        tiles = []
        for r in range(ny):
            for c in range(nx):
                tx = x0 + c * (t - o) * res
                ty = y0 - r * (t - o) * res
                cx, cy = tx + t * res / 2, ty - t * res / 2
                _, clat = to_ll.transform(cx, cy)
                band, square = latitude_band(clat), grid_square(zone, cx, cy)
                tiles.append(Tile(
                    id=_tile_id(zone, band, square, r, c, max(nx, ny)), epsg=epsg, zone=zone,
                    latitude_band=band, grid_square=square, row_off=r * (t - o),
                    col_off=c * (t - o), size=t, resolution=res, x0=tx, y0=ty,
                ))
        grids.append(ZoneGrid(
            epsg=epsg, zone=zone, x0=x0, y0=y0, width=round(block_w / res),
            height=round(block_h / res), resolution=res, tiles=tuple(tiles),
        ))
    return grids


def region_bbox(grids: list[ZoneGrid]) -> tuple[float, float, float, float]:
    boxes = [t.lonlat_bounds() for g in grids for t in g.tiles]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes))
