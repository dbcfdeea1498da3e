"""Deterministic value noise: a continuous function of location, the same on every grid.

Everything in the world (land cover, parcels, clouds) is a function of a *location* in a local
kilometre frame, never of a pixel index, so overlapping tiles (and tiles in two UTM zones) see the
same world.
"""

from __future__ import annotations

import numpy as np

_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """A well-mixed hash of integer lattice points to [0, 1)."""
    with np.errstate(over="ignore"):
        h = ix.astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= iy.astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        h ^= np.uint64((seed * 0x165667B19E3779F9) & 0xFFFFFFFFFFFFFFFF)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Public form of the lattice hash (uniform in [0, 1)), e.g. for per-parcel attributes."""
    return _hash01(np.asarray(ix), np.asarray(iy), seed)


def value_noise(x: np.ndarray, y: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about ``scale`` (same units as x, y)."""
    u = np.asarray(x, dtype=np.float64) / scale
    v = np.asarray(y, dtype=np.float64) / scale
    iu = np.floor(u)
    iv = np.floor(v)
    fu = u - iu
    fv = v - iv
    fu = fu * fu * (3 - 2 * fu)
    fv = fv * fv * (3 - 2 * fv)
    iu = iu.astype(np.int64)
    iv = iv.astype(np.int64)
    a = _hash01(iu, iv, seed)
    b = _hash01(iu + 1, iv, seed)
    c = _hash01(iu, iv + 1, seed)
    d = _hash01(iu + 1, iv + 1, seed)
    top = a + (b - a) * fu
    bot = c + (d - c) * fu
    return (top + (bot - top) * fv) * 2.0 - 1.0


def fbm(x: np.ndarray, y: np.ndarray, scale: float, seed: int, octaves: int = 4,
        gain: float = 0.5) -> np.ndarray:
    """Fractal sum of value noise, roughly in [-1, 1] (most values within ±0.6)."""
    total = np.zeros(np.broadcast(np.asarray(x), np.asarray(y)).shape, dtype=np.float64)
    amp = 1.0
    norm = 0.0
    s = scale
    for o in range(octaves):
        total += amp * value_noise(x, y, s, seed * 7919 + o * 104729 + 13)
        norm += amp
        amp *= gain
        s /= 2.0
    return total / norm
