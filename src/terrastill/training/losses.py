"""Task losses: cross-entropy (ignore index -1, optional class weights), Dice, focal, and
masked MSE / Huber for regression (NaN targets ignored)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from terrastill.errors import BadInputError

IGNORE = -1
SEG_LOSSES = ("ce", "dice", "focal", "ce+dice")
REG_LOSSES = ("mse", "huber")


class DiceLoss(nn.Module):
    """Soft multi-class Dice over the non-ignored pixels (mean over classes present)."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        keep = target != IGNORE
        probs = logits.float().softmax(dim=1) * keep.unsqueeze(1)
        onehot = F.one_hot(target.clamp(min=0), k).permute(0, 3, 1, 2).float()
        onehot = onehot * keep.unsqueeze(1)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return 1 - dice.mean()


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=IGNORE,
                             reduction="none")
        keep = target != IGNORE
        if not keep.any():
            return logits.sum() * 0
        pt = torch.exp(-ce[keep])
        return ((1 - pt) ** self.gamma * ce[keep]).mean()


class CrossEntropy(nn.Module):
    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != IGNORE).any():
            return logits.sum() * 0
        return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=IGNORE)


class Sum(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


class MaskedRegression(nn.Module):
    """MSE or Huber over finite targets; ``pred`` (B, 1, H, W) or (B, H, W)."""

    def __init__(self, kind: str = "mse", delta: float = 1.0) -> None:
        super().__init__()
        self.kind = kind
        self.delta = delta

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = pred.float().reshape(target.shape)
        keep = torch.isfinite(target)
        if not keep.any():
            return pred.sum() * 0
        if self.kind == "huber":
            return F.huber_loss(pred[keep], target[keep], delta=self.delta)
        return F.mse_loss(pred[keep], target[keep])


def build_loss(task: str, name: str | None = None,
               class_weights: Sequence[float] | None = None) -> nn.Module:
    """The loss module for ``task`` (``name`` defaults to ``ce`` or ``mse``)."""
    w = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights else None
    if task == "regression":
        name = name or "mse"
        if name not in REG_LOSSES:
            raise BadInputError(f"loss {name!r} is not for regression; use one of {REG_LOSSES}")
        return MaskedRegression(name)
    name = name or "ce"
    if name not in SEG_LOSSES or (task == "classification" and name not in ("ce", "focal")):
        raise BadInputError(f"loss {name!r} is not available for {task}")
    if name == "ce":
        return CrossEntropy(w)
    if name == "focal":
        return FocalLoss(weight=w)
    if name == "dice":
        return DiceLoss()
    return Sum(CrossEntropy(w), DiceLoss())
