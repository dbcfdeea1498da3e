"""Score a prediction COG against a reference raster (e.g. the demo world's truth)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from terrastill.data.grid import GridSpec
from terrastill.data.read import read_asset


def confusion(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) confusion counts (rows = reference) over pixels valid in both."""
    ok = (ref >= 0) & (ref < num_classes) & (pred < num_classes)
    idx = ref[ok].astype(np.int64) * num_classes + pred[ok].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(conf: np.ndarray, class_names: Sequence[str]) -> dict:
    """mIoU, accuracy and per-class IoU from a confusion matrix (classes absent from both
    reference and prediction are left out of the mean)."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    total = conf.sum()
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "accuracy": float(tp.sum() / total) if total else float("nan"),
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou,
                                                                          strict=True)},
            "pixels": int(total)}


def compare_to_reference(prediction: Path, reference: Path, class_names: Sequence[str]) -> dict:
    """Read ``reference`` onto the prediction's grid (nearest) and score the class ids."""
    with rasterio.open(prediction) as src:
        pred = src.read(1)
        grid = GridSpec(src.crs.to_epsg(), src.transform, src.width, src.height)
        nodata = src.nodata if src.nodata is not None else 255
    ref = read_asset(str(reference), grid, fill=-1).astype(np.int64)
    pred = np.where(pred == nodata, len(class_names), pred)
    return scores(confusion(pred, ref, len(class_names)), class_names)


def read_pair(prediction: Path, reference: Path, num_classes: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) class ids on the prediction's grid; prediction nodata becomes
    ``num_classes`` and reference nodata -1, both left out of the scores (as in
    :func:`compare_to_reference`)."""
    with rasterio.open(prediction) as src:
        pred = src.read(1)
        grid = GridSpec(src.crs.to_epsg(), src.transform, src.width, src.height)
        nodata = src.nodata if src.nodata is not None else 255
    ref = read_asset(str(reference), grid, fill=-1).astype(np.int64)
    return np.where(pred == nodata, num_classes, pred), ref


def block_confusions(pred: np.ndarray, ref: np.ndarray, num_classes: int, block: int = 32
                     ) -> np.ndarray:
    """(N, K, K) confusion counts of the ``block``×``block`` px tiles holding any reference
    pixel: the resampling units of :func:`bootstrap_miou` (neighbouring pixels are not
    independent, tiles are closer to it)."""
    h, w = ref.shape
    out = []
    for r in range(0, h, block):
        for c in range(0, w, block):
            conf = confusion(pred[r:r + block, c:c + block], ref[r:r + block, c:c + block],
                             num_classes)
            if conf.sum():
                out.append(conf)
    return np.stack(out) if out else np.zeros((0, num_classes, num_classes), np.int64)


def bootstrap_miou(confs: np.ndarray, class_names: Sequence[str], n: int = 1000,
                   seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mIoU over tiles (``confs``: (N, K, K))."""
    if len(confs) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(int(n)):
        pick = rng.integers(0, len(confs), len(confs))
        vals.append(scores(confs[pick].sum(0), class_names)["miou"])
    a = (1 - level) / 2
    lo, hi = np.nanquantile(np.asarray(vals), [a, 1 - a])
    return float(lo), float(hi)
