"""A Prithvi-compatible ViT encoder in plain PyTorch.

Parameter names follow the public Prithvi code (which builds on timm's ``Block``), so official
checkpoints load key for key: ``patch_embed.proj`` (Conv3d, weight (D, C, t, p, p)),
``cls_token``, the ``pos_embed`` buffer (fixed 3D sin-cos, cls row first), ``blocks.{i}.norm1``,
``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``, ``blocks.{i}.norm2``, ``blocks.{i}.mlp.fc1``,
``blocks.{i}.mlp.fc2``, ``norm``; optional ``temporal_embed_enc`` / ``location_embed_enc``
(Prithvi-EO-2.0 "TL" models) with a ``scale`` parameter (learned) or buffer (fixed).

Input is (B, C, T, H, W). ``forward_features`` returns the normalised tokens (cls first) and,
on request, the output of chosen blocks for feature distillation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from terrastill.models.pos_embed import interpolate_pos_embed, sincos_1d_torch, sincos_3d

ENCODER_DEFAULTS: dict[str, Any] = {
    "img_size": 224,
    "patch_size": [1, 16, 16],
    "num_frames": 1,
    "in_chans": 6,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 4.0,
    "norm_eps": 1e-6,
    "coords_encoding": [],
    "coords_scale_learn": False,
    "drop_path": 0.0,
}


def full_encoder_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every default filled in and the patch size as [t, p, p]."""
    out = {**ENCODER_DEFAULTS, **copy.deepcopy(cfg)}
    ps = out["patch_size"]
    if isinstance(ps, int):
        ps = [1, ps, ps]
    out["patch_size"] = [int(v) for v in ps]
    out["coords_encoding"] = list(out.get("coords_encoding") or [])
    return out


