"""Geometry-honest augmentations: the same flip/rot90 on image, label and validity mask."""

from __future__ import annotations

from typing import Any

import torch


class FlipRotate:
    """Random horizontal/vertical flip and 0/90/180/270° rotation of an item's spatial axes.

    Draws from torch's global generator, which ``seed_everything`` seeds: runs are repeatable.
    Chip-level labels (classification) are left alone.
    """

    def __init__(self, p_flip: float = 0.5, rotate: bool = True) -> None:
        self.p_flip = p_flip
        self.rotate = rotate

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        r = torch.rand(3)
        k = int(r[2] * 4) if self.rotate else 0
        out = dict(item)
        for key in ("image", "label", "valid"):
            v = out.get(key)
            if not isinstance(v, torch.Tensor) or v.ndim < 2:
                continue
            if r[0] < self.p_flip:
                v = v.flip(-1)
            if r[1] < self.p_flip:
                v = v.flip(-2)
            if k:
                v = torch.rot90(v, k, dims=(-2, -1))
            out[key] = v.contiguous()
        return out
