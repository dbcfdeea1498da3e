"""Per-pixel composites for prediction: a step's cloudy pixels come from the other
acquisitions within the tolerance, in the choice's order, through the same read path."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from terrastill.data.chips import ReadOptions, fill_candidates, items_over, read_chips
from terrastill.data.grid import to_crs
from terrastill.data.read import read_acquisition
from terrastill.data.temporal import TemporalOptions, group_acquisitions
from test_chips import _season_items


def _grids(world: dict) -> list:
    """Windows of the first zone's grid, among them four that the composite fills on DAY."""
    from shapely.geometry import box

    from terrastill.data.grid import window_grid

    epsg = world["epsg"][0]
    _out, windows = window_grid(to_crs(box(*world["bbox"]), 4326, epsg), epsg, 16, 30.0, 0.0)
    return [windows[i] for i in (0, 20, 21, 35, 50, 51)]


DAY = dt.date(2024, 6, 25)
TEMPORAL = TemporalOptions(2, 9, 9, 100.0)


def test_composites_fill_masked_pixels_in_order(small_world):
    items = _season_items(small_world)
    grids = _grids(small_world)
    day = DAY
    plain = ReadOptions(temporal=TEMPORAL)
    comp = dataclasses.replace(plain, composite=True)
    chips = read_chips(grids, day, items, plain)
    composites = read_chips(grids, day, items, comp)
    filled = 0
    profile = plain.profile
    for grid, a, b in zip(grids, chips, composites, strict=True):
        assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
        # the same acquisition leads each step; its valid pixels are kept as they are
        assert [s.acquisition.key for s in a.steps] == [s.acquisition.key for s in b.steps]
        keep = np.isfinite(a.array)
        np.testing.assert_array_equal(b.array[keep], a.array[keep])
        assert np.isfinite(b.array).sum() >= keep.sum()
        # each filled pixel is the first candidate's (in the choice's order) that has it
        acqs = group_acquisitions(items_over(items, grid))
        cands = fill_candidates(acqs, [s.acquisition for s in a.steps],
                                plain.temporal.targets(day), plain.temporal.temporal_tolerance)
        for k, (step, fills) in enumerate(zip(a.steps, cands, strict=True)):
            want = step.data.copy()
            for acq in fills:
                other = read_acquisition(acq, profile, plain.resolved_bands(), grid,
                                         plain.resolved_mask()).data
                todo = np.isnan(want[0]) & ~np.isnan(other[0])
                want[:, todo] = other[:, todo]
            np.testing.assert_array_equal(b.array[k], want)
            filled += int(np.isfinite(b.array[k, 0]).sum() - np.isfinite(a.array[k, 0]).sum())
            if b.steps[k].filled_from:
                assert b.steps[k].invalid_fraction < step.invalid_fraction
    assert filled > 0, "no window of the test had a masked pixel to fill"


def test_composites_keep_the_cloud_limit_after_filling(small_world):
    items = _season_items(small_world)
    grids = _grids(small_world)
    day = DAY
    strict = ReadOptions(temporal=dataclasses.replace(TEMPORAL, max_cloud=1.0))
    plain = read_chips(grids, day, items, strict)
    comp = read_chips(grids, day, items, dataclasses.replace(strict, composite=True))
    made = [c for c in comp if not isinstance(c, Exception)]
    assert sum(not isinstance(c, Exception) for c in plain) <= len(made)
    for c in made:
        assert max(s.invalid_fraction for s in c.steps) <= 0.01
    refused = [c for c in comp if isinstance(c, Exception)]
    assert all("after compositing" in str(e) or "no HLS item" in str(e) for e in refused)
    assert ReadOptions().to_dict().get("composite") is None  # chips' records unchanged
