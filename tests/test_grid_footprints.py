"""Window footprints in lon/lat: many at once equal one at a time, to the float."""

from __future__ import annotations

import numpy as np
from affine import Affine
from shapely.geometry import box

from terrastill.data.grid import _FOOTPRINTS, GridSpec, lonlat_bounds_many, to_crs


def one_at_a_time(grid: GridSpec, densify: int) -> tuple[float, ...]:
    """The footprint as the single-grid path always computed it."""
    return to_crs(box(*grid.bounds).segmentize(grid.resolution * densify), grid.epsg,
                  4326).bounds


def test_many_footprints_equal_single_ones_and_are_cached():
    rng = np.random.default_rng(0)
    grids = []
    for epsg, res in ((32632, 30.0), (32633, 10.0), (32755, 30.0), (3857, 30.0),
                      (4326, 0.00027)):
        for _ in range(60):
            if epsg == 4326:
                x, y = rng.uniform(-170, 170), rng.uniform(-70, 70)
            else:
                x = float(rng.uniform(2e5, 8e5) // res * res)
                y = float(rng.uniform(1e6, 9e6) // res * res)
            grids.append(GridSpec(epsg, Affine(res, 0, float(x), 0, -res, float(y)),
                                  int(rng.integers(1, 300)), int(rng.integers(1, 300))))
    _FOOTPRINTS.clear()
    for densify in (8, 3):
        want = [one_at_a_time(g, densify) for g in grids]
        got = lonlat_bounds_many(grids, densify)
        assert got == want  # exactly: the same points through the same transformer
        assert [g.lonlat_bounds(densify) for g in grids] == want
    assert (grids[0], 8) in _FOOTPRINTS and (grids[0], 3) in _FOOTPRINTS
    assert lonlat_bounds_many([]) == []
