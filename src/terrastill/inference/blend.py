"""Overlap blending for sliding windows: smooth window weights and a strip accumulator."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def window_weight(size: int, floor: float = 1e-3) -> np.ndarray:
    """A 2D Hann-like weight, highest in the middle and small but positive at the edges."""
    i = (np.arange(size, dtype=np.float64) + 0.5) / size
    w1 = np.sin(np.pi * i) ** 2
    w = np.outer(w1, w1)
    return np.maximum(w, floor).astype(np.float32)


class StripAccumulator:
    """Weighted sums of window outputs over a moving strip of rows.

    Windows must arrive in non-decreasing row order. Rows above the newest window's top are
    final and handed to ``flush(row0, values, weights)`` so memory holds one
    window height of the output grid, whatever the AOI size.
    """

    def __init__(self, channels: int, width: int, height: int, window: int,
                 flush: Callable[[int, np.ndarray, np.ndarray], None]):
        self.channels, self.width, self.height, self.window = channels, width, height, window
        self.flush_fn = flush
        self.top = 0  # first row not yet flushed
        self.rows = window
        self.values = np.zeros((channels, self.rows, width), dtype=np.float32)
        self.weights = np.zeros((self.rows, width), dtype=np.float32)

    def _flush_until(self, row: int) -> None:
        row = min(row, self.height)
        while self.top < row:
            n = min(row - self.top, self.rows)
            self.flush_fn(self.top, self.values[:, :n].copy(), self.weights[:n].copy())
            self.values = np.roll(self.values, -n, axis=1)
            self.weights = np.roll(self.weights, -n, axis=0)
            self.values[:, -n:] = 0
            self.weights[-n:] = 0
            self.top += n

    def add(self, row: int, col: int, values: np.ndarray, weight: np.ndarray) -> None:
        """Add a window's ``values`` (C, h, w) with per-pixel ``weight`` (h, w) at (row, col)."""
        if row < self.top:
            raise ValueError("windows must arrive in row order")
        h, w = weight.shape
        self._flush_until(row)  # rows above this window can receive nothing more
        r = row - self.top
        self.values[:, r:r + h, col:col + w] += values * weight
        self.weights[r:r + h, col:col + w] += weight

    def close(self) -> None:
        """Flush every remaining row."""
        self._flush_until(self.height)
