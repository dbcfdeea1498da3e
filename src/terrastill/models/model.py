"""The full model: Prithvi-compatible encoder + task head, rebuilt from one ``arch`` dict."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from terrastill.models.encoder import PrithviViT, full_encoder_config
from terrastill.models.heads import build_head, full_head_config

TASKS = ("segmentation", "regression", "classification", "embedding")


def full_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with encoder and head defaults filled in (what the model file stores)."""
    if arch.get("family") == "cnn":
        from terrastill.models.cnn import full_cnn_arch

        return full_cnn_arch(arch)
    arch = copy.deepcopy(arch)
    head = full_head_config(arch.get("head", {"type": arch.get("task", "segmentation")}))
    task = arch.get("task", head["type"])
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return {**arch, "task": task, "encoder": full_encoder_config(arch["encoder"]), "head": head}


class TerraModel(nn.Module):
    """``encoder`` (:class:`PrithviViT`) + ``head``; input (B, C, T, H, W).

    Output: segmentation (B, K, H, W) logits, regression (B, 1, H, W), classification (B, K),
    embedding (B, 1+L, D) normalised encoder tokens (an encoder-only model, e.g. from
    ``terrastill pretrain``).

    With derived index channels (``arch["inputs"]``, see :mod:`terrastill.data.indices`) the
    caller still gives the C raw bands: ``inputs`` appends the indices, and a pre-hook on the
    patch embedding does the same when the encoder is called alone (``terrastill embed``).
    """

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        self.arch = full_arch(arch)
        self.task: str = self.arch["task"]
        self.encoder = PrithviViT(**self.arch["encoder"])
        self.head = build_head(self.arch["head"], self.encoder.config)
        self.inputs: nn.Module | None = None
        if (self.arch.get("inputs") or {}).get("indices"):
            from terrastill.data.indices import IndexLayer

            self.inputs = IndexLayer(self.arch["inputs"])
            self.encoder.patch_embed.register_forward_pre_hook(self.inputs.pre_hook)

    def forward_with_features(
        self,
        x: torch.Tensor,
        return_blocks: Sequence[int] | None = None,
        temporal_coords: torch.Tensor | None = None,
        location_coords: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Head output plus the raw outputs (B, 1+L, D) of encoder blocks ``return_blocks``."""
        if self.inputs is not None:
            x = self.inputs(x)
        tokens, feats = self.encoder.forward_features(
            x, temporal_coords, location_coords, return_blocks=return_blocks
        )
        grid = self.encoder.token_grid(x.shape)
        return self.head(tokens, grid, x), feats

    def forward_features(self, x: torch.Tensor, return_blocks: Sequence[int] | None = None,
                         **coords: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder tokens (normalised, cls first) and the chosen blocks' raw outputs."""
        return self.encoder.forward_features(x, coords.get("temporal_coords"),
                                             coords.get("location_coords"), return_blocks)

    def forward(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_features(x, None, temporal_coords, location_coords)[0]

    @property
    def depth(self) -> int:
        return self.encoder.depth

    def truncate(self, n_blocks: int) -> TerraModel:
        return truncate(self, n_blocks)


def truncate(model: TerraModel, n_blocks: int) -> TerraModel:
    """A copy of ``model`` keeping encoder blocks[:n_blocks] (weights copied, head included).

    The final ``norm`` and the head are kept: the student starts from the teacher's first
    ``n_blocks`` blocks followed by the teacher's norm and head.
    """
    depth = model.encoder.depth
    if not 1 <= n_blocks <= depth:
        raise ValueError(f"n_blocks must be in 1..{depth}, got {n_blocks}")
    arch = copy.deepcopy(model.arch)
    arch["encoder"]["depth"] = int(n_blocks)
    student = TerraModel(arch)
    state = {k: v for k, v in model.state_dict().items()
             if not (k.startswith("encoder.blocks.") and int(k.split(".")[2]) >= n_blocks)}
    student.load_state_dict(state, strict=True)
    return student
