"""Compress and decompress embedding rasters (COGs with bands ``emb:000``…), strip by strip.

A raster holds ``int8`` (uint8 codes 0–254 with per-band GDAL scale/offset, so rasterio and
QGIS read real values; 255 is nodata), ``pca:K`` (K float32 bands ``pca:000``…) or
``pca:K+int8``. Parameters are fitted on every valid pixel (a raster has no split): min and
max exactly, PCA on a seeded subsample of pixels. The method and its parameters sit in the
``terrastill_compression`` tag as JSON, next to the source's tags.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.embeddings.compress import Codec, Method, fit, parse_method
from terrastill.errors import BadInputError, NotFoundError, OutputError

log = logging.getLogger(__name__)
TAG = "terrastill_compression"
NODATA_CODE = 255
STRIP_BYTES = 1 << 24


def raster_path(src: Path, out: str | os.PathLike[str]) -> Path:
    """``OUT`` itself when it names a .tif, else OUT/<source file name>."""
    p = Path(out)
    return p if p.suffix.lower() in (".tif", ".tiff") else p / src.name


def _open(path: str | os.PathLike[str]) -> Any:
    import rasterio
    from rasterio.errors import RasterioError

    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: no such embedding raster")
    try:
        return rasterio.open(p)
    except RasterioError as exc:
        raise BadInputError(f"{p}: not a readable GeoTIFF ({exc})") from None


def raster_codec(path: str | os.PathLike[str]) -> Codec | None:
    """The codec stored in a compressed raster's tags (None for a plain embedding raster)."""
    with _open(path) as src:
        raw = src.tags().get(TAG)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise BadInputError(f"{path}: the {TAG} tag is not valid JSON") from None
    return Codec.from_meta(meta, str(path))


@contextmanager
def _scratch(target: Path) -> Iterator[Path]:
    """A temporary GeoTIFF beside ``target`` (publish_cog turns it into the COG atomically)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".tmp-{target.name}.", suffix=".scratch.tif",
                                    dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{target.parent}: cannot write here ({exc.strerror})") from exc
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _publish(scratch: Path, target: Path) -> None:
    """Copy a finished GeoTIFF to ``target`` as a validated COG, atomically.

    GDAL's COG driver copies pixels, nodata, scales/offsets, descriptions and tags as they
    are; rio-cogeo's ``cog_translate`` goes through a WarpedVRT, which turned a valid pixel of
    a multi-band uint8 raster into nodata (255) in our tests."""
    import rasterio.shutil
    from rio_cogeo.cogeo import cog_validate

    from terrastill.atomic import atomic_path

    with atomic_path(target) as out:
        rasterio.shutil.copy(scratch, out, driver="COG", compress="DEFLATE", blocksize=256,
                             overview_resampling="nearest", bigtiff="IF_SAFER")
        valid, errors, _ = cog_validate(str(out), quiet=True)
        if not valid:
            raise RuntimeError(f"{target}: produced an invalid COG ({'; '.join(errors)})")


def _strips(src: Any) -> Iterator[Any]:
    from rasterio.windows import Window

    rows = max(1, min(src.height, STRIP_BYTES // max(1, src.width * src.count * 4)))
    for r in range(0, src.height, rows):
        yield Window(0, r, src.width, min(rows, src.height - r))


def _read_real(src: Any, window: Any) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, D) real values of a window and its valid-pixel mask (all bands valid)."""
    from rasterio.errors import RasterioError

    try:
        data = src.read(window=window).astype(np.float64)
    except RasterioError as exc:
        raise BadInputError(f"{src.name}: cannot read ({exc})") from None
    invalid = ~np.isfinite(data)
    if src.nodata is not None and np.isfinite(src.nodata):
        invalid |= data == src.nodata
    scales = np.asarray(src.scales, np.float64)[:, None, None]
    offsets = np.asarray(src.offsets, np.float64)[:, None, None]
    data = data * scales + offsets
    valid = ~invalid.any(axis=0).reshape(-1)
    return data.reshape(src.count, -1).T, valid


