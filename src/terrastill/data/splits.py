"""Spatial-block train/val/test splits and train-split band statistics."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio

SPLITS = ("train", "val", "test")


def assign_splits(
    index: pd.DataFrame,
    block_size: float,
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.Series:
    """Split chips by spatial blocks of ``block_size`` metres, never by pixels or chips.

    Every chip in a block (and every date of the same place) lands in the same split, so
    neighbouring chips cannot leak between train and test. Blocks are shuffled with ``seed``
    and filled greedily so the chip counts approach ``ratios``.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0,
                                                                          abs_tol=1e-6):
        raise ValueError("ratios must be three non-negative numbers summing to 1")
    blocks: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, (epsg, transform) in enumerate(zip(index["epsg"], index["transform"], strict=True)):
        x, y = float(transform[2]), float(transform[5])
        blocks[(int(epsg), math.floor(x / block_size), math.floor(y / block_size))].append(i)
    keys = sorted(blocks)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    total = len(index)
    targets = [r * total for r in ratios]
    counts = [0, 0, 0]
    split = np.empty(total, dtype=object)
    for k in order:
        members = blocks[keys[k]]
        # the split furthest below its target share takes the block
        need = [(targets[s] - counts[s]) / max(targets[s], 1e-9) if targets[s] > 0 else -1e9
                for s in range(3)]
        s = int(np.argmax(need))
        counts[s] += len(members)
        split[members] = SPLITS[s]
    return pd.Series(split, index=index.index, name="split")


def band_stats(chip_paths: Sequence[Path], num_bands: int) -> tuple[list[float], list[float]]:
    """Per-band mean and std over valid pixels of the given chips, pooled over time steps.

    Chip files hold ``T*C`` bands, time-major; band ``b`` of every step is pooled.
    """
    s = np.zeros(num_bands, dtype=np.float64)
    ss = np.zeros(num_bands, dtype=np.float64)
    n = np.zeros(num_bands, dtype=np.float64)
    for p in sorted(chip_paths):
        with rasterio.open(p) as ds:
            arr = ds.read().astype(np.float64)
        arr = arr.reshape(-1, num_bands, *arr.shape[1:])
        for b in range(num_bands):
            v = arr[:, b][np.isfinite(arr[:, b])]
            s[b] += v.sum()
            ss[b] += np.square(v).sum()
            n[b] += v.size
    mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    var = np.divide(ss, n, out=np.zeros_like(s), where=n > 0) - mean**2
    std = np.sqrt(np.clip(var, 0, None))
    std[std == 0] = 1.0
    return [round(float(v), 8) for v in mean], [round(float(v), 8) for v in std]
