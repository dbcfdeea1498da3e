"""Per-acquisition sub-pixel shifts by phase correlation (scikit-image), in metres east/north."""

from __future__ import annotations

import numpy as np


def _fill(img: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``img`` with its masked (NaN) pixels taken from ``other`` (else the image mean)."""
    out = img.copy()
    bad = ~np.isfinite(out)
    out[bad] = other[bad]
    bad = ~np.isfinite(out)
    out[bad] = float(np.nanmean(out)) if np.isfinite(out).any() else 0.0
    return out


def reference_index(stack: np.ndarray) -> int:
    """The acquisition with the most valid pixels (ties: the first)."""
    valid = np.isfinite(stack).all(axis=1).reshape(stack.shape[0], -1).mean(axis=1)
    return int(np.argmax(valid))


def phase_shifts(stack: np.ndarray, pixel: float, upsample: int = 100,
                 reference: int | None = None, max_shift: float | None = None) -> np.ndarray:
    """(T, 2) shifts ``(dx east, dy north)`` in metres of each acquisition of ``stack``
    (T, C, H, W; NaN = masked) relative to the clearest one, by
    ``skimage.registration.phase_cross_correlation`` on the band sum, then made zero-mean
    (the frame of the fitted scene). Masked pixels are filled from the reference; a shift
    beyond ``max_shift`` metres (default: one pixel; a mostly masked image can lock onto
    the wrong peak) is taken as unknown, i.e. zero."""
    from skimage.registration import phase_cross_correlation

    t = stack.shape[0]
    ref_i = reference_index(stack) if reference is None else reference
    img = np.nansum(stack, axis=1)
    img[~np.isfinite(stack).all(axis=1)] = np.nan
    ref = _fill(img[ref_i], np.full_like(img[ref_i], np.nan))
    out = np.zeros((t, 2))
    for k in range(t):
        if k == ref_i:
            continue
        mov = _fill(img[k], ref)
        shift, _err, _phase = phase_cross_correlation(ref, mov, upsample_factor=upsample)
        # ``shift`` (rows, cols) registers the moving image onto the reference: the content
        # moved by -shift, i.e. east by -cols pixels and north by +rows pixels.
        d = (-shift[1] * pixel, shift[0] * pixel)
        limit = pixel if max_shift is None else max_shift
        out[k] = d if max(abs(d[0]), abs(d[1])) <= limit else (0.0, 0.0)
    return out - out.mean(axis=0)
