"""Prediction's block reader: the windows' tensors, masks and encodings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from terrastill.catalog import Search
from terrastill.data.chips import items_over, read_chip
from terrastill.data.grid import union_grid, window_grid
from terrastill.data.normalize import normalize_chip
from terrastill.inference.aoi import bbox_aoi, split_by_zone
from terrastill.inference.predict import (
    _load,
    model_catalog,
    read_options,
    read_windows,
    window_coords,
)


def test_block_windows_equal_their_chips_and_skip_encodings_when_unused(flood_model,
                                                                        small_world):
    """Each window of a block holds its chip's normalised tensor, valid mask and true
    colour; ``coords=False`` changes nothing but leaving the encodings out, and the
    encodings with a block-wide date cache equal those worked out window by window."""
    spec = _load(str(Path(flood_model).resolve())).card.input_spec
    read = read_options(spec, None, None)
    epsg, piece = split_by_zone([bbox_aoi(small_world["bbox"])])[0]
    _grid, windows = window_grid(piece, epsg, int(spec["chip_size"]), 30.0, 0.5)
    windows = windows[:40]
    date = dt.date.fromisoformat(small_world["tasks"]["flood"]["date"]) + dt.timedelta(days=6)
    cat, collections, _loc = model_catalog(spec, small_world["catalog"], read)
    start, end = read.temporal.search_window(date)
    found = cat.search(Search(collections, union_grid(windows).lonlat_bounds(),
                              dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
                              dt.datetime.combine(end, dt.time.max, tzinfo=dt.UTC)))
    items = items_over([it.to_dict(transform_hrefs=False) for it in found],
                       union_grid(windows))
    with_coords = read_windows(windows, date, items, read, spec)
    without = read_windows(windows, date, items, read, spec, coords=False)
    assert sum(o.tensor is not None for o in with_coords) >= 5, \
        [o.reason for o in with_coords]
    days: dict = {}
    for g, a, b in zip(windows, with_coords, without, strict=True):
        assert a.reason == b.reason and a.items == b.items
        if a.reason:
            assert a.tensor is None and b.tensor is None
            continue
        chip = read_chip(g, date, items, read)
        x, valid = normalize_chip(chip.array, spec["mean"], spec["std"])
        idx = [chip.bands.index(c) for c in ("red", "green", "blue")]
        for o in (a, b):
            np.testing.assert_array_equal(o.tensor.numpy(), x.numpy())
            np.testing.assert_array_equal(o.valid, valid.numpy())
            np.testing.assert_array_equal(o.rgb, chip.array[-1, idx])
        assert b.coords is None
        assert a.coords == window_coords(chip) == window_coords(chip, days)
    assert days
