"""Change products (DeltaBit): embedding difference → PCA (subsample fit) → int8 COG + tiles.

``terrastill change BEFORE AFTER --out DIR`` writes into DIR (built in a temporary folder
beside it and renamed into place, so nothing half-written is ever visible)::

    change.json      every parameter: inputs, PCA (mean, components, explained variance),
                     int8 scale/offset, sample, grid, tile pyramid, product id
    change.tif       int8 COG, K bands ``pca:000``…, value = q·scale + offset, nodata -128
    preview.tif      PCA-3 RGB preview COG (uint8, nodata 0), stretched on the PCA sample
    tiles/{z}/{x}/{y}.tif  web-mercator GeoTIFF tiles of the int8 codes (see ``xyz``)

The difference is ``after − before`` of the real values (GDAL scale/offset applied, so float
and int8 embedding rasters mix); a pixel is valid where every band of both is valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.embeddings.compress_raster import TAG, _open, _publish, _read_real, _strips
from terrastill.embeddings.raster import INT8_NODATA, int8_params, to_int8
from terrastill.errors import BadInputError, NotFoundError, OutputError

log = logging.getLogger(__name__)
VERSION = 1
KIND = "terrastill-change"
MIN_FIT = 1000  # fewer sampled pixels than this: sample more densely
PREVIEW_NODATA = 0


@dataclass
class Pair:
    """Two embedding rasters checked to share grid, model and product type."""

    before: Path
    after: Path
    dim: int
    epsg: int
    transform: list[float]
    width: int
    height: int
    tags: dict[str, str]
    dates: tuple[str | None, str | None]


def _grid_of(src: Any) -> tuple[Any, list[float], int, int]:
    return src.crs, list(src.transform)[:6], src.width, src.height


def check_pair(before: Path, after: Path) -> Pair:
    """Open both rasters and refuse a different grid, model, dimension or product."""
    before, after = Path(before), Path(after)
    with _open(before) as a, _open(after) as b:
        for src, p in ((a, before), (b, after)):
            if src.tags().get(TAG):
                method = json.loads(src.tags()[TAG]).get("method")
                raise BadInputError(f"{p}: a compressed product ({method}); decompress it or "
                                    "pass the embed output")
            if any(d is None or not str(d).startswith("emb:") for d in src.descriptions):
                raise BadInputError(f"{p}: not an embedding raster (bands must be described "
                                    "emb:000, emb:001, …)")
            if src.crs is None:
                raise BadInputError(f"{p}: has no CRS")
        ta, tb = a.tags(), b.tags()
        if a.count != b.count:
            raise BadInputError(f"{after}: {b.count} embedding bands, {before} has {a.count}: "
                                "different models")
        ma, mb = ta.get("model_sha256"), tb.get("model_sha256")
        if ma != mb or ta.get("model") != tb.get("model"):
            raise BadInputError(f"{after}: made by model {tb.get('model')} ({str(mb)[:12]}), "
                                f"{before} by {ta.get('model')} ({str(ma)[:12]}): a change "
                                "needs one model")
        if ta.get("patch_grid") != tb.get("patch_grid"):
            raise BadInputError(f"{after}: a different product type (patch grid "
                                f"{tb.get('patch_grid')} vs {ta.get('patch_grid')})")
        ga, gb = _grid_of(a), _grid_of(b)
        same = (ga[0] == gb[0] and ga[2:] == gb[2:]
                and np.allclose(ga[1], gb[1], rtol=0, atol=1e-6 * abs(ga[1][0])))
        if not same:
            raise BadInputError(f"{after}: a different grid from {before} (CRS {gb[0]} vs "
                                f"{ga[0]}, {gb[2]}×{gb[3]} vs {ga[2]}×{ga[3]} px, origin "
                                f"{gb[1][2]:.1f},{gb[1][5]:.1f} vs {ga[1][2]:.1f},"
                                f"{ga[1][5]:.1f}); embed both with the same --bbox")
        epsg = a.crs.to_epsg()
        if epsg is None:
            raise BadInputError(f"{before}: CRS {a.crs} has no EPSG code")
        keep = {k: v for k, v in ta.items() if k in ("model", "model_sha256", "model_file",
                                                     "embedding_dim", "patch_grid",
                                                     "normalisation", "time_pooling")}
        return Pair(before.resolve(), after.resolve(), a.count, int(epsg), ga[1], ga[2], ga[3],
                    keep, (ta.get("date"), tb.get("date")))


def _diff_strips(pair: Pair):
    """(window, diff (pixels, D), valid) strip by strip."""
    with _open(pair.before) as a, _open(pair.after) as b:
        for win in _strips(a):
            xa, va = _read_real(a, win)
            xb, vb = _read_real(b, win)
            yield win, xb - xa, va & vb


def sample_diff(pair: Pair, every: int) -> tuple[np.ndarray, int, int]:
    """Every ``every``-th valid difference pixel (denser when that gives < MIN_FIT);
    returns (sample, stride used, valid pixels)."""
    def take(stride: int) -> tuple[np.ndarray, int]:
        picked, seen = [], 0
        for _win, d, v in _diff_strips(pair):
            idx = np.flatnonzero(v)
            sel = idx[(seen + np.arange(len(idx))) % stride == 0]
            picked.append(d[sel])
            seen += len(idx)
        rows = np.concatenate(picked) if picked else np.empty((0, pair.dim))
        return rows, seen

    rows, n_valid = take(every)
    if n_valid == 0:
        raise BadInputError(f"{pair.before} / {pair.after}: no pixel valid in both rasters")
    stride = every
    if len(rows) < min(MIN_FIT, n_valid):
        stride = max(1, n_valid // MIN_FIT)
        rows, _ = take(stride)
    return rows, stride, n_valid


@dataclass
class ChangePCA:
    """Difference PCA: scores = (d − mean) · componentsᵀ."""

    mean: np.ndarray
    components: np.ndarray  # (K, D)
    ratio: np.ndarray  # explained variance ratio of every component of the full fit

    def scores(self, d: np.ndarray, k: int | None = None) -> np.ndarray:
        c = self.components if k is None else self.components[:k]
        return (d - self.mean) @ c.T


def fit_pca(rows: np.ndarray, seed: int = 0) -> ChangePCA:
    """A full PCA of the sampled differences (all min(N, D) components)."""
    from sklearn.decomposition import PCA

    if len(rows) < 2:
        raise BadInputError(f"only {len(rows)} valid difference pixel(s): cannot fit a PCA")
    p = PCA(n_components=min(rows.shape), random_state=seed).fit(rows)
    return ChangePCA(p.mean_, p.components_, p.explained_variance_ratio_)


def _components_for(cum: np.ndarray, share: float) -> int | None:
    hit = np.flatnonzero(cum >= share - 1e-12)
    return int(hit[0] + 1) if hit.size else None


def _stage(out_dir: Path) -> Path:
    """A fresh temporary folder beside ``out_dir`` (renamed onto it at the end)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "change.json").is_file():
        raise OutputError(f"{out_dir}: a non-empty folder that is not a change product; "
                          "choose a new --out")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise OutputError(f"{out_dir.parent}: cannot write here ({exc.strerror})") from exc


