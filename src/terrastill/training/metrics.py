"""Metrics on the ignore-masked pixels (torchmetrics underneath), returned as plain dicts.

Segmentation/classification: a confusion matrix (``MulticlassConfusionMatrix``, ignore -1)
gives per-class IoU, mIoU (mean over classes that occur in the target or the prediction),
overall accuracy and macro F1; ROC-AUC comes from the softmax probabilities (binary AUROC of the
positive class for 2 classes, one-vs-rest macro AUROC otherwise). AUROC is computed from
per-class score histograms (1000 bins, trapezoid rule): constant memory over millions of pixels
and fast in deterministic mode, where torchmetrics' binned AUROC falls back to an O(N·bins)
path. Regression: RMSE, MAE, R² over finite targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

IGNORE = -1
AUROC_BINS = 1000


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def scores_from_confusion(conf: np.ndarray, class_names: Sequence[str] | None = None
                          ) -> dict[str, Any]:
    """mIoU, per-class IoU, accuracy, macro F1 from a (K, K) confusion (rows = truth)."""
    conf = np.asarray(conf, dtype=np.float64)
    k = conf.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    tp = np.diag(conf)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        f1 = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    total = conf.sum()
    present = union > 0
    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "iou_per_class": {n: _nan_to_none(float(v)) for n, v in zip(names, iou, strict=True)},
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "macro_f1": float(np.nanmean(f1)) if present.any() else float("nan"),
        "f1_per_class": {n: _nan_to_none(float(v)) for n, v in zip(names, f1, strict=True)},
        "n_pixels": int(total),
        "support": {n: int(v) for n, v in zip(names, conf.sum(axis=1), strict=True)},
        "confusion": conf.astype(np.int64).tolist(),
    }


def majority_baseline(conf: np.ndarray, majority: int | None = None) -> dict[str, float]:
    """Scores of predicting one class (the most frequent truth class by default) everywhere."""
    conf = np.asarray(conf, dtype=np.float64)
    truth = conf.sum(axis=1)
    m = int(np.argmax(truth)) if majority is None else int(majority)
    base = np.zeros_like(conf)
    base[:, m] = truth
    s = scores_from_confusion(base)
    return {"class": m, "miou": s["miou"], "accuracy": s["accuracy"], "macro_f1": s["macro_f1"]}


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC from positive/negative score histograms over equal bins (low -> high score)."""
    pos = np.asarray(pos, dtype=np.float64)[::-1]
    neg = np.asarray(neg, dtype=np.float64)[::-1]
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    tpr = np.concatenate([[0.0], np.cumsum(pos) / pos.sum()])
    fpr = np.concatenate([[0.0], np.cumsum(neg) / neg.sum()])
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))


class ScoreHistograms:
    """Per-class histograms of the class score for positives and negatives (one-vs-rest)."""

    def __init__(self, num_classes: int, bins: int = AUROC_BINS) -> None:
        self.k = num_classes
        self.bins = bins
        self.reset()

    def reset(self) -> None:
        self.pos = torch.zeros(self.k, self.bins, dtype=torch.float64)
        self.neg = torch.zeros(self.k, self.bins, dtype=torch.float64)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        probs = probs.detach().float().cpu()
        target = target.detach().cpu()
        idx = (probs * self.bins).long().clamp_(0, self.bins - 1)  # N, K
        for c in range(self.k):
            is_pos = target == c
            self.pos[c] += torch.bincount(idx[is_pos, c], minlength=self.bins).double()
            self.neg[c] += torch.bincount(idx[~is_pos, c], minlength=self.bins).double()

    def compute(self) -> float:
        if self.k == 2:
            return auc_from_histograms(self.pos[1].numpy(), self.neg[1].numpy())
        aucs = [auc_from_histograms(self.pos[c].numpy(), self.neg[c].numpy())
                for c in range(self.k)]
        aucs = [a for a in aucs if not math.isnan(a)]
        return float(np.mean(aucs)) if aucs else float("nan")


class ClassMetrics:
    """Accumulates segmentation (B, K, H, W) or classification (B, K) logits vs targets."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = int(num_classes)
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE)
        self.auroc = ScoreHistograms(self.num_classes)

    def to(self, device: torch.device | str) -> ClassMetrics:
        self.confusion = self.confusion.to(device)
        return self

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits = logits.detach().float()
        if logits.ndim == 4:  # B, K, H, W -> N, K
            logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        target = target.detach().reshape(-1).long()
        keep = target != IGNORE
        if not keep.any():
            return
        logits, target = logits[keep], target[keep]
        probs = logits.softmax(dim=-1)
        self.confusion.update(probs.argmax(dim=-1), target)
        self.auroc.update(probs, target)

    def compute(self) -> dict[str, Any]:
        conf = self.confusion.compute().cpu().numpy()
        out = scores_from_confusion(conf, self.class_names)
        out["roc_auc"] = self.auroc.compute()
        return out

    def reset(self) -> None:
        self.confusion.reset()
        self.auroc.reset()


class RegressionMetrics:
    """RMSE, MAE, R² over finite targets; ``pred`` shaped like the target (or (B,1,H,W))."""

    def __init__(self) -> None:
        self.mse = MeanSquaredError()
        self.mae = MeanAbsoluteError()
        self.r2 = R2Score()
        self.n = 0

    def to(self, device: torch.device | str) -> RegressionMetrics:
        self.mse, self.mae, self.r2 = self.mse.to(device), self.mae.to(device), self.r2.to(device)
        return self

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.detach().float().reshape(target.shape).reshape(-1)
        target = target.detach().float().reshape(-1)
        keep = torch.isfinite(target)
        if not keep.any():
            return
        p, t = pred[keep], target[keep]
        self.mse.update(p, t)
        self.mae.update(p, t)
        self.r2.update(p, t)
        self.n += int(keep.sum())

    def compute(self) -> dict[str, Any]:
        if self.n == 0:
            return {"rmse": float("nan"), "mae": float("nan"), "r2": float("nan"), "n_pixels": 0}
        r2 = float(self.r2.compute()) if self.n > 1 else float("nan")
        return {"rmse": math.sqrt(float(self.mse.compute())), "mae": float(self.mae.compute()),
                "r2": r2, "n_pixels": self.n}

    def reset(self) -> None:
        self.mse.reset()
        self.mae.reset()
        self.r2.reset()
        self.n = 0


def make_metrics(task: str, num_classes: int, class_names: Sequence[str] | None = None
                 ) -> ClassMetrics | RegressionMetrics:
    if task == "regression":
        return RegressionMetrics()
    return ClassMetrics(num_classes, class_names)


# The validation metric each task is judged by, and whether higher is better.
MONITOR = {"segmentation": ("miou", "max"), "classification": ("miou", "max"),
           "regression": ("rmse", "min")}
