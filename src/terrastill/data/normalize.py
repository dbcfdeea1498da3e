"""Chip normalisation shared by training and inference, so both see identical tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def normalize_chip(
    arr: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    require: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, C, H, W) float reflectance with NaN nodata -> ((C, T, H, W) float32, (H, W) valid).

    Each band is standardised with its ``mean``/``std`` (per band, pooled over time, from the
    train split), then every non-finite value becomes 0 (the band mean). ``valid`` marks the
    pixels whose inputs are all finite: with ``require="all"`` (default) every band at every
    step, with ``require="any"`` every band at one step at least. Training turns the labels of
    invalid pixels into -1 (ignored); prediction writes nodata there. A stack of chips
    (N, T, C, H, W) gives (N, C, T, H, W) and (N, H, W), each chip as it would alone.
    """
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim not in (4, 5):
        raise ValueError(f"expected a (T, C, H, W) array or a stack of them, got shape {a.shape}")
    c = a.shape[-3]
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    if m.shape[0] != c or s.shape[0] != c:
        raise ValueError(f"{c} bands but {m.shape[0]} means and {s.shape[0]} stds")
    s = np.where(s > 0, s, np.float32(1.0))
    finite = np.isfinite(a)
    band_ok = finite.all(axis=-3)  # (..., T, H, W): every band present at this step
    valid = band_ok.all(axis=-3) if require == "all" else band_ok.any(axis=-3)
    # (a - m) / s written straight into the (..., C, T, H, W) layout, nodata then 0: the same
    # float32 operations as np.where(finite, (a - m) / s, 0), one pass instead of three copies
    av = np.swapaxes(a, -4, -3)
    x = np.empty(av.shape, np.float32)
    np.subtract(av, m[:, None], out=x)
    np.divide(x, s[:, None], out=x)
    np.copyto(x, np.float32(0.0), where=~np.swapaxes(finite, -4, -3))
    return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(valid))


def split_time_bands(arr: np.ndarray, num_steps: int) -> np.ndarray:
    """A chip file's (T*C, H, W) time-major bands -> (T, C, H, W)."""
    tc, h, w = arr.shape
    if tc % num_steps:
        raise ValueError(f"{tc} bands cannot be split into {num_steps} steps")
    return arr.reshape(num_steps, tc // num_steps, h, w)
