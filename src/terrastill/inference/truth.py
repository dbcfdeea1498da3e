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
