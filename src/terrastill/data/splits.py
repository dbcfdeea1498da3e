"""Spatial-block train/val/test splits and train-split band statistics."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
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
    neighbouring chips cannot leak between train and test. Blocks are shuffled with ``seed``;
    blocks holding rare classes are placed first, each in the split furthest below its target
    share of chips and of labelled pixels per class (rare classes weigh more), so a class
    seen in few places still reaches val and test where the blocks allow it.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0,
                                                                          abs_tol=1e-6):
        raise ValueError("ratios must be three non-negative numbers summing to 1")
    blocks: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, (epsg, transform) in enumerate(zip(index["epsg"], index["transform"], strict=True)):
        x, y = float(transform[2]), float(transform[5])
        blocks[(int(epsg), math.floor(x / block_size), math.floor(y / block_size))].append(i)
    keys = sorted(blocks)
    if "label_counts" in index.columns and len(index):
        labels = np.stack([np.asarray(v, dtype=np.float64) for v in index["label_counts"]])
    else:
        labels = np.zeros((len(index), 1))
    per_block = np.stack([labels[blocks[k]].sum(axis=0) for k in keys])
    total_class = per_block.sum(axis=0)
    weight = np.divide(1.0, total_class, out=np.zeros_like(total_class), where=total_class > 0)
    rarity = (per_block * weight).max(axis=1) if len(keys) else np.zeros(0)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(keys))
    order = sorted(shuffled, key=lambda k: -round(float(rarity[k]), 6))
    r = np.asarray(ratios, dtype=np.float64)
    chip_target = r * len(index)
    class_target = np.outer(r, total_class)
    chips = np.zeros(3)
    have = np.zeros((3, labels.shape[1]))
    split = np.empty(len(index), dtype=object)
    for k in order:
        members = blocks[keys[k]]
        need = np.full(3, -np.inf)
        for sp in range(3):
            if r[sp] <= 0:
                continue
            chip_need = (chip_target[sp] - chips[sp]) / max(chip_target[sp], 1e-9)
            present = per_block[k] > 0
            class_need = 0.0
            if present.any():
                gap = (class_target[sp] - have[sp]) / np.maximum(class_target[sp], 1e-9)
                class_need = float(np.mean(gap[present]))
            need[sp] = chip_need + class_need
        sp = int(np.argmax(need))
        chips[sp] += len(members)
        have[sp] += per_block[k]
        split[members] = SPLITS[sp]
    return pd.Series(split, index=index.index, name="split")


def chip_band_sums(array: np.ndarray) -> dict[str, list[float]]:
    """Per-band sum, sum of squares and count of the finite values of one (T, C, H, W) chip,
    pooled over time: what :func:`band_stats` adds up, kept in a chip's record so that the
    statistics need no second pass over the written files."""
    arr = np.asarray(array).astype(np.float64)
    out: dict[str, list[float]] = {"sum": [], "sumsq": [], "count": []}
    for b in range(arr.shape[1]):
        v = arr[:, b][np.isfinite(arr[:, b])]
        out["sum"].append(float(v.sum()))
        out["sumsq"].append(float(np.square(v).sum()))
        out["count"].append(float(v.size))
    return out


def band_stats(chip_paths: Sequence[Path], num_bands: int,
               known: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
               ) -> tuple[list[float], list[float]]:
    """Per-band mean and std over valid pixels of the given chips, pooled over time steps.

    Chip files hold ``T*C`` bands, time-major; band ``b`` of every step is pooled. ``known``
    maps a chip's file stem to its :func:`chip_band_sums` (from its record); those chips are
    not read again, and the result is the same to the bit.
    """
    s = np.zeros(num_bands, dtype=np.float64)
    ss = np.zeros(num_bands, dtype=np.float64)
    n = np.zeros(num_bands, dtype=np.float64)
    known = known or {}
    for p in sorted(chip_paths):
        got = known.get(Path(p).stem)
        if got is None or len(got["sum"]) != num_bands:
            with rasterio.open(p) as ds:
                arr = ds.read()
            got = chip_band_sums(arr.reshape(-1, num_bands, *arr.shape[1:]))
        s += np.asarray(got["sum"], np.float64)
        ss += np.asarray(got["sumsq"], np.float64)
        n += np.asarray(got["count"], np.float64)
    mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    var = np.divide(ss, n, out=np.zeros_like(s), where=n > 0) - mean**2
    std = np.sqrt(np.clip(var, 0, None))
    std[std == 0] = 1.0
    return [round(float(v), 8) for v in mean], [round(float(v), 8) for v in std]
