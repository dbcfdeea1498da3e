"""Crash-safe writes: a full disk or unwritable folder gives a clear error and no file."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from affine import Affine

from terrastill.atomic import atomic_path, write_text_atomic
from terrastill.data.grid import GridSpec
from terrastill.data.rasters import write_raster
from terrastill.errors import OutputError


def test_disk_full_while_writing_leaves_nothing(tmp_path, monkeypatch):
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    grid = GridSpec(32633, Affine(30, 0, 0, 0, -30, 960), 32, 32)
    with pytest.raises(OutputError, match="No space left on device"):
        write_raster(tmp_path / "chip.tif", np.zeros((2, 32, 32), np.float32), grid, np.nan)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write here"):
        write_text_atomic(blocker / "sub" / "a.json", "{}")


def test_a_failure_inside_the_block_removes_the_temporary_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == []
