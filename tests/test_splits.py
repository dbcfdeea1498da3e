"""Spatial-block splits: blocks never straddle splits, shares follow the ratios, rare classes
reach every split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from terrastill.data.splits import assign_splits


def index(n_blocks: int, rare_blocks: set[int], chips_per_block: int = 4) -> pd.DataFrame:
    rows = []
    for b in range(n_blocks):
        for c in range(chips_per_block):
            x = b * 1000.0 + c * 100
            rows.append({"epsg": 32633, "transform": [30, 0, x, 0, -30, 5_000_000.0],
                         "label_counts": [50, 9 if b in rare_blocks else 0]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rare_class_reaches_every_split_and_blocks_stay_whole(seed):
    idx = index(20, rare_blocks={3, 11, 17})
    split = assign_splits(idx, 1000, (0.7, 0.15, 0.15), seed)
    block = (idx["transform"].map(lambda t: t[2]) // 1000).astype(int)
    assert (split.groupby(block).nunique() == 1).all()
    rare = np.array([lc[1] for lc in idx["label_counts"]])
    for s in ("train", "val", "test"):
        assert rare[(split == s).to_numpy()].sum() > 0, s
    share = split.value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7, abs=0.1)


def test_ratios_are_checked():
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits(index(3, set()), 1000, (0.5, 0.2, 0.2))
