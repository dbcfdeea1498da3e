"""The embedding table: GeoParquet, one row per chip or image, and its ``terrastill`` metadata.

Columns: ``id`` (string), ``geometry`` (WKB footprint, EPSG:4326), ``date`` (ISO string or
null), ``label`` and ``split`` where known (strings or null), then ``embedding``: a
fixed-size list of float32 (plain embeddings) or a fixed-size binary (compressed codes).
The file's key-value metadata holds ``geo`` (GeoParquet 1.1, so geopandas, GDAL and QGIS read
it) and ``terrastill``: JSON with the model, dim, pooling, bands, normalisation and, for a
compressed table, the method and every parameter needed to decode it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.atomic import atomic_path
from terrastill.errors import BadInputError, NotFoundError

FORMAT = "terrastill-embeddings"
VERSION = 1
META_KEY = b"terrastill"
COLUMNS = ("id", "geometry", "date", "label", "split")


@dataclass
class EmbeddingTable:
    """Rows of an embedding table: their columns, vectors (or codes) and product metadata.

    ``vectors`` is (N, D) float32 for plain embeddings, or (N, B) uint8 codes when
    ``meta["compression"]`` names a method; ``frame`` holds every other column (geometry as
    shapely objects).
    """

    frame: Any  # pandas.DataFrame
    vectors: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_codes(self) -> bool:
        return self.vectors.dtype == np.uint8 and bool(self.meta.get("compression"))

    @property
    def dim(self) -> int:
        return int(self.meta.get("dim", self.vectors.shape[1]))

    @property
    def labels(self) -> np.ndarray | None:
        if "label" not in self.frame or self.frame["label"].isna().all():
            return None
        return self.frame["label"].to_numpy()

    def split_mask(self, split: str) -> np.ndarray:
        if "split" not in self.frame:
            return np.zeros(len(self.frame), bool)
        return (self.frame["split"] == split).to_numpy()

    def __len__(self) -> int:
        return len(self.frame)


def _geo_metadata(geoms: Sequence[Any]) -> dict[str, Any]:
    types = sorted({g.geom_type for g in geoms if g is not None and not g.is_empty})
    bounds = np.array([g.bounds for g in geoms if g is not None and not g.is_empty])
    bbox = [float(bounds[:, 0].min()), float(bounds[:, 1].min()),
            float(bounds[:, 2].max()), float(bounds[:, 3].max())] if len(bounds) else []
    col: dict[str, Any] = {"encoding": "WKB", "geometry_types": types}
    if bbox:
        col["bbox"] = bbox
    # no "crs" key: GeoParquet's default is OGC:CRS84 (lon/lat, WGS 84)
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": col}}


def write_table(path: str | os.PathLike[str], frame: Any, vectors: np.ndarray,
                meta: Mapping[str, Any]) -> Path:
    """Write an embedding table atomically (ZSTD). ``frame`` has ``id`` and ``geometry``
    (shapely, EPSG:4326) and optionally ``date``, ``label``, ``split`` and further columns;
    ``vectors`` is (N, D) float32 or (N, B) uint8 codes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    path = Path(path)
    n = len(frame)
    vectors = np.ascontiguousarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"vectors {vectors.shape} do not match {n} rows")
    if "id" not in frame or "geometry" not in frame:
        raise ValueError("an embedding table needs 'id' and 'geometry' columns")
    geoms = list(frame["geometry"])
    cols: dict[str, Any] = {"id": pa.array([str(v) for v in frame["id"]], pa.string()),
                            "geometry": pa.array(shapely.to_wkb(np.array(geoms, dtype=object)),
                                                 pa.binary())}
    for name in ("date", "label", "split"):
        if name in frame:
            cols[name] = pa.array([None if _missing(v) else str(v) for v in frame[name]],
                                  pa.string())
    for name in frame.columns:
        if name not in cols and name not in COLUMNS and name != "embedding":
            cols[name] = pa.array(frame[name].to_numpy() if frame[name].dtype != object
                                  else list(frame[name]))
    width = vectors.shape[1]
    if vectors.dtype == np.uint8:
        emb = pa.array([bytes(r) for r in vectors], pa.binary(width))
    else:
        flat = pa.array(vectors.astype(np.float32, copy=False).reshape(-1), pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(flat, width)
    cols["embedding"] = emb
    full = {"format": FORMAT, "version": VERSION, "dim": int(meta.get("dim", width)), **meta}
    table = pa.table(cols).replace_schema_metadata({
        b"geo": json.dumps(_geo_metadata(geoms)).encode(),
        META_KEY: json.dumps(full, default=_json_default).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``terrastill`` metadata of an embedding table, without reading its rows."""
    import pyarrow.parquet as pq

    path = _existing(path)
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise BadInputError(f"{path}: not a Parquet file ({type(exc).__name__})") from exc
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None or "embedding" not in schema.names:
        raise BadInputError(f"{path}: not a terrastill embedding table (no 'terrastill' "
                            "metadata or 'embedding' column)")
    meta = json.loads(raw)
    if int(meta.get("version", 0)) > VERSION:
        raise BadInputError(f"{path}: embedding table version {meta['version']} is newer than "
                            f"this terrastill understands ({VERSION})")
    return meta


def read_table(path: str | os.PathLike[str]) -> EmbeddingTable:
    """Read a whole embedding table (vectors as one NumPy array, no per-row Python)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    path = _existing(path)
    meta = read_meta(path)
    table = pq.read_table(path)
    emb = table.column("embedding").combine_chunks()
    if pa.types.is_fixed_size_binary(emb.type):
        width = emb.type.byte_width
        buf = emb.buffers()[1]
        vectors = np.frombuffer(buf, np.uint8, count=len(emb) * width,
                                offset=emb.offset * width).reshape(len(emb), width).copy()
    elif pa.types.is_fixed_size_list(emb.type):
        width = emb.type.list_size
        vectors = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        vectors = vectors.reshape(len(emb), width)
    else:
        raise BadInputError(f"{path}: column 'embedding' is {emb.type}, expected a fixed-size "
                            "list of float32 or fixed-size binary")
    frame = table.drop_columns(["embedding"]).to_pandas()
    frame["geometry"] = shapely.from_wkb(frame["geometry"].to_numpy())
    return EmbeddingTable(frame=frame, vectors=vectors, meta=meta)


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "embeddings.parquet"
    if not p.is_file():
        raise NotFoundError(f"{p}: no such embedding table")
    return p


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
