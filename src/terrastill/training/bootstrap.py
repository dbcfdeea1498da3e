"""95 % bootstrap intervals of evaluation metrics, resampling whole chips (not pixels)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

RESAMPLES = 1000
LEVEL = 0.95


def per_chip_confusion(logits: torch.Tensor, target: torch.Tensor, num_classes: int
                       ) -> np.ndarray:
    """(B, K, K) confusion counts (rows = truth) of each sample of a batch: logits (B, K, H, W)
    or (B, K), targets (B, H, W) or (B,), ignore −1."""
    b, k = logits.shape[0], int(num_classes)
    pred = logits.detach().argmax(dim=1).reshape(b, -1).long()
    truth = target.detach().reshape(b, -1).long()
    keep = (truth >= 0) & (truth < k) & (pred < k)
    sample = torch.arange(b, device=pred.device).unsqueeze(1).expand_as(pred)
    idx = (sample * k * k + truth * k + pred)[keep]
    counts = torch.bincount(idx, minlength=b * k * k)
    return counts.reshape(b, k, k).cpu().numpy().astype(np.int64)


def per_chip_regression(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """(B, 5) sums per sample over finite targets: n, Σe², Σ|e|, Σt, Σt²."""
    b = target.shape[0]
    p = pred.detach().float().reshape(target.shape).reshape(b, -1)
    t = target.detach().float().reshape(b, -1)
    keep = torch.isfinite(t)
    t0 = torch.where(keep, t, torch.zeros_like(t))
    e = torch.where(keep, p - t0, torch.zeros_like(t))
    cols = [keep.sum(1).double(), (e.double() ** 2).sum(1), e.double().abs().sum(1),
            t0.double().sum(1), (t0.double() ** 2).sum(1)]
    return torch.stack(cols, dim=1).cpu().numpy()


def _resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(R, n) multiplicities of each chip in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return None
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return [round(float(lo), 6), round(float(hi), 6)]


def confusion_intervals(per_chip: np.ndarray, class_names: Sequence[str],
                        resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
                        ) -> dict[str, Any]:
    """Percentile intervals of mIoU, accuracy, macro F1 and per-class IoU over chip resamples.

    A chip is the unit because its pixels are not independent: resampling pixels would give
    intervals far too narrow."""
    per_chip = np.asarray(per_chip, dtype=np.float64)
    n, k = per_chip.shape[0], per_chip.shape[1]
    out: dict[str, Any] = {"level": level, "resamples": resamples, "unit": "chip", "chips": n}
    if n == 0:
        return out
    conf = _resample_weights(n, resamples, seed) @ per_chip.reshape(n, k * k)
    conf = conf.reshape(resamples, k, k)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    fp, fn = conf.sum(axis=1) - tp, conf.sum(axis=2) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        f1 = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        total = conf.sum(axis=(1, 2))
        acc = np.where(total > 0, tp.sum(axis=1) / total, np.nan)
    with warnings.catch_warnings():  # a resample with no labelled pixel: NaN, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        miou, mf1 = np.nanmean(iou, axis=1), np.nanmean(f1, axis=1)
    support = per_chip.sum(axis=(0, 2))  # labelled pixels per class
    seen = support[support > 0]
    n_min = float(seen.min()) if seen.size else 0.0
    out.update({"miou": _widened(_interval(miou, level), n_min),
                "accuracy": _widened(_interval(acc, level), float(support.sum())),
                "macro_f1": _widened(_interval(mf1, level), n_min),
                "iou_per_class": {name: _widened(_interval(iou[:, c], level), float(support[c]))
                                  for c, name in enumerate(class_names[:k])}})
    return out


def _widened(interval: list[float] | None, n: float) -> list[float] | None:
    """When every resample scores perfectly (few pixels, no error), the percentile interval
    has no width though the evidence is thin: widen its lower end by the rule of three (with
    no error in n trials, the error rate is below 3/n at 95 %)."""
    if interval is None or interval[0] < 1.0 - 1e-12 or n <= 0:  # only a perfect score
        return interval
    return [round(max(0.0, interval[0] - 3.0 / n), 6), interval[1]]


def regression_intervals(per_chip: np.ndarray, resamples: int = RESAMPLES,
                         level: float = LEVEL, seed: int = 0) -> dict[str, Any]:
    """Percentile intervals of RMSE, MAE and R² over chip resamples."""
    per_chip = np.asarray(per_chip, dtype=np.float64)
    n = per_chip.shape[0]
    out: dict[str, Any] = {"level": level, "resamples": resamples, "unit": "chip", "chips": n}
    if n == 0:
        return out
    s = _resample_weights(n, resamples, seed) @ per_chip  # (R, 5)
    cnt, sse, sae, st, st2 = (s[:, i] for i in range(5))
    with np.errstate(invalid="ignore", divide="ignore"):
        ss_tot = st2 - st**2 / cnt
        out.update({"rmse": _interval(np.sqrt(sse / cnt), level),
                    "mae": _interval(sae / cnt, level),
                    "r2": _interval(np.where(ss_tot > 0, 1 - sse / ss_tot, np.nan), level)})
    return out


def metric_intervals(task: str, per_chip: np.ndarray, class_names: Sequence[str],
                     resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """The intervals of :func:`confusion_intervals` or :func:`regression_intervals`."""
    if task == "regression":
        return regression_intervals(per_chip, resamples, seed=seed)
    return confusion_intervals(per_chip, class_names, resamples, seed=seed)
