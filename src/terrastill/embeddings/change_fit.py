"""Click-trained change models: labels → features at the clicked pixels → logistic regression.

A model is a logistic regression on the change product's K decoded PCA values (what the
tiles hold), C chosen by inner stratified cross-validation on F1; the scaler is folded into
the weights so ``model.json`` holds one linear function ``logit = w·x + b`` over real values
and the same function over int8 codes (``w·q + b``), which the browser applies to tiles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.embeddings.change import read_change
from terrastill.errors import BadInputError, NotFoundError

C_GRID = np.logspace(-3, 3, 7)
MODEL_KIND = "terrastill-change-model"


def read_labels(path: str | os.PathLike[str]) -> Any:
    """Click points (GeoJSON / GeoPackage / GeoParquet) with an integer ``change`` of 0 or 1."""
    import geopandas as gpd

    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: no such labels file")
    try:
        gdf = gpd.read_parquet(p) if p.suffix.lower() == ".parquet" else gpd.read_file(p)
    except Exception as exc:  # GDAL / pyarrow raise many types for an unreadable file
        raise BadInputError(f"{p}: not a readable vector file ({exc})") from None
    if gdf.crs is None:
        raise BadInputError(f"{p}: has no CRS (clicks are GeoJSON points in EPSG:4326)")
    if "change" not in gdf.columns:
        raise BadInputError(f"{p}: no 'change' property (expected 1 = change, 0 = no change)")
    if len(gdf) == 0:
        raise BadInputError(f"{p}: holds no points")
    for i, (g, v) in enumerate(zip(gdf.geometry, gdf["change"], strict=True)):
        if g is None or g.is_empty or g.geom_type != "Point":
            raise BadInputError(f"{p}: feature {i} is a {getattr(g, 'geom_type', 'missing')} "
                                "geometry, expected a Point")
        if v is None or (isinstance(v, float) and np.isnan(v)) or v not in (0, 1):
            raise BadInputError(f"{p}: feature {i} has change={v!r}, expected 1 or 0")
    y = gdf["change"].astype(int).to_numpy()
    if len(set(y.tolist())) < 2:
        raise BadInputError(f"{p}: every click has change={y[0]}; a model needs both change (1) "
                            "and no-change (0) clicks")
    return gdf.assign(change=y)


def _pixels(meta: dict[str, Any], gdf: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the points on the product grid; BadInputError for any outside."""
    from affine import Affine

    pts = gdf.to_crs(epsg=meta["epsg"])
    inv = ~Affine(*meta["grid"]["transform"])
    cols, rows = [], []
    for i, g in enumerate(pts.geometry):
        c, r = inv @ (g.x, g.y)
        c, r = int(np.floor(c)), int(np.floor(r))
        if not (0 <= c < meta["grid"]["width"] and 0 <= r < meta["grid"]["height"]):
            ll = gdf.geometry.iloc[i]
            raise BadInputError(f"{where}: point {i} ({ll.x:.5f}, {ll.y:.5f}) lies outside the "
                                f"change product {meta['root']}")
        cols.append(c)
        rows.append(r)
    return np.asarray(rows), np.asarray(cols)


