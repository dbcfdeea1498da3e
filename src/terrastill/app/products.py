"""Facts about a finished job's products: how much of the AOI got a prediction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import rasterio
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom


def valid_share(class_paths: Sequence[Path], aois: Sequence[dict]) -> float | None:
    """Share of the AOIs' pixels that hold a class (not nodata), over every part (zone);
    None when the AOIs cover no pixel of the products."""
    inside_total = valid_total = 0
    for path in class_paths:
        with rasterio.open(path) as src:
            shapes = [transform_geom("EPSG:4326", src.crs, g) for g in aois]
            inside = geometry_mask(shapes, out_shape=(src.height, src.width),
                                   transform=src.transform, invert=True)
            data = src.read(1)
            nodata = src.nodata if src.nodata is not None else 255
        inside_total += int(inside.sum())
        valid_total += int((inside & (data != nodata)).sum())
    return round(valid_total / inside_total, 4) if inside_total else None