def _check_embedding_raster(src: Any) -> None:
    if src.tags().get(TAG):
        raise BadInputError(f"{src.name}: already compressed; decompress it first")
    desc = list(src.descriptions)
    if any(d is None or not str(d).startswith("emb:") for d in desc):
        raise BadInputError(f"{src.name}: not an embedding raster (bands must be described "
                            "emb:000, emb:001, …)")


def _raster_method(method: Method) -> None:
    ok = not method.rotate and (method.quant == "int8" or
                                (method.quant == "float32" and method.pca is not None))
    if not ok:
        raise BadInputError(f"method {method}: a raster holds int8, pca:K or pca:K+int8 "
                            "(bit-packed and rotated codes need a table)")


def compress_raster(src_path: str | os.PathLike[str], out: str | os.PathLike[str],
                    method: str | None, seed: int = 0, sample: int = 200_000,
                    params: Codec | None = None) -> dict[str, Any]:
    """Compress an embedding raster into a COG; returns a summary."""
    if params is None and method is None:
        raise BadInputError("--method is required (or --params to reuse a fitted one)")
    m = params.method if params is not None else parse_method(str(method))
    if params is not None and method is not None and str(parse_method(method)) != str(m):
        raise BadInputError(f"--method {method} differs from --params' method {m}")
    _raster_method(m)
    src_path = Path(src_path)
    target = raster_path(src_path, out)
    with _open(src_path) as src:
        _check_embedding_raster(src)
        if params is not None:
            if params.input_dim != src.count:
                raise BadInputError(f"{src_path}: {src.count} embedding bands, but --params was "
                                    f"fitted on {params.input_dim} dimensions")
            if params.levels not in (0, NODATA_CODE):
                raise BadInputError("--params: a table's int8 codes use all 256 levels; reuse "
                                    "the parameters of a compressed raster instead")
            codec, note = params, "reused from --params"
        else:
            codec, note = _fit_raster(src, m, seed, sample)
        _write(src, codec, target, src_path)
    return {"path": target, "method": str(m), "fit": note,
            "bytes_per_embedding": codec.bytes_per_embedding,
            "ratio": 4 * codec.input_dim / codec.bytes_per_embedding,
            "explained_variance": codec.explained_variance}


def _fit_raster(src: Any, m: Method, seed: int, sample: int) -> tuple[Codec, str]:
    rng = np.random.default_rng(seed)
    p = min(1.0, sample / max(1, src.width * src.height))
    lo = np.full(src.count, np.inf)
    hi = np.full(src.count, -np.inf)
    picked, n_valid = [], 0
    for win in _strips(src):
        x, valid = _read_real(src, win)
        x = x[valid]
        n_valid += len(x)
        if len(x):
            lo, hi = np.minimum(lo, x.min(axis=0)), np.maximum(hi, x.max(axis=0))
            picked.append(x[rng.random(len(x)) < p])
    rows = np.concatenate(picked) if picked else np.empty((0, src.count))
    if n_valid == 0:
        raise BadInputError(f"{src.name}: no valid pixels to fit {m} on")
    if len(rows) < 2:
        rows = np.vstack([lo, hi])
    note = f"all {n_valid} valid pixels" + (f" (PCA: a seeded subsample of {len(rows)})"
                                              if m.pca is not None else "")
    codec = fit(m, rows, seed=seed, levels=NODATA_CODE, fit_info={"split": note})
    if m.quant == "int8":
        if m.pca is not None:  # exact score range over every valid pixel
            lo, hi = np.full(m.pca, np.inf), np.full(m.pca, -np.inf)
            for win in _strips(src):
                x, valid = _read_real(src, win)
                if valid.any():
                    z = codec.reduce(x[valid])
                    lo, hi = np.minimum(lo, z.min(axis=0)), np.maximum(hi, z.max(axis=0))
        span = hi - lo
        codec.params.update(lo=lo, step=np.where(span > 0, span / (NODATA_CODE - 1), 1.0))
    return codec, note


