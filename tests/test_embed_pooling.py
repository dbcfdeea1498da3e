"""Nodata-aware token pooling of embedding tables (mean and centre pooling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from terrastill.embeddings.encoders import MIN_VALID, random_encoder

BANDS = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]


@pytest.fixture(scope="module")
def enc():
    return random_encoder("tiny", 0, BANDS, 3, 32, [0.1] * 6, [0.05] * 6, device="cpu")


def _stack(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.02, 0.4, (n, 3, 6, 32, 32)).astype(np.float32)


def _tokens(enc, arr: np.ndarray) -> torch.Tensor:
    return enc.tokens(enc.normalise(arr))[:, 1:]  # (N, L, D), L = 3 × 8 × 8


def test_mean_pooling_leaves_nodata_patches_out(enc):
    arr = _stack()
    arr[0, :, :, :16, :] = np.nan  # the top half of chip 0 is outside the scene
    arr[0, 1, 2, 16:20, 0:4] = np.nan  # one band missing at one step: that token too
    tokens = _tokens(enc, arr)
    got = enc.vectors(arr, "mean")
    keep = np.zeros((3, 8, 8), bool)
    keep[:, 4:] = True  # patch rows 4..7 valid
    keep[1, 4, 0] = False
    want0 = tokens[0][torch.from_numpy(keep.reshape(-1))].mean(0).numpy()
    np.testing.assert_allclose(got[0], want0, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[0], tokens[0].mean(0).numpy(), atol=1e-3)  # the old mean
    np.testing.assert_allclose(got[1], tokens[1].mean(0).numpy(), rtol=1e-5, atol=1e-6)


def test_token_weights_threshold_and_fallbacks(enc):
    arr = _stack(3)
    flat = arr[0].reshape(3, 6, 8, 4, 8, 4)
    flat[:, :, 0, :2, 0, :] = np.nan  # patch (0, 0): half its pixels nodata -> still valid
    flat[:, :, 0, :3, 1, :] = np.nan  # patch (0, 1): a quarter valid -> left out
    arr[1] = np.nan
    arr[1, 0, :, 0, 0] = 0.1  # one valid pixel: the any-valid fallback
    arr[2] = np.nan  # nothing valid: every token
    w = enc.token_weights(arr).reshape(3, 3, 8, 8)
    assert MIN_VALID == 0.5 and w[0, :, 0, 0].all() and not w[0, :, 0, 1].any()
    assert w[0].sum() == 3 * 63
    assert w[1].sum() == 1 and w[1, 0, 0, 0] == 1
    assert (w[2] == 1).all()
    assert np.isfinite(enc.vectors(arr)).all()


def test_centre_pooling_is_the_centre_patches(enc):
    arr = _stack(1)
    tokens = _tokens(enc, arr)
    keep = np.zeros((3, 8, 8), bool)
    keep[:, 3:5, 3:5] = True  # 8 × 8 patches: the four around the centre pixel
    want = tokens[0][torch.from_numpy(keep.reshape(-1))].mean(0).numpy()
    np.testing.assert_allclose(enc.vectors(arr, "centre")[0], want, rtol=1e-5, atol=1e-6)
    arr[0, :, :, 12:16, 12:16] = np.nan  # one centre patch lost at every step
    keep[:, 3, 3] = False
    want = _tokens(enc, arr)[0][torch.from_numpy(keep.reshape(-1))].mean(0).numpy()
    np.testing.assert_allclose(enc.vectors(arr, "centre")[0], want, rtol=1e-5, atol=1e-6)


def test_cls_pooling_unchanged(enc):
    arr = _stack(1)
    np.testing.assert_allclose(enc.vectors(arr, "cls")[0],
                               enc.tokens(enc.normalise(arr))[0, 0].numpy(), rtol=1e-6)
