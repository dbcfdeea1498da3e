"""Linear probes of zonal embedding statistics: ridge R² or logistic accuracy, 5-fold CV.

Spatial folds group zones into square blocks of their centroids (web-mercator metres; a
block side of 1/6 of the larger extent unless given) so no block is split between train and
test; random folds are reported beside them because spatial autocorrelation flatters them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.embeddings.zonal import feature_columns
from terrastill.errors import BadInputError, NotFoundError

ALPHAS = np.logspace(-3, 4, 15)
KINDS = ("regression", "classification")


def read_stats(path: str | os.PathLike[str]) -> Any:
    import geopandas as gpd

    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: no such zonal statistics table")
    try:
        gdf = gpd.read_parquet(p)
    except Exception as exc:  # pyarrow / geopandas raise many types for a bad file
        raise BadInputError(f"{p}: not a readable GeoParquet table ({exc})") from None
    if not feature_columns(gdf.columns):
        raise BadInputError(f"{p}: no emb_mean_* / emb_std_* columns (run terrastill zonal)")
    return gdf


def infer_kind(y: Any) -> str:
    """Classification for booleans, strings and integers with ≤ 10 distinct values."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(y) or not pd.api.types.is_numeric_dtype(y):
        return "classification"
    if pd.api.types.is_integer_dtype(y) and y.nunique() <= 10:
        return "classification"
    return "regression"


def spatial_blocks(gdf: Any, block_km: float | None = None) -> np.ndarray:
    """Block id of every zone from its centroid on a square grid."""
    cent = gdf.geometry.to_crs(3857).centroid
    x, y = cent.x.to_numpy(), cent.y.to_numpy()
    span = max(np.ptp(x), np.ptp(y), 1.0)
    side = block_km * 1000.0 if block_km else span / 6.0
    cx = np.floor((x - x.min()) / side).astype(int)
    cy = np.floor((y - y.min()) / side).astype(int)
    return cx * (int(math.ceil(span / side)) + 2) + cy


def _model(kind: str) -> Any:
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "regression":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def _splits(kind: str, cv: str, y: np.ndarray, groups: np.ndarray, folds: int, seed: int
            ) -> tuple[list, int]:
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if cv == "random":
        k = folds if kind == "regression" else min(folds, int(np.unique(y, return_counts=True)
                                                               [1].min()))
        if k < 2:
            raise BadInputError("too few zones of the rarest class for cross-validation")
        s = KFold(k, shuffle=True, random_state=seed) if kind == "regression" else \
            StratifiedKFold(k, shuffle=True, random_state=seed)
        return list(s.split(y, y)), k
    k = min(folds, len(np.unique(groups)))
    if k < 2:
        raise BadInputError("all zones fall in one spatial block; pass a smaller --block-km "
                            "or use --cv random")
    s = GroupKFold(k) if kind == "regression" else StratifiedGroupKFold(k, shuffle=True,
                                                                        random_state=seed)
    return list(s.split(y, y, groups)), k


def cross_validate(x: np.ndarray, y: np.ndarray, kind: str, cv: str, groups: np.ndarray,
                   folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Mean ± std over folds of R² (regression) or accuracy (classification)."""
    from sklearn.metrics import accuracy_score, r2_score

    splits, k = _splits(kind, cv, y, groups, folds, seed)
    scores = []
    for tr, te in splits:
        if kind == "classification" and len(np.unique(y[tr])) < 2:
            continue  # a spatial fold whose training part holds one class
        m = _model(kind).fit(x[tr], y[tr])
        p = m.predict(x[te])
        scores.append(r2_score(y[te], p) if kind == "regression" else accuracy_score(y[te], p))
    if not scores:
        raise BadInputError("every fold's training part holds one class; use --cv random")
    return {"cv": cv, "folds": k, "used_folds": len(scores), "mean": float(np.mean(scores)),
            "std": float(np.std(scores)), "scores": [float(s) for s in scores]}


def probe(stats: str | os.PathLike[str], target: str, kind: str | None = None,
          cv: str = "spatial", folds: int = 5, block_km: float | None = None, seed: int = 0
          ) -> dict[str, Any]:
    """Probe one target column: both CV schemes (``cv`` first), in-sample fit, baseline."""
    if cv not in ("spatial", "random"):
        raise BadInputError(f"--cv {cv}: expected spatial or random")
    if kind is not None and kind not in KINDS:
        raise BadInputError(f"--kind {kind}: expected regression or classification")
    gdf = read_stats(stats)
    if target not in gdf.columns:
        raise BadInputError(f"{stats}: no column {target!r} (columns: "
                            f"{', '.join(c for c in gdf.columns if not c.startswith('emb_'))})")
    ok = gdf[target].notna().to_numpy()
    gdf = gdf[ok]
    kind = kind or infer_kind(gdf[target])
    cols = feature_columns(gdf.columns)
    x = gdf[cols].to_numpy(np.float64)
    finite = np.isfinite(x).all(axis=1)
    gdf, x = gdf[finite], x[finite]
    if kind == "regression":
        try:
            y = gdf[target].to_numpy(np.float64)
        except (TypeError, ValueError):
            raise BadInputError(f"{stats}: column {target!r} is not numeric; use "
                                "--kind classification") from None
        if np.ptp(y) == 0:
            raise BadInputError(f"{stats}: column {target!r} is constant ({y[0]:g}); "
                                "nothing to predict")
    else:
        y = gdf[target].astype(str).to_numpy()
        if len(np.unique(y)) < 2:
            raise BadInputError(f"{stats}: column {target!r} holds one class only")
    if len(y) < 10:
        raise BadInputError(f"{stats}: {len(y)} usable zones; a probe needs at least 10")
    groups = spatial_blocks(gdf, block_km)
    other = "random" if cv == "spatial" else "spatial"
    res: dict[str, Any] = {"target": target, "kind": kind, "n": int(len(y)),
                           "features": len(cols), "blocks": int(len(np.unique(groups)))}
    res[cv] = cross_validate(x, y, kind, cv, groups, folds, seed)
    try:
        res[other] = cross_validate(x, y, kind, other, groups, folds, seed)
    except BadInputError as exc:
        res[other] = {"error": str(exc)}
    fit = _model(kind).fit(x, y)
    res["in_sample"] = float(fit.score(x, y))
    if kind == "classification":
        _vals, counts = np.unique(y, return_counts=True)
        res["majority"] = float(counts.max() / counts.sum())
    res["metric"] = "R²" if kind == "regression" else "accuracy"
    res["primary"] = cv
    return res
