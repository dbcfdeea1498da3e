"""Overlapping crops over a large grid and the taper that blends their fine outputs."""

from __future__ import annotations

import numpy as np


def starts(n: int, crop: int, overlap: int) -> list[int]:
    """Start offsets of crops of ``crop`` pixels over ``n`` pixels, ``overlap`` shared, the
    last one shifted back to end at the edge (one crop when ``n <= crop``)."""
    if n <= crop:
        return [0]
    step = max(1, crop - overlap)
    out = list(range(0, n - crop + 1, step))
    if out[-1] + crop < n:
        out.append(n - crop)
    return out


def crops(height: int, width: int, crop: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) of every crop, row by row."""
    return [(r, min(height, r + crop), c, min(width, c + crop))
            for r in starts(height, crop, overlap) for c in starts(width, crop, overlap)]


def taper(h: int, w: int, ramp: int) -> np.ndarray:
    """(h, w) blending weights: 1 inside, falling linearly to near 0 over ``ramp`` pixels at
    each edge (never exactly 0, so an edge pixel covered by one crop keeps its value)."""
    def axis(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        d = np.minimum(i + 0.5, n - i - 0.5)
        return np.clip(d / max(ramp, 1), 1e-3, 1.0)

    return np.outer(axis(h), axis(w)).astype(np.float32)