def _write(src: Any, codec: Codec, target: Path, src_path: Path) -> None:
    import rasterio

    m = codec.method
    k = codec.code_dim
    ints = m.quant == "int8"
    prefix = "pca" if m.pca is not None else "emb"
    prof = {"driver": "GTiff", "width": src.width, "height": src.height, "count": k,
            "dtype": "uint8" if ints else "float32", "crs": src.crs,
            "transform": src.transform, "nodata": NODATA_CODE if ints else float("nan"),
            "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "zstd",
            "zstd_level": 1, "BIGTIFF": "IF_SAFER"}
    tags = {k_: v for k_, v in src.tags().items() if k_ != TAG}
    tags[TAG] = json.dumps(codec.to_meta())
    with _scratch(target) as scratch:
        with rasterio.open(scratch, "w", **prof) as dst:
            dst.update_tags(**tags)
            for i in range(k):
                dst.set_band_description(i + 1, f"{prefix}:{i:03d}")
            if ints:
                dst.scales = tuple(float(v) for v in codec.params["step"])
                dst.offsets = tuple(float(v) for v in codec.params["lo"])
            for win in _strips(src):
                x, valid = _read_real(src, win)
                out = np.full((len(x), k), NODATA_CODE if ints else np.nan,
                              np.uint8 if ints else np.float32)
                if valid.any():
                    out[valid] = codec.encode(x[valid])
                dst.write(out.T.reshape(k, int(win.height), int(win.width)), window=win)
        _publish(scratch, target)


def decompress_raster(src_path: str | os.PathLike[str], out: str | os.PathLike[str],
                      params: Codec | None = None) -> dict[str, Any]:
    """Decode a compressed (or int8-scaled) embedding raster to float32 ``emb:`` bands."""
    src_path = Path(src_path)
    own = raster_codec(src_path)
    codec = params or own
    target = raster_path(src_path, out)
    if params is not None and own is not None and str(own.method) != str(params.method):
        raise BadInputError(f"{src_path}: holds {own.method} bands, not {params.method}")
    with _open(src_path) as src:
        if codec is None:
            _check_embedding_raster(src)
            if all(s == 1 for s in src.scales) and all(o == 0 for o in src.offsets):
                raise BadInputError(f"{src_path}: not a compressed raster (float bands without "
                                    "scale/offset and no compression tag)")
        elif src.count != codec.code_dim:
            raise BadInputError(f"{src_path}: {src.count} bands, but {codec.method} stores "
                                f"{codec.code_dim}")
        _write_decoded(src, codec, target)
    return {"path": target, "method": str(codec.method) if codec else "int8 (scale/offset)",
            "dim": codec.input_dim if codec else None}


def _write_decoded(src: Any, codec: Codec | None, target: Path) -> None:
    import rasterio

    dim = codec.input_dim if codec else src.count
    prof = {"driver": "GTiff", "width": src.width, "height": src.height, "count": dim,
            "dtype": "float32", "crs": src.crs, "transform": src.transform,
            "nodata": float("nan"), "tiled": True, "blockxsize": 256, "blockysize": 256,
            "compress": "zstd", "zstd_level": 1, "BIGTIFF": "IF_SAFER"}
    tags = {k: v for k, v in src.tags().items() if k != TAG}
    if codec is not None:
        tags["terrastill_decompressed_from"] = str(codec.method)
    with _scratch(target) as scratch:
        with rasterio.open(scratch, "w", **prof) as dst:
            dst.update_tags(**tags)
            for i in range(dim):
                dst.set_band_description(i + 1, f"emb:{i:03d}")
            for win in _strips(src):
                x, valid = _read_real(src, win)  # scale/offset already applied
                out = np.full((len(x), dim), np.nan, np.float32)
                if valid.any():
                    out[valid] = x[valid] if codec is None or codec.method.pca is None \
                        else codec.expand(x[valid])
                dst.write(out.T.reshape(dim, int(win.height), int(win.width)), window=win)
        _publish(scratch, target)
