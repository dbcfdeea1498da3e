"""Task heads over the encoder tokens.

- ``segmentation`` / ``regression``: tokens of all frames are fused per patch location
  (B, T'·D, H/p, W/p), projected, and upsampled in ×2 stages (bilinear + 3×3 conv + BN + GELU)
  to full resolution. An optional *pixel skip* (a 3×3 conv over the normalised input pixels,
  all frames stacked) is concatenated before the last conv so that 30 m boundaries are not lost
  to the 4–16 px patch grid; it is a few thousand parameters.
- ``classification``: mean of the patch tokens -> LayerNorm -> Linear.
- ``embedding``: no head; the normalised encoder tokens themselves (encoder-only models).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "segmentation": {"channels": 128, "min_channels": 32, "pixel_skip": True, "skip_channels": 32,
                     "dropout": 0.0},
    "regression": {"channels": 128, "min_channels": 32, "pixel_skip": True, "skip_channels": 32,
                   "dropout": 0.0},
    "classification": {"dropout": 0.0},
    "embedding": {},
}


def full_head_config(cfg: dict[str, Any]) -> dict[str, Any]:
    kind = cfg.get("type", "segmentation")
    if kind not in HEAD_DEFAULTS:
        raise ValueError(f"unknown head type {kind!r}; expected one of {sorted(HEAD_DEFAULTS)}")
    out = {**HEAD_DEFAULTS[kind], **cfg, "type": kind}
    if kind == "regression":
        out["num_outputs"] = int(out.get("num_outputs", 1))
    elif kind == "embedding":
        out.pop("num_classes", None)
    else:
        out["num_classes"] = int(out.get("num_classes", 2))
    return out


def _conv_bn(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.GELU())


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, 1+L, D) tokens (cls first, time-major) -> (B, T'·D, H', W') feature map."""
    t, h, w = grid
    b, _, d = tokens.shape
    x = tokens[:, 1:, :].reshape(b, t, h, w, d)
    return x.permute(0, 1, 4, 2, 3).reshape(b, t * d, h, w)


class UpsamplingHead(nn.Module):
    """Progressive-upsampling dense head (segmentation logits or regression values)."""

    def __init__(self, cfg: dict[str, Any], embed_dim: int, frames: int, patch: int,
                 in_chans: int, num_steps: int) -> None:
        super().__init__()
        self.cfg = cfg
        out_ch = cfg["num_classes"] if cfg["type"] == "segmentation" else cfg["num_outputs"]
        ch = int(cfg["channels"])
        self.neck = _conv_bn(embed_dim * frames, ch, k=1)
        stages = []
        n_up = max(0, math.ceil(math.log2(max(patch, 1))))
        for _ in range(n_up):
            nxt = max(int(cfg["min_channels"]), ch // 2)
            stages.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear",
                                                    align_corners=False), _conv_bn(ch, nxt)))
            ch = nxt
        self.stages = nn.ModuleList(stages)
        self.pixel_skip = bool(cfg["pixel_skip"])
        fuse_in = ch
        if self.pixel_skip:
            sk = int(cfg["skip_channels"])
            self.skip = _conv_bn(in_chans * num_steps, sk)
            fuse_in += sk
        self.fuse = _conv_bn(fuse_in, ch)
        self.dropout = nn.Dropout2d(float(cfg["dropout"])) if cfg["dropout"] else nn.Identity()
        self.out = nn.Conv2d(ch, out_ch, 1)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int, int],
                x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.neck(tokens_to_map(tokens, grid))
        for stage in self.stages:
            y = stage(y)
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        if self.pixel_skip:
            b, c, t, h, w = x.shape
            y = torch.cat([y, self.skip(x.reshape(b, c * t, h, w))], dim=1)
        return self.out(self.dropout(self.fuse(y)))


class ClassificationHead(nn.Module):
    def __init__(self, cfg: dict[str, Any], embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(float(cfg["dropout"]))
        self.fc = nn.Linear(embed_dim, cfg["num_classes"])

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int, int],
                x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.norm(tokens[:, 1:, :].mean(dim=1))))


class TokenHead(nn.Module):
    """The embedding task's head: returns the encoder's normalised tokens (B, 1+L, D)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int, int],
                x: torch.Tensor) -> torch.Tensor:
        return tokens


def build_head(cfg: dict[str, Any], encoder_cfg: dict[str, Any]) -> nn.Module:
    cfg = full_head_config(cfg)
    if cfg["type"] == "embedding":
        return TokenHead(cfg)
    d = int(encoder_cfg["embed_dim"])
    pt, ph, _ = encoder_cfg["patch_size"]
    frames = int(encoder_cfg["num_frames"]) // int(pt)
    if cfg["type"] == "classification":
        return ClassificationHead(cfg, d)
    return UpsamplingHead(cfg, d, frames, int(ph), int(encoder_cfg["in_chans"]),
                          int(encoder_cfg["num_frames"]))
