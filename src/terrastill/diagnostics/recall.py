"""Recall of labelled pixels whose input is hidden (masked at the target date) or ambiguous
(see ``ambiguity``), stratified by their distance to the nearest pixel of the same class that
the input shows, and distance-weighted recall."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt

# distance bins in pixels: [0,1) is impossible for a hidden pixel, so 1, 2, 4, ... then "none"
EDGES_PX = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def hidden_mask(img: np.ndarray) -> np.ndarray:
    """(H, W) pixels whose input at the last (target) step is masked in any band."""
    return ~np.isfinite(img[-1]).all(axis=0)


def chip_distances(label: np.ndarray, hidden: np.ndarray, num_classes: int,
                   source: np.ndarray | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, distance px, flat index) of every labelled pixel in ``hidden`` (the targets);
    the distance runs to the nearest pixel of its class in ``source`` (default: the pixels not
    in ``hidden``), inf when there is none in the chip."""
    src = ~hidden if source is None else source
    cls, dist, where = [], [], []
    for c in range(num_classes):
        target = (label == c) & hidden
        if not target.any():
            continue
        visible = (label == c) & src
        if visible.any():
            d = distance_transform_edt(~visible)[target]
        else:
            d = np.full(int(target.sum()), np.inf)
        cls.append(np.full(d.size, c))
        dist.append(d)
        where.append(np.flatnonzero(target.ravel()))
    if not cls:
        e = np.empty(0)
        return e.astype(int), e, e.astype(int)
    return np.concatenate(cls), np.concatenate(dist), np.concatenate(where)


def stratify(cls: np.ndarray, dist_px: np.ndarray, correct: np.ndarray,
             class_names: Sequence[str], resolution: float,
             edges: Sequence[int] = EDGES_PX) -> dict[str, Any]:
    """Recall per class and distance bin, and distance-weighted recall Σ d·1[correct] / Σ d
    over the pixels with a visible pixel of their class in the chip."""
    bins = [(float(edges[i]), float(edges[i + 1])) for i in range(len(edges) - 1)]
    out: dict[str, Any] = {"resolution_m": resolution, "classes": []}
    for c, name in enumerate(class_names):
        m = cls == c
        d, ok = dist_px[m], correct[m]
        rows = []
        for lo, hi in bins:
            sel = (d >= lo) & (d < hi)
            if sel.any():
                rows.append({"from_px": lo, "to_px": hi, "from_m": lo * resolution,
                             "to_m": hi * resolution, "pixels": int(sel.sum()),
                             "recall": float(ok[sel].mean())})
        far = ~np.isfinite(d)
        if far.any():
            rows.append({"from_px": float("inf"), "to_px": float("inf"), "from_m": None,
                         "to_m": None, "pixels": int(far.sum()),
                         "recall": float(ok[far].mean()), "note": "no visible pixel of the "
                                                                  "class in the chip"})
        fin = np.isfinite(d)
        dwr = float((d[fin] * ok[fin]).sum() / d[fin].sum()) if fin.any() else float("nan")
        out["classes"].append({
            "class": name, "hidden_pixels": int(m.sum()),
            "recall": float(ok.mean()) if m.any() else float("nan"),
            "distance_weighted_recall": dwr,
            "median_distance_px": float(np.median(d[fin])) if fin.any() else float("nan"),
            "bins": rows})
    return out
