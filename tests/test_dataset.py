"""normalize_chip and the chip-folder Dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chipfolder import write_chip_folder
from terrastill.data.dataset import ChipDataset, class_frequencies, read_dataset_meta
from terrastill.data.normalize import normalize_chip, split_time_bands
from terrastill.errors import BadInputError, NotFoundError
from terrastill.training.augment import FlipRotate


def test_normalize_chip_nan_and_layout():
    arr = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # T, C, H, W
    arr[1, 2, 0, 1] = np.nan
    mean, std = [1.0, 2.0, 3.0], [2.0, 2.0, 0.0]
    x, valid = normalize_chip(arr, mean, std)
    assert x.shape == (3, 2, 2, 2) and x.dtype == torch.float32
    assert x[0, 1, 1, 1] == (arr[1, 0, 1, 1] - 1.0) / 2.0  # (C, T, H, W)
    assert x[2, 0, 0, 0] == arr[0, 2, 0, 0] - 3.0  # std 0 -> 1
    assert x[2, 1, 0, 1] == 0  # NaN -> 0
    assert valid.tolist() == [[True, False], [True, True]]
    _, valid_any = normalize_chip(arr, mean, std, require="any")
    assert valid_any.all()
    with pytest.raises(ValueError):
        normalize_chip(arr, mean[:2], std)


def test_normalize_chip_equals_the_plain_formula_to_the_bit():
    """The one-pass layout gives exactly np.where(finite, (a − m) / s, 0), swapped to C, T."""
    rng = np.random.default_rng(7)
    arr = (rng.random((4, 3, 5, 9, 7)) * 3000).astype(np.float32)  # N, T, C, H, W
    arr[rng.random(arr.shape) < 0.1] = np.nan
    arr[0, 0, 0, 0, 0] = np.inf
    mean = rng.random(5) * 1000
    std = np.concatenate([[0.0], rng.random(4) * 300])
    x, _ = normalize_chip(arr, mean, std)
    m = np.float32(mean).reshape(-1, 1, 1)
    s = np.where(np.float32(std) > 0, np.float32(std), np.float32(1)).reshape(-1, 1, 1)
    ref = np.where(np.isfinite(arr), (arr - m) / s, np.float32(0)).astype(np.float32)
    ref = np.ascontiguousarray(np.swapaxes(ref, -4, -3))
    assert x.is_contiguous() and x.shape == ref.shape
    assert np.array_equal(x.numpy().view(np.uint32), ref.view(np.uint32))


def test_normalize_chip_stack_equals_each_chip():
    """A stack of chips normalises to what each chip gives alone."""
    rng = np.random.default_rng(3)
    arr = rng.normal(size=(5, 2, 3, 4, 4)).astype(np.float32)  # N, T, C, H, W
    arr[rng.random(arr.shape) < 0.1] = np.nan
    mean, std = [0.1, 0.2, 0.3], [1.0, 2.0, 0.5]
    xs, valids = normalize_chip(arr, mean, std)
    assert xs.shape == (5, 3, 2, 4, 4) and valids.shape == (5, 4, 4)
    assert not valids.all() and valids.any()
    for chip, x, valid in zip(arr, xs, valids, strict=True):
        one, one_valid = normalize_chip(chip, mean, std)
        assert torch.equal(one, x) and torch.equal(one_valid, valid)


def test_split_time_bands():
    a = np.arange(6 * 2 * 2).reshape(6, 2, 2)
    out = split_time_bands(a, 3)
    assert out.shape == (3, 2, 2, 2) and out[1, 0, 0, 0] == a[2, 0, 0]


def test_dataset_items(tmp_path):
    root = write_chip_folder(tmp_path / "c", n_chips=6, size=16, num_steps=3)
    meta = read_dataset_meta(root)
    assert meta["bands"][0] == "blue" and len(meta["stats"]["mean"]) == 6
    ds = ChipDataset(root, "train")
    assert len(ds) == 4 and ds.class_names == ["land", "water"]
    item = ds[0]  # chip0000 has a NaN cloud patch in its last step
    assert item["image"].shape == (6, 3, 16, 16)
    assert torch.isfinite(item["image"]).all()
    assert item["label"].dtype == torch.int64
    assert (item["label"][:4, :6] == -1).all() and not item["valid"][:4, :6].any()
    assert (item["label"][0, :3] == -1).all()
    assert set(torch.unique(item["label"]).tolist()) <= {-1, 0, 1}
    counts = class_frequencies(ds, 2)
    assert counts.sum() > 0
    assert len(ChipDataset(root, "all")) == 6


def test_dataset_coords_and_tasks(tmp_path):
    root = write_chip_folder(tmp_path / "r", n_chips=5, size=16, task="regression")
    item = ChipDataset(root, "train", coords=True)[0]
    assert item["label"].dtype == torch.float32 and torch.isnan(item["label"][0, :3]).all()
    assert item["temporal_coords"].tolist()[0] == [2024.0, 14.0]
    assert item["location_coords"].tolist() == pytest.approx([10.0, 20.0])
    root = write_chip_folder(tmp_path / "k", n_chips=5, size=16, task="classification")
    assert ChipDataset(root, "train")[0]["label"].ndim == 0


def test_dataset_errors(tmp_path):
    with pytest.raises(NotFoundError):
        ChipDataset(tmp_path)
    root = write_chip_folder(tmp_path / "c", n_chips=3, size=16)
    meta = json.loads((root / "dataset.json").read_text())
    meta["stats"]["mean"] = [0.0]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match="one value per band"):
        read_dataset_meta(root)


def test_flip_rotate_moves_image_and_label_together():
    torch.manual_seed(0)
    h = w = 8
    image = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).repeat(2, 3, 1, 1)
    label = torch.arange(h * w).reshape(h, w)
    valid = label % 3 == 0
    aug = FlipRotate()
    seen = set()
    for _ in range(20):
        out = aug({"image": image, "label": label, "valid": valid, "id": "x"})
        assert torch.equal(out["image"][1, 2].long(), out["label"])
        assert torch.equal(out["valid"], out["label"] % 3 == 0)
        seen.add(tuple(out["label"][0, :2].tolist()))
    assert len(seen) > 3  # it does transform