def _sample(path: str, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real values (N, bands) at pixels and whether each is valid (every band)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as src:
        vals = np.stack([src.read(window=Window(int(c), int(r), 1, 1))[:, 0, 0]
                         for r, c in zip(rows, cols, strict=True)]).astype(np.float64)
        bad = ~np.isfinite(vals)
        if src.nodata is not None and np.isfinite(src.nodata):
            bad |= vals == src.nodata
        vals = vals * np.asarray(src.scales) + np.asarray(src.offsets)
    return vals, ~bad.any(axis=1)


def label_features(product: str | os.PathLike[str], labels: str | os.PathLike[str],
                   full: bool = False) -> dict[str, Any]:
    """Features of every click: ``int8`` (the product's decoded values), ``pca`` (float
    scores from the full difference) and, with ``full``, ``full`` (the raw difference)."""
    meta = read_change(product)
    gdf = read_labels(labels)
    rows, cols = _pixels(meta, gdf, str(labels))
    codes, ok = _sample(str(Path(meta["root"]) / meta["files"]["codes"]), rows, cols)
    out: dict[str, Any] = {"meta": meta, "y": gdf["change"].to_numpy(), "int8": codes,
                           "rows": rows, "cols": cols}
    if full:
        for key in ("before", "after"):
            if not Path(meta[key]).is_file():
                raise NotFoundError(f"{meta[key]}: the change product's {key} raster is gone "
                                    "(needed for the full-difference report)")
        a, oka = _sample(meta["before"], rows, cols)
        b, okb = _sample(meta["after"], rows, cols)
        d = b - a
        ok &= oka & okb
        comps = np.asarray(meta["pca"]["components"])
        out["full"] = d
        out["pca"] = (d - np.asarray(meta["pca"]["mean"])) @ comps.T
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise BadInputError(f"{labels}: point {i} falls on a pixel without data in the change "
                            f"product ({int((~ok).sum())} such point(s))")
    return out


def _folds(y: np.ndarray, most: int) -> int:
    return int(min(most, np.bincount(y).min()))


def _search(y: np.ndarray, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = _folds(y, 5)
    if k < 2:
        raise BadInputError("need at least 2 clicks of each class to choose C by "
                            f"cross-validation (have {np.bincount(y).tolist()} no-change/change)")
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return GridSearchCV(pipe, {"logisticregression__C": C_GRID}, scoring="f1",
                        cv=StratifiedKFold(k, shuffle=True, random_state=seed))


def fit_model(x: np.ndarray, y: np.ndarray, meta: dict[str, Any], seed: int = 0
              ) -> dict[str, Any]:
    """Fit the click model on the product's K values; returns the ``model.json`` content."""
    gs = _search(y, seed).fit(x, y)
    pipe = gs.best_estimator_
    sc, lr = pipe.named_steps["standardscaler"], pipe.named_steps["logisticregression"]
    w = lr.coef_[0] / sc.scale_
    b = float(lr.intercept_[0] - np.dot(w, sc.mean_))
    scale, offset = np.asarray(meta["int8"]["scale"]), np.asarray(meta["int8"]["offset"])
    return {"kind": MODEL_KIND, "version": 1, "product": meta["id"],
            "features": f"pca:{meta['pca']['k']} (decoded int8)",
            "weights": w.tolist(), "intercept": b,
            "code_weights": (w * scale).tolist(), "code_intercept": b + float(w @ offset),
            "C": float(gs.best_params_["logisticregression__C"]),
            "inner_cv_f1": float(gs.best_score_),
            "labels": {"n": int(len(y)), "change": int(y.sum()), "no_change": int((y == 0).sum())},
            "train_accuracy": float(pipe.score(x, y))}


def nested_cv(x: np.ndarray, y: np.ndarray, seed: int = 0, outer: int = 10) -> dict[str, Any]:
    """Outer stratified k-fold (≤ ``outer``) around the inner C search: mean ± std of
    accuracy, F1, precision, recall over the outer folds."""
    from sklearn.model_selection import StratifiedKFold, cross_validate

    k = _folds(y, outer)
    if k < 2 or _folds(y, 99) * (k - 1) // k < 2:
        raise BadInputError(f"nested cross-validation needs at least 3 clicks of each class "
                            f"(have {np.bincount(y).tolist()} no-change/change)")
    res = cross_validate(_search(y, seed), x, y, cv=StratifiedKFold(k, shuffle=True,
                                                                   random_state=seed),
                         scoring=("accuracy", "f1", "precision", "recall"), error_score="raise")
    out: dict[str, Any] = {"folds": k, "n": int(len(y))}
    for m in ("accuracy", "f1", "precision", "recall"):
        v = res[f"test_{m}"]
        out[m] = {"mean": float(v.mean()), "std": float(v.std())}
    return out


def report(feats: dict[str, Any], seed: int = 0, outer: int = 10) -> dict[str, dict[str, Any]]:
    """Nested CV for PCA-3, PCA-K (float), PCA-K (int8, the product) and the full difference."""
    k = feats["meta"]["pca"]["k"]
    y = feats["y"]
    sets = {"PCA-3": feats["pca"][:, :3], f"PCA-{k}": feats["pca"][:, :k],
            f"PCA-{k} int8": feats["int8"], f"full ({feats['full'].shape[1]}-d)": feats["full"]}
    return {name: nested_cv(x, y, seed, outer) for name, x in sets.items()}


def load_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: no such change model")
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{p}: not readable JSON ({exc})") from None
    if not isinstance(m, dict) or m.get("kind") != MODEL_KIND:
        raise BadInputError(f"{p}: not a terrastill change model")
    return m


def check_model(model: dict[str, Any], meta: dict[str, Any], where: str) -> None:
    """A model applies to the product it was fitted on (same PCA and int8 parameters)."""
    if model.get("product") != meta["id"]:
        raise BadInputError(f"{where}: fitted on change product {model.get('product')}, not "
                            f"{meta['id']} ({meta['root']})")
    if len(model.get("weights", [])) != meta["pca"]["k"]:
        raise BadInputError(f"{where}: {len(model.get('weights', []))} weights for "
                            f"{meta['pca']['k']} bands")


def change_map(product: str | os.PathLike[str], model_path: str | os.PathLike[str],
               out: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Score every pixel of the product: a float32 probability COG (NaN nodata)."""
    import rasterio

    from terrastill.embeddings.compress_raster import _read_real, _scratch, _strips
    from terrastill.inference.cog import publish_cog

    meta = read_change(product)
    model = load_model(model_path)
    check_model(model, meta, str(model_path))
    w, b = np.asarray(model["weights"]), float(model["intercept"])
    src_path = Path(meta["root"]) / meta["files"]["codes"]
    with rasterio.open(src_path) as src, _scratch(Path(out)) as tmp:
        prof = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1,
                "dtype": "float32", "crs": src.crs, "transform": src.transform,
                "nodata": float("nan"), "tiled": True, "blockxsize": 256, "blockysize": 256,
                "compress": "zstd", "zstd_level": 1}
        wins = list(_strips(src))
        with rasterio.open(tmp, "w", **prof) as dst:
            dst.set_band_description(1, "change_probability")
            for i, win in enumerate(wins):
                x, ok = _read_real(src, win)
                p = np.full(len(x), np.nan, np.float32)
                if ok.any():
                    p[ok] = 1.0 / (1.0 + np.exp(-(x[ok] @ w + b)))
                dst.write(p.reshape(1, int(win.height), int(win.width)), window=win)
                if progress:
                    progress(i + 1, len(wins))
        publish_cog(tmp, Path(out), "average",
                    tags={"terrastill_change_model": json.dumps(
                        {"product": meta["id"], "C": model.get("C"),
                         "labels": model.get("labels")})})
    return Path(out)