def _swap_in(stage: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = out_dir.with_name(f".tmp-{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(stage, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out_dir)


def _profile(pair: Pair, count: int, dtype: str, nodata: float | int) -> dict[str, Any]:
    from affine import Affine
    from rasterio.crs import CRS

    return {"driver": "GTiff", "width": pair.width, "height": pair.height, "count": count,
            "dtype": dtype, "crs": CRS.from_epsg(pair.epsg),
            "transform": Affine(*pair.transform), "nodata": nodata, "tiled": True,
            "blockxsize": 256, "blockysize": 256, "compress": "zstd", "zstd_level": 1,
            "BIGTIFF": "IF_SAFER"}


def _write_scores(pair: Pair, pca: ChangePCA, k: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Float32 scores of max(K, 3) components to ``path``; per-band (lo, hi) over all pixels."""
    import rasterio

    n = max(k, 3)
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    with rasterio.open(path, "w", **_profile(pair, n, "float32", float("nan"))) as dst:
        for i in range(n):
            dst.set_band_description(i + 1, f"pca:{i:03d}")
        for win, d, v in _diff_strips(pair):
            z = np.full((len(d), n), np.nan, np.float32)
            if v.any():
                z[v] = pca.scores(d[v], n)
                lo, hi = np.minimum(lo, z[v].min(0)), np.maximum(hi, z[v].max(0))
            dst.write(z.T.reshape(n, int(win.height), int(win.width)), window=win)
    return lo, hi


def _drop_bands(src_path: Path, dst_path: Path, k: int) -> None:
    import rasterio

    with rasterio.open(src_path) as src:
        prof = {**src.profile, "count": k}
        with rasterio.open(dst_path, "w", **prof) as dst:
            for _, win in src.block_windows(1):
                dst.write(src.read(list(range(1, k + 1)), window=win), window=win)
            dst.descriptions = src.descriptions[:k]


def _write_preview(scores_path: Path, dst_path: Path, lo: np.ndarray, hi: np.ndarray) -> None:
    """Bands 1–3 of the scores stretched [lo, hi] → 1…255 (0 = nodata)."""
    import rasterio

    with rasterio.open(scores_path) as src:
        prof = {**src.profile, "count": 3, "dtype": "uint8", "nodata": PREVIEW_NODATA,
                "photometric": "RGB"}
        with rasterio.open(dst_path, "w", **prof) as dst:
            for _, win in src.block_windows(1):
                z = src.read([1, 2, 3], window=win).astype(np.float64)
                span = np.where(hi > lo, hi - lo, 1.0)[:, None, None]
                q = 1 + np.clip((z - lo[:, None, None]) / span, 0, 1) * 254
                out = np.where(np.isfinite(z).all(0), np.rint(q), PREVIEW_NODATA)
                dst.write(out.astype(np.uint8), window=win)
            for i, c in enumerate(("red", "green", "blue"), start=1):
                dst.set_band_description(i, f"pca:{i - 1:03d} ({c})")


def product_id(meta: dict[str, Any]) -> str:
    """A short content hash of a change product's parameters (stable across copies)."""
    keys = ("before", "after", "grid", "pca", "int8", "model")
    blob = json.dumps({k: meta.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_change(before: Path, after: Path, out_dir: Path, k: int = 8, every: int = 1000,
                seed: int = 0, tiles: bool = True,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build a change product in ``out_dir``; returns its ``change.json`` content."""
    from terrastill.embeddings.xyz import write_pyramid

    if k < 1:
        raise BadInputError(f"--pca {k}: expected at least 1 component")
    if every < 1:
        raise BadInputError(f"--sample-every {every}: expected a positive whole number")
    pair = check_pair(before, after)
    if k > pair.dim:
        raise BadInputError(f"--pca {k}: the embeddings have only {pair.dim} dimensions")
    if pair.dim < 3:
        raise BadInputError(f"{before}: {pair.dim} dimensions; a change product needs ≥ 3")
    out_dir = Path(out_dir)
    note = progress or (lambda _s: None)
    note("sampling the difference")
    rows, stride, n_valid = sample_diff(pair, every)
    pca = fit_pca(rows, seed)
    if len(pca.ratio) < max(k, 3):
        raise BadInputError(f"only {len(rows)} valid difference pixels: too few for "
                            f"{max(k, 3)} components")
    cum = np.cumsum(pca.ratio)
    stage = _stage(out_dir)
    try:
        note("projecting and quantising")
        scores = stage / ".scores.tif"
        lo, hi = _write_scores(pair, pca, k, scores)
        scale, offset = int8_params(lo[:k], hi[:k])
        kept = stage / ".scores-k.tif"
        _drop_bands(scores, kept, k)
        codes = stage / ".codes.tif"
        to_int8(kept, codes, scale, offset)
        kept.unlink()
        z3 = pca.scores(rows, 3)
        plo, phi = np.percentile(z3, 2, axis=0), np.percentile(z3, 98, axis=0)
        prev = stage / ".preview.tif"
        _write_preview(scores, prev, plo, phi)
        scores.unlink()
        meta: dict[str, Any] = {
            "version": VERSION, "kind": KIND,
            "before": str(pair.before), "after": str(pair.after),
            "dates": {"before": pair.dates[0], "after": pair.dates[1]},
            "model": {"name": pair.tags.get("model"), "sha256": pair.tags.get("model_sha256")},
            "dim": pair.dim, "epsg": pair.epsg,
            "grid": {"transform": pair.transform, "width": pair.width, "height": pair.height},
            "pca": {"k": k, "mean": pca.mean.tolist(),
                    "components": pca.components[:max(k, 3)].tolist(),
                    "explained_variance_ratio": pca.ratio[:k].tolist(),
                    "explained_variance": float(cum[k - 1]),
                    "cumulative": cum.tolist(),
                    "components_for_50pct": _components_for(cum, 0.5),
                    "components_for_90pct": _components_for(cum, 0.9)},
            "sample": {"every": stride, "requested_every": every, "pixels": int(len(rows)),
                       "valid_pixels": int(n_valid), "seed": seed},
            "int8": {"scale": [float(s) for s in scale], "offset": [float(o) for o in offset],
                     "nodata": INT8_NODATA, "formula": "value = q * scale + offset"},
            "preview": {"bands": "pca:000-002", "lo": plo.tolist(), "hi": phi.tolist(),
                        "nodata": PREVIEW_NODATA},
            "files": {"codes": "change.tif", "preview": "preview.tif"},
            "source_tags": pair.tags,
        }
        meta["id"] = product_id(meta)
        tags = {**pair.tags, "terrastill_change": json.dumps(
            {k_: meta[k_] for k_ in ("id", "before", "after", "dates", "int8")})}
        _tag(codes, tags)
        _publish(codes, stage / "change.tif")
        codes.unlink()
        _tag(prev, {"terrastill_change": json.dumps({"id": meta["id"]})})
        _publish(prev, stage / "preview.tif")
        prev.unlink()
        if tiles:
            note("building the tile pyramid")
            meta["tiles"] = write_pyramid(stage / "change.tif", stage / "tiles")
        (stage / "change.json").write_text(json.dumps(meta, indent=1) + "\n")
        _swap_in(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return meta


def _tag(path: Path, tags: dict[str, str]) -> None:
    import rasterio

    with rasterio.open(path, "r+") as ds:
        ds.update_tags(**tags)


def read_change(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``change.json`` of a change product folder (or the file itself), with ``root`` added."""
    p = Path(path)
    if p.is_dir():
        p = p / "change.json"
    if not p.is_file():
        raise NotFoundError(f"{p}: not a change product (no change.json; run "
                            "`terrastill change` first)")
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{p}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise BadInputError(f"{p}: not a terrastill change product")
    meta["root"] = str(p.parent.resolve())
    return meta
