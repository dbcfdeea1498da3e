"""Prithvi's masked autoencoder: our encoder + a light decoder, in the official key layout.

State-dict keys follow Prithvi-EO-2.0 (``encoder.*`` then ``decoder.decoder_embed``,
``decoder.mask_token``, ``decoder.decoder_pos_embed`` (fixed 3D sin-cos buffer, cls row first),
``decoder.decoder_blocks.N.*``, ``decoder.decoder_norm``, ``decoder.decoder_pred``), so our
checkpoints and the official ones load through the same path
(:func:`terrastill.models.weights.load_pretrained`).

Inputs are normalised (B, C, T, H, W) tensors in which NaN marks nodata: NaN is zero-filled
for the encoder and excluded from the loss.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from terrastill.models.encoder import Block, PrithviViT, full_encoder_config
from terrastill.models.pos_embed import interpolate_pos_embed, sincos_3d


def decoder_defaults(embed_dim: int) -> dict[str, int]:
    """A light decoder scaled with the encoder: 64-d × 1 block for ``tiny`` (96-d), 128-d ×
    2 for ``small`` (192-d), Prithvi's 512-d × 8 for ViT-L and above."""
    if embed_dim <= 128:
        return {"decoder_embed_dim": 64, "decoder_depth": 1, "decoder_num_heads": 2}
    if embed_dim <= 384:
        return {"decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4}
    if embed_dim <= 768:
        return {"decoder_embed_dim": 256, "decoder_depth": 4, "decoder_num_heads": 8}
    return {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}


class MAEDecoder(nn.Module):
    """Embed the visible tokens, insert mask tokens, add fixed positions, blocks, predict."""

    def __init__(self, encoder_cfg: dict[str, Any], decoder_embed_dim: int,
                 decoder_depth: int, decoder_num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        d, dd = int(encoder_cfg["embed_dim"]), int(decoder_embed_dim)
        pt, ph, pw = encoder_cfg["patch_size"]
        img = int(encoder_cfg["img_size"])
        self.grid_size = (int(encoder_cfg["num_frames"]) // pt, img // ph, img // pw)
        eps = float(encoder_cfg["norm_eps"])
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", sincos_3d(dd, self.grid_size, cls_token=True))
        self.decoder_blocks = nn.ModuleList(
            Block(dd, int(decoder_num_heads), mlp_ratio, eps) for _ in range(int(decoder_depth)))
        self.decoder_norm = nn.LayerNorm(dd, eps=eps)
        self.decoder_pred = nn.Linear(dd, pt * ph * pw * int(encoder_cfg["in_chans"]))
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, 1+L_keep, D) encoder output -> (B, L, patch values) predictions."""
        x = self.decoder_embed(latent)
        b, n_keep, dd = x.shape
        n_total = ids_restore.shape[1]
        masks = self.mask_token.expand(b, n_total - (n_keep - 1), -1)
        patches = torch.cat([x[:, 1:], masks], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dd))
        pos = self.decoder_pos_embed
        if tuple(grid) != tuple(self.grid_size):
            pos = interpolate_pos_embed(pos, self.grid_size, grid)
        x = torch.cat([x[:, :1], patches], dim=1) + pos
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


def random_masking(n: int, length: int, mask_ratio: float, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking of ``length`` tokens (MAE's shuffle-by-noise).

    Returns ``ids_keep`` (n, K) with K = round((1 - mask_ratio)·length) (at least 1),
    ``mask`` (n, length) with 1 = masked, and ``ids_restore`` (n, length).
    """
    keep = max(1, int(round((1.0 - float(mask_ratio)) * length)))
    noise = torch.rand(n, length, generator=generator, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(n, length, device=device)
    mask[:, :keep] = 0
    return ids_keep, torch.gather(mask, 1, ids_restore), ids_restore


def patchify(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, L, pt·ph·pw·C), tokens time-major as the encoder orders them."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch_size
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                      mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    """MSE over the valid values of the masked patches (``valid`` excludes NaN pixels).

    ``norm_pix`` standardises each patch's target by its own valid values (Prithvi's
    ``norm_pix_loss``). Returns 0 (with a gradient) when no masked value is valid.
    """
    w = valid.float() * mask.unsqueeze(-1)
    target = torch.where(valid, target, torch.zeros_like(target))
    if norm_pix:
        n = valid.float().sum(-1, keepdim=True).clamp_min(1.0)
        mean = (target * valid).sum(-1, keepdim=True) / n
        var = (((target - mean) * valid) ** 2).sum(-1, keepdim=True) / (n - 1).clamp_min(1.0)
        target = (target - mean) / (var + 1e-6).sqrt()
    err = (pred - target) ** 2 * w
    return err.sum() / w.sum().clamp_min(1.0)


class MaskedAutoencoder(nn.Module):
    """``encoder`` (:class:`PrithviViT`) + ``decoder`` (:class:`MAEDecoder`)."""

    def __init__(self, encoder_cfg: dict[str, Any], decoder_cfg: dict[str, int] | None = None,
                 norm_pix_loss: bool = False) -> None:
        super().__init__()
        enc = full_encoder_config(encoder_cfg)
        dec = {**decoder_defaults(int(enc["embed_dim"])), **(decoder_cfg or {})}
        self.config = {"encoder": copy.deepcopy(enc), "decoder": dec,
                       "norm_pix_loss": bool(norm_pix_loss)}
        self.encoder = PrithviViT(**enc)
        self.decoder = MAEDecoder(enc, dec["decoder_embed_dim"], dec["decoder_depth"],
                                  dec["decoder_num_heads"], float(enc["mlp_ratio"]))
        self.norm_pix_loss = bool(norm_pix_loss)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.encoder.patch_embed.patch_size)  # type: ignore[return-value]

    def forward_encoder(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encoder over the cls token and the kept patch tokens only -> (B, 1+K, D)."""
        tokens = self.encoder.embed(x)
        cls, patches = tokens[:, :1], tokens[:, 1:]
        kept = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        h = torch.cat([cls, kept], dim=1)
        for block in self.encoder.blocks:
            h = block(h)
        return self.encoder.norm(h)

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.75,
                generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predictions (B, L, P), mask (B, L)) for a normalised input with NaN nodata."""
        valid = torch.isfinite(x)
        x0 = torch.where(valid, x, torch.zeros_like(x))
        grid = self.encoder.token_grid(x.shape)
        length = grid[0] * grid[1] * grid[2]
        ids_keep, mask, ids_restore = random_masking(x.shape[0], length, mask_ratio,
                                                     x.device, generator)
        latent = self.forward_encoder(x0, ids_keep)
        pred = self.decoder(latent, ids_restore, grid)
        ps = self.patch_size
        loss = masked_patch_loss(pred, patchify(x0, ps), patchify(valid, ps), mask,
                                 self.norm_pix_loss)
        return loss, pred, mask
