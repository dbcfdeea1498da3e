"""Compress and decompress embedding tables: fit on the train split, store every parameter."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.embeddings.compress import Codec, fit, parse_method
from terrastill.embeddings.table import EmbeddingTable, read_table, write_table
from terrastill.errors import BadInputError

log = logging.getLogger(__name__)


def table_path(out: str | os.PathLike[str]) -> Path:
    """``OUT`` as a table file: itself when it ends in .parquet, else OUT/embeddings.parquet."""
    p = Path(out)
    return p if p.suffix.lower() == ".parquet" else p / "embeddings.parquet"


def table_codec(table: EmbeddingTable, where: str) -> Codec | None:
    """The codec a table's ``compression`` metadata describes (None for a plain table)."""
    meta = table.meta.get("compression")
    if not meta:
        return None
    return Codec.from_meta(meta, where)


def float_vectors(table: EmbeddingTable, where: str) -> np.ndarray:
    """A table's embeddings as (N, D) float32: decoded when it is compressed."""
    codec = table_codec(table, where)
    if codec is None:
        if table.vectors.dtype == np.uint8:
            raise BadInputError(f"{where}: the table holds byte codes but no compression "
                                "metadata to decode them")
        return table.vectors
    return codec.decode(table.vectors)


def fit_rows(table: EmbeddingTable) -> tuple[np.ndarray, str]:
    """Rows to fit parameters on: the train split, or every row when there is no split."""
    if "split" not in table.frame or table.frame["split"].isna().all():
        return np.ones(len(table), bool), "all (the table has no split column)"
    mask = table.split_mask("train")
    if not mask.any():
        raise BadInputError("the table's split column has no 'train' rows to fit on")
    return mask, "train"


def check_finite(vectors: np.ndarray, table: EmbeddingTable, where: str) -> None:
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BadInputError(f"{where}: row {row} (id {table.frame['id'].iloc[row]!r}) has NaN "
                            "or infinite embedding values")


def reference_codec(path: str | os.PathLike[str]) -> Codec:
    """The fitted codec stored in a compressed table or raster (``--params``)."""
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        from terrastill.embeddings.compress_raster import raster_codec

        codec = raster_codec(p)
    else:
        codec = table_codec(read_table(p), str(p))
    if codec is None:
        raise BadInputError(f"--params {p}: not a compressed product (no compression metadata)")
    return codec


def compress_table(src: str | os.PathLike[str], out: str | os.PathLike[str],
                   method: str | None, seed: int = 0, params: Codec | None = None
                   ) -> dict[str, Any]:
    """Compress a float table to ``out``; fit ``method`` on train or reuse ``params``."""
    table = read_table(src)
    where = str(src)
    if table.meta.get("compression"):
        done = table.meta["compression"].get("method")
        raise BadInputError(f"{where}: already compressed ({done}); decompress it first")
    if table.vectors.dtype == np.uint8:
        raise BadInputError(f"{where}: holds byte codes without compression metadata")
    check_finite(table.vectors, table, where)
    if params is not None:
        if method is not None and str(parse_method(method)) != str(params.method):
            raise BadInputError(f"--method {method} differs from --params' method "
                                f"{params.method}")
        if params.input_dim != table.vectors.shape[1]:
            raise BadInputError(f"{where}: {table.vectors.shape[1]}-dimensional embeddings, but "
                                f"--params was fitted on {params.input_dim} dimensions")
        codec, note = params, "reused from --params"
    else:
        if method is None:
            raise BadInputError("--method is required (or --params to reuse a fitted one)")
        mask, note = fit_rows(table)
        try:
            codec = fit(method, table.vectors[mask], seed=seed, fit_info={"split": note})
        except BadInputError as exc:
            raise BadInputError(f"{where}: --method {exc}") from None
        if note != "train":
            log.warning("%s: no split column; fitting %s on all %d rows", where, method,
                        len(table))
    codes = codec.encode(table.vectors)
    meta = {**table.meta, "dim": codec.input_dim, "compression": codec.to_meta()}
    path = write_table(table_path(out), table.frame, codes, meta)
    return {"path": path, "rows": len(table), "method": str(codec.method), "fit": note,
            "bytes_per_embedding": codec.bytes_per_embedding,
            "ratio": 4 * codec.input_dim / codec.bytes_per_embedding,
            "explained_variance": codec.explained_variance}


def decompress_table(src: str | os.PathLike[str], out: str | os.PathLike[str],
                     reduced: bool = False, params: Codec | None = None) -> dict[str, Any]:
    """Decode a compressed table back to float32 (input dims, or the PCA scores)."""
    table = read_table(src)
    where = str(src)
    own = table_codec(table, where)
    codec = params or own
    if codec is None:
        raise BadInputError(f"{where}: not a compressed table (no compression metadata)")
    if params is not None and own is not None and str(own.method) != str(params.method):
        raise BadInputError(f"{where}: holds {own.method} codes, not {params.method} "
                            "(the method of --params)")
    if params is not None and own is not None and own.input_dim != params.input_dim:
        raise BadInputError(f"{where}: {own.input_dim}-dimensional product, but --params "
                            f"decodes {params.input_dim} dimensions")
    if reduced and codec.method.pca is None:
        raise BadInputError(f"--reduced: {codec.method} has no PCA step")
    try:
        vectors = codec.decode(table.vectors, reduced=reduced)
    except BadInputError as exc:
        raise BadInputError(f"{where}: {exc}") from None
    meta = {k: v for k, v in table.meta.items() if k != "compression"}
    meta["dim"] = vectors.shape[1]
    meta["decompressed_from"] = {"method": str(codec.method), "reduced": reduced,
                                 "bytes_per_embedding": codec.bytes_per_embedding}
    path = write_table(table_path(out), table.frame, vectors, meta)
    return {"path": path, "rows": len(table), "method": str(codec.method),
            "dim": vectors.shape[1]}
