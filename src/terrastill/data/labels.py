"""Rasterize observation labels onto a chip grid: points (optionally a square window), polygons."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.features import rasterize
from shapely.geometry.base import BaseGeometry

from terrastill.data.grid import GridSpec, to_crs

IGNORE = -1


def burn_labels(
    grid: GridSpec,
    geoms_lonlat: Sequence[BaseGeometry],
    labels: Sequence[int],
    window: int = 1,
) -> np.ndarray:
    """An int16 label chip: each point's class at its pixel (a ``window``² square), polygons
    filled (pixels whose centre they hold), everything else -1.

    Precedence: geometries are burnt in row order, so where labels overlap the later row
    wins, whether it is a point or a polygon."""
    out = np.full((grid.height, grid.width), IGNORE, dtype=np.int16)
    half = max(0, (window - 1) // 2)
    for geom, label in zip(geoms_lonlat, labels, strict=True):
        g = to_crs(geom, 4326, grid.epsg)
        if g.geom_type == "Point":
            r, c = grid.pixel_of(g.x, g.y)
            r0, r1 = max(0, r - half), min(grid.height, r + half + 1)
            c0, c1 = max(0, c - half), min(grid.width, c + half + 1)
            if r0 < r1 and c0 < c1:
                out[r0:r1, c0:c1] = label
            continue
        inside = rasterize([(g, 1)], out_shape=out.shape, transform=grid.transform, fill=0,
                           dtype="uint8").astype(bool)
        out[inside] = int(label)
    return out


def label_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Pixel count per class id (ignore pixels excluded)."""
    valid = labels[labels >= 0]
    return np.bincount(valid.astype(np.int64), minlength=num_classes)[:num_classes].tolist()
