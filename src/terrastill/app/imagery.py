"""The catalogue's own scenes as a true-colour map layer: a mosaic of one acquisition date,
rendered tile by tile from the items' red, green and blue assets (no internet needed)."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from titiler.core.resources.enums import ImageType
from titiler.core.utils import render_image

from terrastill.app.tiles import TILE_SIZE, ZOOM_OUT_LEVELS, empty_png
from terrastill.sources import PROFILES
from terrastill.sources.base import SourceProfile

RGB = ("red", "green", "blue")
MAX_DAYS = 30  # the nearest acquisition date is used within this many days of the asked one


@functools.lru_cache(maxsize=64)
def profile_of(collection: str) -> SourceProfile | None:
    """The sensor profile whose collections include ``collection`` (None: unknown)."""
    for p in PROFILES.values():
        if any(collection in ids for ids in p.collections.values()):
            return p
    return None


def rgb_items(items: Sequence[Any]) -> list[Any]:
    """Items of a known optical profile that carry red, green and blue assets."""
    out = []
    for it in items:
        p = profile_of(it.collection_id or "")
        if p is not None and all(p.asset_key(it.assets, b) for b in RGB):
            out.append(it)
    return out


def dates_of(items: Sequence[Any]) -> list[str]:
    """Sorted acquisition dates with true-colour imagery."""
    return sorted({it.datetime.date().isoformat() for it in rgb_items(items) if it.datetime})


def suggested_date(items: Sequence[Any], spec: dict[str, Any] | None) -> str | None:
    """A date a first prediction with a model of input spec ``spec`` most likely finds clear:
    the latest whose T steps are clear by the scenes' cloud cover (else the least cloudy)."""
    from terrastill.data.temporal import TemporalOptions, clearest_date

    spec = spec or {}
    opts = TemporalOptions(int(spec.get("num_steps") or 1),
                           int(spec.get("temporal_step") or 0),
                           int(spec.get("temporal_tolerance") or 0))
    day = clearest_date(rgb_items(items), opts)
    return day.isoformat() if day else None


def nearest_date(dates: Sequence[str], want: dt.date) -> str | None:
    """The date with imagery nearest to ``want`` (ties: the earlier), within MAX_DAYS."""
    best = min(dates, key=lambda d: (abs((dt.date.fromisoformat(d) - want).days), d),
               default=None)
    if best is None or abs((dt.date.fromisoformat(best) - want).days) > MAX_DAYS:
        return None
    return best


def items_on(items: Sequence[Any], day: str) -> list[Any]:
    return [it for it in rgb_items(items) if it.datetime and
            it.datetime.date().isoformat() == day]


def layer_info(items: Sequence[Any]) -> tuple[list[float], int, int]:
    """Lon/lat bounds, min and max zoom of a date's mosaic."""
    boxes = np.array([it.bbox for it in items], dtype=float)
    first = items[0]
    p = profile_of(first.collection_id or "")
    assert p is not None
    with Reader(first.assets[p.asset_key(first.assets, "red")].href) as src:
        minzoom, maxzoom = src.minzoom, src.maxzoom
    return ([float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()),
             float(boxes[:, 3].max())], max(0, minzoom - ZOOM_OUT_LEVELS), maxzoom)


def _item_tile(item: Any, x: int, y: int, z: int) -> ImageData | None:
    p = profile_of(item.collection_id or "")
    assert p is not None
    bands = []
    for b in RGB:
        href = item.assets[p.asset_key(item.assets, b)].href
        try:
            with Reader(href) as src:
                img = src.tile(x, y, z, tilesize=TILE_SIZE, indexes=(1,))
        except TileOutsideBounds:
            return None
        data = img.array.astype("float32")
        data = np.ma.MaskedArray(p.to_reflectance(data.data, item.properties), mask=data.mask)
        bands.append(ImageData(data, bounds=img.bounds, crs=img.crs))
    return ImageData.create_from_list(bands)


def render_imagery(items: Sequence[Any], z: int, x: int, y: int, vmax: float) -> bytes:
    """True-colour PNG of the items' mosaic (first valid pixel wins); transparent elsewhere."""
    out: np.ma.MaskedArray | None = None
    bounds = crs = None
    west, south, east, north = _tile_lonlat(z, x, y)
    for it in items:
        b = it.bbox
        if b[0] > east or b[2] < west or b[1] > north or b[3] < south:
            continue
        img = _item_tile(it, x, y, z)
        if img is None:
            continue
        bounds, crs = img.bounds, img.crs
        if out is None:
            out = img.array.copy()
        else:
            fill = out.mask.any(axis=0) & ~img.array.mask.any(axis=0)
            out[:, fill] = img.array[:, fill]
        if not out.mask.any():
            break
    if out is None or out.mask.all():
        return empty_png()
    with np.errstate(invalid="ignore"):
        content, _ = render_image(ImageData(out, bounds=bounds, crs=crs),
                                  rescale=[(0.0, vmax)] * 3, output_format=ImageType.png)
    return content


def _tile_lonlat(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    import morecantile

    b = morecantile.tms.get("WebMercatorQuad").bounds(morecantile.Tile(x, y, z))
    return b.left, b.bottom, b.right, b.top
