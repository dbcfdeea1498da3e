"""Web-Mercator tiles of a job's products with rio-tiler, rendered by titiler.core.

Callers hand in paths they resolved from a job id themselves; nothing here takes a path or URL
from a client. Products split per UTM zone are mosaicked (first valid pixel wins).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rio_tiler.errors import EmptyMosaicError, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.mosaic import mosaic_reader
from rio_tiler.utils import render
from titiler.core.resources.enums import ImageType
from titiler.core.utils import render_image

from terrastill.errors import BadInputError

TILE_SIZE = 256
ZOOM_OUT_LEVELS = 3  # zoom levels a layer is offered below its native minzoom
LAYERS = ("classes", "truecolor")
Colormap = dict[int, tuple[int, int, int, int]]


def hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    """'#rrggbb' or '#rrggbbaa' (the '#' optional) → an RGBA tuple."""
    h = color.strip().lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    if len(h) not in (6, 8):
        raise BadInputError(f"not a hex colour: {color!r}")
    try:
        vals = [int(h[i : i + 2], 16) for i in range(0, len(h), 2)]
    except ValueError as exc:
        raise BadInputError(f"not a hex colour: {color!r}") from exc
    return (vals[0], vals[1], vals[2], vals[3] if len(vals) == 4 else 255)


def class_colormap(class_colors: Sequence[str]) -> Colormap:
    """Class id i → the model card's colour i; ids without a colour stay transparent."""
    return {i: hex_to_rgba(c) for i, c in enumerate(class_colors)}


@functools.lru_cache(maxsize=1)
def empty_png() -> bytes:
    """A fully transparent tile: what areas without data look like (never an error tile)."""
    data = np.zeros((1, TILE_SIZE, TILE_SIZE), dtype="uint8")
    mask = np.zeros((TILE_SIZE, TILE_SIZE), dtype="uint8")
    return render(data, mask, img_format="PNG")


def _read_tile(asset: str, x: int, y: int, z: int, **kwargs: Any) -> ImageData:
    with Reader(asset) as src:
        return src.tile(x, y, z, tilesize=TILE_SIZE, **kwargs)


def read_tile(paths: Sequence[Path], z: int, x: int, y: int, **kwargs: Any) -> ImageData | None:
    """The tile mosaicked from ``paths``; None where no product covers it."""
    try:
        img, _ = mosaic_reader([str(p) for p in paths], _read_tile, x, y, z, threads=0, **kwargs)
    except (EmptyMosaicError, TileOutsideBounds):
        return None
    return img


def clip(img: ImageData, aois: Sequence[dict] | None) -> ImageData:
    """``img`` with pixels outside the (lon/lat GeoJSON) AOIs masked: a job shows its AOI,
    not the whole window grid it read."""
    if not aois:
        return img
    from rasterio.features import geometry_mask
    from rasterio.warp import transform_geom

    shapes = [transform_geom("EPSG:4326", img.crs, g) for g in aois]
    outside = geometry_mask(shapes, out_shape=(img.height, img.width), transform=img.transform)
    img.array.mask = np.ma.getmaskarray(img.array) | outside[None]
    return img


def render_classes(paths: Sequence[Path], z: int, x: int, y: int, colormap: Colormap,
                   aois: Sequence[dict] | None = None) -> bytes:
    """Class ids → RGBA PNG through the model's colours; nodata (255) and pixels outside the
    AOIs are transparent."""
    img = read_tile(paths, z, x, y, indexes=(1,))
    if img is not None:
        img = clip(img, aois)
    if img is None or not img.mask.any():
        return empty_png()
    content, _ = render_image(img, colormap=colormap, output_format=ImageType.png)
    return content


def render_truecolor(paths: Sequence[Path], z: int, x: int, y: int, vmax: float,
                     aois: Sequence[dict] | None = None) -> bytes:
    """Red, green, blue reflectance 0–``vmax`` → 0–255; NaN and the outside of the AOIs are
    transparent."""
    img = read_tile(paths, z, x, y, indexes=(1, 2, 3))
    if img is not None:
        img = clip(img, aois)
    if img is None or not img.mask.any():
        return empty_png()
    with np.errstate(invalid="ignore"):  # NaN (nodata) cast to uint8 under the mask
        content, _ = render_image(img, rescale=[(0.0, vmax)] * 3, output_format=ImageType.png)
    return content


def _info(path: str, mtime: float) -> tuple[tuple[float, float, float, float], int, int]:
    del mtime  # part of the cache key only
    with Reader(path) as src:
        return (
            tuple(src.get_geographic_bounds(src.tms.rasterio_geographic_crs)),
            src.minzoom,
            src.maxzoom,
        )  # type: ignore[return-value]


_info_cached = functools.lru_cache(maxsize=256)(_info)


def products_info(paths: Sequence[Path]) -> tuple[list[float], int, int]:
    """Lon/lat bounds, min and max zoom over all ``paths``."""
    bounds, minzooms, maxzooms = [], [], []
    for p in paths:
        b, lo, hi = _info_cached(str(p), os.stat(p).st_mtime)
        bounds.append(b)
        minzooms.append(lo)
        maxzooms.append(hi)
    arr = np.array(bounds, dtype=float)
    box = [
        float(arr[:, 0].min()),
        float(arr[:, 1].min()),
        float(arr[:, 2].max()),
        float(arr[:, 3].max()),
    ]
    # A few levels below the native ones so a small product still shows when zoomed out, but
    # no further: each level out warps 4x the area per tile (measured on 2 cores: 0.1-0.2 s
    # per tile three levels out, 0.7 s four levels out, 85 s at zoom 0)
    return box, max(0, min(minzooms) - ZOOM_OUT_LEVELS), max(maxzooms)
