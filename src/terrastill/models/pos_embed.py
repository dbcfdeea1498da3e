"""Fixed sin-cos position embeddings, laid out exactly as the public Prithvi code lays them out.

Prithvi's 3D embedding splits the channels 6/16 (width) + 6/16 (height) + 4/16 (time), each a
1D sin-cos code of the integer grid position (sin half then cos half), tokens ordered
time-major then row-major, with an all-zero row prepended for the cls token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim) code: sin(pos·ω) ‖ cos(pos·ω), ω = 10000^(-2i/D)."""
    if embed_dim % 2:
        raise ValueError("embed_dim must be even")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", np.asarray(pos, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_1d_torch(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Torch version of :func:`sincos_1d` for float positions (year, day of year, lat, lon)."""
    if embed_dim % 2:
        raise ValueError("embed_dim must be even")
    omega = torch.arange(embed_dim // 2, dtype=pos.dtype, device=pos.device) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = torch.einsum("m,d->md", pos.reshape(-1), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_3d(embed_dim: int, grid: Sequence[int], cls_token: bool = True) -> torch.Tensor:
    """(1, [1+] T*H*W, D) float32 embedding for a (T, H, W) token grid."""
    if embed_dim % 16:
        raise ValueError(f"embed_dim must be a multiple of 16 for the 3D code, not {embed_dim}")
    t, h, w = (int(g) for g in grid)
    w_dim = embed_dim // 16 * 6
    h_dim = embed_dim // 16 * 6
    t_dim = embed_dim // 16 * 4
    w_emb = np.tile(sincos_1d(w_dim, np.arange(w)), (t * h, 1))
    h_emb = np.tile(np.repeat(sincos_1d(h_dim, np.arange(h)), w, axis=0), (t, 1))
    t_emb = np.repeat(sincos_1d(t_dim, np.arange(t)), h * w, axis=0)
    emb = np.concatenate([w_emb, h_emb, t_emb], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]
) -> torch.Tensor:
    """Resample a (1, 1+T*H*W, D) embedding from ``src_grid`` to ``dst_grid`` (T, H, W).

    The cls row is kept; the patch rows are resampled trilinearly (corners aligned), which is
    what fine-tuning at another chip size or number of frames needs.
    """
    src = tuple(int(g) for g in src_grid)
    dst = tuple(int(g) for g in dst_grid)
    n_src = src[0] * src[1] * src[2]
    if pos_embed.shape[1] != n_src + 1:
        raise ValueError(
            f"position embedding has {pos_embed.shape[1]} rows, grid {src} needs {n_src + 1}"
        )
    if src == dst:
        return pos_embed.clone()
    d = pos_embed.shape[-1]
    cls_row = pos_embed[:, :1]
    grid = pos_embed[:, 1:].reshape(1, *src, d).permute(0, 4, 1, 2, 3).float()
    grid = F.interpolate(grid, size=dst, mode="trilinear", align_corners=True)
    patch = grid.permute(0, 2, 3, 4, 1).reshape(1, -1, d).to(pos_embed.dtype)
    return torch.cat([cls_row, patch], dim=1)
