"""Clear acquisitions over an area, read through the chip read path (QA masks respected)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from affine import Affine
from shapely.geometry import box

from terrastill.catalog import Search, open_catalog
from terrastill.data.chips import ReadOptions, items_over
from terrastill.data.grid import GridSpec, to_crs, utm_epsg
from terrastill.data.plan import catalog_collections
from terrastill.data.read import Acquisition, gdal_session, read_acquisition, read_qa
from terrastill.data.temporal import group_acquisitions


@dataclass(frozen=True)
class Picked:
    """An acquisition chosen for the fit and its masked share over the whole area."""

    acquisition: Acquisition
    invalid_fraction: float


def area_grid(bbox: Sequence[float], resolution: float) -> GridSpec:
    """The native-resolution grid (UTM zone of the box centre) covering a lon/lat box, snapped
    outward to the sensor's pixel grid."""
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    epsg = utm_epsg((minx + maxx) / 2, (miny + maxy) / 2)
    x0, y0, x1, y1 = to_crs(box(minx, miny, maxx, maxy).segmentize(0.001), 4326, epsg).bounds
    res = resolution
    gx0, gy1 = math.floor(x0 / res) * res, math.ceil(y1 / res) * res
    width = max(1, math.ceil((x1 - gx0) / res))
    height = max(1, math.ceil((gy1 - y0) / res))
    return GridSpec(epsg, Affine(res, 0.0, gx0, 0.0, -res, gy1), width, height)


def find_acquisitions(catalog: str, read: ReadOptions, grid: GridSpec, start: dt.date,
                      end: dt.date) -> list[Acquisition]:
    """Every acquisition of the source between ``start`` and ``end`` touching ``grid``."""
    cat = open_catalog(catalog)
    collections = catalog_collections(cat, read)
    s = Search(collections, grid.lonlat_bounds(),
               dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
               dt.datetime.combine(end, dt.time.max, tzinfo=dt.UTC))
    items = items_over([it.to_dict(transform_hrefs=False) for it in cat.search(s)], grid)
    return group_acquisitions(items)


def pick_clear(acquisitions: Sequence[Acquisition], read: ReadOptions, grid: GridSpec,
               max_invalid: float, limit: int) -> list[Picked]:
    """The ``limit`` least-masked acquisitions with at most ``max_invalid`` (0..1) of the area
    masked (QA classes, nodata, not covered), in date order."""
    mask = read.resolved_mask()
    scored = []
    with gdal_session():
        for acq in acquisitions:
            invalid, _cloud = read_qa(acq, read.profile, grid, mask)
            frac = float(invalid.mean())
            if frac <= max_invalid:
                scored.append(Picked(acq, frac))
    scored.sort(key=lambda p: (p.invalid_fraction, p.acquisition.date))
    return sorted(scored[:limit], key=lambda p: p.acquisition.date)


def read_stack(picked: Sequence[Picked], read: ReadOptions, grid: GridSpec) -> np.ndarray:
    """(T, C, H, W) float32 reflectance over ``grid``; NaN where QA masks or nothing covers."""
    bands = read.resolved_bands()
    mask = read.resolved_mask()
    with gdal_session():
        return np.stack([read_acquisition(p.acquisition, read.profile, bands, grid, mask).data
                         for p in picked])
