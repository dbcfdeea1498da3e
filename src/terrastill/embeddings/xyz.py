"""XYZ GeoTIFF tile pyramids (web mercator, ``{z}/{x}/{y}.tif``) of int8 code rasters.

The top zoom is the first whose pixels are no larger than the source's on the ground at the
product's central latitude; its tiles are the source codes resampled by nearest neighbour
(codes are never interpolated). Each lower zoom is the 2×2 mean of its four children's codes
over valid pixels, rounded — so a linear model's logit of a parent pixel is the mean of its
children's logits up to int8 rounding. Lower zooms stop where one tile covers the product.
Every tile carries the source's band descriptions, nodata and per-band scale/offset.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

TILE = 256
EARTH_M = 2 * math.pi * 6378137.0
NODATA = -128


def _tms() -> Any:
    import morecantile

    return morecantile.tms.get("WebMercatorQuad")


def max_zoom_for(res_m: float, lat: float) -> int:
    """Lowest zoom whose ground pixel size at ``lat`` is ≤ ``res_m``."""
    ground = EARTH_M * math.cos(math.radians(lat)) / TILE
    return max(0, min(24, math.ceil(math.log2(ground / res_m) - 1e-9)))


def _write_tile(path: Path, data: np.ndarray, bounds: tuple[float, float, float, float],
                info: dict[str, Any]) -> None:
    import rasterio
    from rasterio.transform import from_bounds

    path.parent.mkdir(parents=True, exist_ok=True)
    prof = {"driver": "GTiff", "width": TILE, "height": TILE, "count": data.shape[0],
            "dtype": "int8", "crs": "EPSG:3857", "nodata": NODATA,
            "transform": from_bounds(*bounds, TILE, TILE), "compress": "deflate",
            "tiled": False, "interleave": "pixel"}
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        dst.descriptions = info["descriptions"]
        dst.scales = info["scales"]
        dst.offsets = info["offsets"]


def read_tile(path: Path) -> np.ndarray:
    """(count, 256, 256) int8 codes of one tile."""
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def _top_tiles(src: Any, z: int, info: dict[str, Any], root: Path) -> set[tuple[int, int]]:
    from rasterio.transform import from_bounds
    from rasterio.warp import Resampling, reproject, transform_bounds
    from rasterio.windows import Window
    from rasterio.windows import from_bounds as window_from_bounds

    tms = _tms()
    w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    made: set[tuple[int, int]] = set()
    for t in tms.tiles(w, s, e, n, [z]):
        xy = tms.xy_bounds(t)
        b = (xy.left, xy.bottom, xy.right, xy.top)
        sb = transform_bounds("EPSG:3857", src.crs, *b, densify_pts=21)
        win = window_from_bounds(*sb, transform=src.transform).round_offsets().round_lengths()
        c0, r0 = max(0, int(win.col_off) - 1), max(0, int(win.row_off) - 1)
        c1 = min(src.width, int(win.col_off + win.width) + 2)
        r1 = min(src.height, int(win.row_off + win.height) + 2)
        if c1 <= c0 or r1 <= r0:
            continue
        sub = Window(c0, r0, c1 - c0, r1 - r0)
        arr = src.read(window=sub)
        dst = np.full((src.count, TILE, TILE), NODATA, np.int8)
        reproject(arr, dst, src_transform=src.window_transform(sub), src_crs=src.crs,
                  src_nodata=NODATA, dst_transform=from_bounds(*b, TILE, TILE),
                  dst_crs="EPSG:3857", dst_nodata=NODATA, resampling=Resampling.nearest)
        if (dst == NODATA).all():
            continue
        _write_tile(root / str(z) / str(t.x) / f"{t.y}.tif", dst, b, info)
        made.add((t.x, t.y))
    return made


def downsample(children: dict[tuple[int, int], np.ndarray], count: int) -> np.ndarray:
    """The parent tile of up to four children ((dx, dy) → codes): 2×2 means of valid codes."""
    big = np.full((count, 2 * TILE, 2 * TILE), NODATA, np.int8)
    for (dx, dy), a in children.items():
        big[:, dy * TILE:(dy + 1) * TILE, dx * TILE:(dx + 1) * TILE] = a
    blocks = big.reshape(count, TILE, 2, TILE, 2).astype(np.float64)
    valid = blocks != NODATA
    n = valid.sum(axis=(2, 4))
    total = np.where(valid, blocks, 0).sum(axis=(2, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.rint(total / n)
    return np.where(n > 0, np.clip(mean, -127, 127), NODATA).astype(np.int8)


def write_pyramid(cog: Path, root: Path, min_zoom: int | None = None) -> dict[str, Any]:
    """Write the tile pyramid of an int8 COG under ``root``; returns its description."""
    import rasterio
    from rasterio.warp import transform_bounds

    tms = _tms()
    with rasterio.open(cog) as src:
        if src.dtypes[0] != "int8":
            raise ValueError(f"{cog}: tiles hold int8 codes, not {src.dtypes[0]}")
        info = {"descriptions": src.descriptions, "scales": src.scales, "offsets": src.offsets}
        w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        zmax = max_zoom_for(abs(src.transform.a), (s + n) / 2)
        count = src.count
        level = _top_tiles(src, zmax, info, root)
    counts = {zmax: len(level)}
    z = zmax
    while z > 0 and len(level) > 1 and (min_zoom is None or z > min_zoom):
        parents: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for x, y in sorted(level):
            parents.setdefault((x // 2, y // 2), []).append((x, y))
        child_z = z
        z -= 1
        level = set()
        for (x, y), kids in sorted(parents.items()):  # four child tiles in memory at a time
            data = downsample({(cx % 2, cy % 2): read_tile(root / str(child_z) / str(cx)
                                                            / f"{cy}.tif")
                               for cx, cy in kids}, count)
            if (data == NODATA).all():
                continue
            xy = tms.xy_bounds(x, y, z)
            _write_tile(root / str(z) / str(x) / f"{y}.tif", data,
                        (xy.left, xy.bottom, xy.right, xy.top), info)
            level.add((x, y))
        counts[z] = len(level)
    return {"template": "tiles/{z}/{x}/{y}.tif", "tms": "WebMercatorQuad", "size": TILE,
            "min_zoom": min(counts), "max_zoom": zmax, "bounds": [w, s, e, n],
            "tiles_per_zoom": {str(k): v for k, v in sorted(counts.items())},
            "downsampling": "2x2 mean of valid int8 codes, rounded"}