class PatchEmbed(nn.Module):
    """3D patch embedding: Conv3d with kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, patch_size: Sequence[int], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = tuple(int(v) for v in patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size,
                              stride=self.patch_size, bias=True)

    def grid(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        pt, ph, pw = self.patch_size
        return t // pt, h // ph, w // pw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # B, D, T', H', W'
        return x.flatten(2).transpose(1, 2)  # B, L, D


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block with timm's parameter names."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class _CoordsScale(nn.Module):
    def __init__(self, trainable: bool) -> None:
        super().__init__()
        if trainable:
            self.scale = nn.Parameter(torch.full((1,), 0.1))
        else:
            self.register_buffer("scale", torch.ones(1))


class TemporalEncoder(_CoordsScale):
    """(B, T, 2) year and day of year -> (B, T*tokens_per_frame, D), as in Prithvi-EO-2.0."""

    def __init__(self, embed_dim: int, trainable_scale: bool = False) -> None:
        super().__init__(trainable_scale)
        self.year_dim = embed_dim // 2
        self.day_dim = embed_dim - self.year_dim

    def forward(self, coords: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        shape = (*coords.shape[:2], -1)
        coords = coords.float()
        year = sincos_1d_torch(self.year_dim, coords[:, :, 0].flatten()).reshape(shape)
        day = sincos_1d_torch(self.day_dim, coords[:, :, 1].flatten()).reshape(shape)
        emb = self.scale * torch.cat([year, day], dim=-1)
        return torch.repeat_interleave(emb, tokens_per_frame, dim=1)


class LocationEncoder(_CoordsScale):
    """(B, 2) lat, lon -> (B, 1, D), as in Prithvi-EO-2.0."""

    def __init__(self, embed_dim: int, trainable_scale: bool = False) -> None:
        super().__init__(trainable_scale)
        self.lat_dim = embed_dim // 2
        self.lon_dim = embed_dim - self.lat_dim

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        shape = (coords.shape[0], 1, -1)
        coords = coords.float()
        lat = sincos_1d_torch(self.lat_dim, coords[:, 0].flatten()).reshape(shape)
        lon = sincos_1d_torch(self.lon_dim, coords[:, 1].flatten()).reshape(shape)
        return self.scale * torch.cat([lat, lon], dim=-1)


class PrithviViT(nn.Module):
    """Prithvi encoder: 3D patch embed + fixed 3D sin-cos positions + ViT blocks + final norm."""

    def __init__(self, **cfg: Any) -> None:
        super().__init__()
        cfg = full_encoder_config(cfg)
        self.config = cfg
        d = int(cfg["embed_dim"])
        self.embed_dim = d
        self.in_chans = int(cfg["in_chans"])
        self.num_frames = int(cfg["num_frames"])
        img = int(cfg["img_size"])
        self.patch_embed = PatchEmbed(cfg["patch_size"], self.in_chans, d)
        self.grid_size = self.patch_embed.grid(self.num_frames, img, img)
        if min(self.grid_size) < 1:
            raise ValueError(f"patch size {cfg['patch_size']} is larger than the input "
                             f"({self.num_frames}, {img}, {img})")
        coords = cfg["coords_encoding"]
        self.temporal_encoding = "time" in coords
        self.location_encoding = "location" in coords
        if self.temporal_encoding:
            self.temporal_embed_enc = TemporalEncoder(d, cfg["coords_scale_learn"])
        if self.location_encoding:
            self.location_embed_enc = LocationEncoder(d, cfg["coords_scale_learn"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", sincos_3d(d, self.grid_size, cls_token=True))
        depth = int(cfg["depth"])
        dpr = [float(cfg["drop_path"]) * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(d, int(cfg["num_heads"]), float(cfg["mlp_ratio"]), float(cfg["norm_eps"]), dpr[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(d, eps=float(cfg["norm_eps"]))
        self._pos_cache: dict[tuple[int, int, int], torch.Tensor] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def _pos_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        if grid == tuple(self.grid_size):
            return self.pos_embed
        key = grid
        cached = self._pos_cache.get(key)
        if cached is None or cached.device != self.pos_embed.device:
            cached = interpolate_pos_embed(self.pos_embed, self.grid_size, grid)
            self._pos_cache[key] = cached
        return cached.to(self.pos_embed.dtype)

    def embed(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
              location_coords: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, 1+L, D) tokens before the first block."""
        if x.ndim == 4:
            x = x.unsqueeze(2)
        grid = self.patch_embed.grid(*x.shape[-3:])
        tokens = self.patch_embed(x)
        pos = self._pos_for(grid)
        tokens = tokens + pos[:, 1:, :]
        if self.temporal_encoding and temporal_coords is not None:
            tokens = tokens + self.temporal_embed_enc(temporal_coords, grid[1] * grid[2])
        if self.location_encoding and location_coords is not None:
            tokens = tokens + self.location_embed_enc(location_coords)
        cls = (self.cls_token + pos[:, :1, :]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def forward_features(
        self,
        x: torch.Tensor,
        temporal_coords: torch.Tensor | None = None,
        location_coords: torch.Tensor | None = None,
        return_blocks: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised tokens (B, 1+L, D) and the raw outputs of ``return_blocks`` (0-based;
        negative indices count from the end), in the order asked."""
        wanted = [b if b >= 0 else self.depth + b for b in (return_blocks or [])]
        feats: dict[int, torch.Tensor] = {}
        h = self.embed(x, temporal_coords, location_coords)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in wanted:
                feats[i] = h
        return self.norm(h), [feats[i] for i in wanted]

    def forward(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(x, temporal_coords, location_coords)[0]

    def token_grid(self, x_shape: Sequence[int]) -> tuple[int, int, int]:
        """(T', H', W') token grid for an input of shape (..., T, H, W)."""
        return self.patch_embed.grid(*x_shape[-3:])


def num_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, from ``torch.utils.flop_counter`` (flops / 2).

    Attention is counted: the fused CPU attention kernel is invisible to the counter (it
    reports 0 for it), so the pass runs with the math backend, whose matrix products it sees —
    2·N²·D per block for N tokens of width D, exactly the analytic count."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), \
                FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return int(math.ceil(counter.get_total_flops() / 2))
