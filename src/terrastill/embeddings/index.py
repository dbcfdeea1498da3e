"""Search index: geohash-partitioned GeoParquet shards of embedding codes, and their manifest.

Layout (``terrastill index … --out INDEX``)::

    INDEX/manifest.json            per shard: path, rows, bbox; code method, dims, model,
                                   the codecs' parameters (to encode or decode a query)
    INDEX/rotation.npy             the Haar rotation of a ``rot:int4`` or ``rot:binary`` code
    INDEX/shards/<geohash>.parquet id, lon, lat, geometry (WKB), date, code, [rerank],
                                   label, split, source (ZSTD)

``code`` is a fixed-size binary: sign bits (``binary``, one bit per dimension set above the
fitted mean; ``rot:binary``, the same bits of the unit-length vectors after centring and a
seeded Haar rotation) or 4-bit codes (``int4``, ``rot:int4``), made by the codecs of
:mod:`terrastill.embeddings.compress`; ``rerank`` holds the ``int8`` codes of the same
vectors. A row goes to the shard of the geohash of its centre; the shard's bbox covers its
rows' footprints. Appending (``index`` on an existing INDEX) re-encodes the new rows with the
manifest's codecs, rewrites the touched shards and then the manifest, each by rename.

Python API for other stages (text retrieval, the service)::

    idx = open_index("demo-out/index")
    idx.shards                              # ShardInfo(path, geohash, rows, bbox)
    rows = idx.rows(area=shapely_geometry)  # pruned by shard bbox, filtered by footprint
    vectors = idx.decode_rerank(rows.rerank)   # (n, D) float32 (None without rerank)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terrastill import __version__
from terrastill.atomic import atomic_path
from terrastill.embeddings.compress import Codec, fit
from terrastill.errors import BadInputError, NotFoundError

log = logging.getLogger(__name__)
FORMAT = "terrastill-index"
VERSION = 1
CODES = {"binary": "binary", "rot-binary": "rot:binary", "rot:binary": "rot:binary",
         "int4": "int4", "rot-int4": "rot:int4", "rot:int4": "rot:int4"}
DEFAULT_CODE = "rot-binary"
HAMMING = ("binary", "rot:binary")  # code methods scored by Hamming distance
RERANKS = ("int8", "none")
DEFAULT_PRECISION = 4
DISTANCES = {"binary": "hamming (bits that differ)",
             "rot:binary": "hamming (bits that differ) of unit vectors, centred and rotated",
             "int4": "cosine distance (1 - cos) between decoded vectors",
             "rot:int4": "cosine distance (1 - cos) between decoded vectors"}
RERANK_DISTANCE = "cosine distance (1 - cos) between decoded int8 vectors"
TEXT_COLUMNS = ("date", "label", "split", "source")
RASTER_SUFFIXES = (".tif", ".tiff")


@dataclass
class SourceRows:
    """Rows read from one embedding product: columns, float vectors and the model."""

    frame: Any  # pandas.DataFrame: id, lon, lat, geometry (shapely), date, label, split, source
    vectors: np.ndarray
    model: dict[str, Any]
    path: Path


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it."""

    geohash: str
    path: str
    rows: int
    bbox: tuple[float, float, float, float]

    def meets(self, bounds: Sequence[float]) -> bool:
        """Whether the shard's bbox meets ``(minx, miny, maxx, maxy)``."""
        x0, y0, x1, y1 = self.bbox
        return not (x1 < bounds[0] or x0 > bounds[2] or y1 < bounds[1] or y0 > bounds[3])

    def holds(self, lon: float, lat: float) -> bool:
        x0, y0, x1, y1 = self.bbox
        return x0 <= lon <= x1 and y0 <= lat <= y1


@dataclass
class Rows:
    """Index rows (from one or more shards): columns, codes and int8 re-rank codes."""

    frame: Any  # pandas.DataFrame, geometry as shapely objects, plus a 'shard' column
    codes: np.ndarray  # (n, B) uint8
    rerank: np.ndarray | None = None  # (n, D) uint8 int8-codec codes
    skipped: list[str] = field(default_factory=list)  # shards left out (--allow-partial)

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, idx: np.ndarray) -> Rows:
        return Rows(self.frame.iloc[idx].reset_index(drop=True), self.codes[idx],
                    None if self.rerank is None else self.rerank[idx], list(self.skipped))


def model_id(model: Any) -> dict[str, Any]:
    if isinstance(model, dict):
        return {"name": model.get("name"), "sha256": model.get("sha256")}
    return {"name": None if model is None else str(model), "sha256": None}


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same model name, and the same file hash where both name one."""
    if a.get("name") != b.get("name"):
        return False
    return not (a.get("sha256") and b.get("sha256") and a["sha256"] != b["sha256"])


# ---------------------------------------------------------------- reading source products


def _table_rows(path: Path) -> SourceRows:
    import shapely

    from terrastill.embeddings.compress_table import check_finite, float_vectors
    from terrastill.embeddings.table import read_table

    t = read_table(path)
    where = str(path)
    vectors = float_vectors(t, where).astype(np.float32, copy=False)
    check_finite(vectors, t, where)
    frame = t.frame
    geoms = frame["geometry"].to_numpy()
    if any(g is None for g in geoms) or shapely.is_empty(geoms).any():
        raise BadInputError(f"{where}: a row has no footprint geometry")
    centre = shapely.centroid(geoms)
    out = frame[["id"]].astype({"id": str}).copy()
    out["lon"], out["lat"] = shapely.get_x(centre), shapely.get_y(centre)
    out["geometry"] = geoms
    for name in ("date", "label", "split"):
        out[name] = frame.get(name, None)
    out["source"] = path.name if path.is_dir() else f"{path.parent.name}/{path.name}"
    return SourceRows(out, vectors, model_id(t.meta.get("model")), path)


def _raster_rows(path: Path) -> SourceRows:
    """Every valid patch (pixel) of an embedding raster: its vector, centre and footprint."""
    import pandas as pd
    import shapely
    from pyproj import Transformer

    from terrastill.embeddings.compress_raster import _open, _read_real, raster_codec

    codec = raster_codec(path)
    with _open(path) as src:
        desc = [str(d) for d in src.descriptions]
        if not all(d.startswith(("emb:", "pca:")) for d in desc):
            raise BadInputError(f"{path}: not an embedding raster (bands must be described "
                                "emb:000, emb:001, …)")
        if src.crs is None:
            raise BadInputError(f"{path}: the raster has no CRS")
        values, valid = _read_real(src, None)
        tags = src.tags()
        t, crs, w = src.transform, src.crs, src.width
    if codec is not None and codec.method.pca is not None:
        values = codec.expand(values)
    rows, cols = np.divmod(np.flatnonzero(valid), w)
    if not len(rows):
        raise BadInputError(f"{path}: no valid patch (every pixel is nodata)")
    # ring corners (closed) then the centre, in pixel units: (n, 6)
    cx = cols[:, None] + np.array([0, 1, 1, 0, 0, 0.5])[None, :]
    ry = rows[:, None] + np.array([0, 0, 1, 1, 0, 0.5])[None, :]
    x = t.c + cx * t.a + ry * t.b
    y = t.f + cx * t.d + ry * t.e
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(x, y)
    lon, lat = np.asarray(lon), np.asarray(lat)
    geoms = shapely.polygons(np.stack([lon[:, :5], lat[:, :5]], axis=-1))
    frame = pd.DataFrame({"id": [f"{path.stem}:{r}:{c}" for r, c in zip(rows, cols,
                                                                         strict=True)],
                          "lon": lon[:, 5], "lat": lat[:, 5], "geometry": geoms,
                          "date": tags.get("date"), "label": None, "split": None,
                          "source": path.name})
    model = {"name": tags.get("model"), "sha256": tags.get("model_sha256")}
    if model["sha256"] in (None, "None"):
        model["sha256"] = None
    return SourceRows(frame, values[valid].astype(np.float32), model, path)


def read_source(path: str | os.PathLike[str]) -> SourceRows:
    """Rows of an embedding table (.parquet or its folder) or raster (.tif)."""
    p = Path(path)
    if p.suffix.lower() in RASTER_SUFFIXES:
        return _raster_rows(p)
    if not p.exists():
        raise NotFoundError(f"{p}: no such embedding table or raster")
    return _table_rows(p)


# ---------------------------------------------------------------- manifest and shards


def manifest_path(index: str | os.PathLike[str]) -> Path:
    return Path(index) / "manifest.json"


def fit_code(method: str, vectors: np.ndarray, seed: int = 0) -> Codec:
    """The index's code codec for ``method`` (a :data:`CODES` value), fitted on every row."""
    return fit(method, vectors, seed=seed, fit_info={"split": "all rows indexed"})


def _codec_meta(codec: Codec) -> dict[str, Any]:
    meta = codec.to_meta()
    if "rotation" in meta["params"]:
        meta["params"] = {k: v for k, v in meta["params"].items() if k != "rotation"}
        meta["rotation_file"] = "rotation.npy"
    return meta


def _codec_from(meta: dict[str, Any], index: Path, where: str) -> Codec:
    meta = dict(meta)
    if meta.get("rotation_file"):
        f = index / meta["rotation_file"]
        try:
            rot = np.load(f)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{f}: cannot read the index's rotation ({exc})") from None
        meta["params"] = {**meta["params"], "rotation": rot}
    return Codec.from_meta(meta, where)


def _legacy_rot_binary(m: dict[str, Any]) -> dict[str, Any]:
    """The ``rot:binary`` code meta of an index written before ``compress`` had the method
    (a ``binary`` codec beside a ``code_rotation`` entry): the same codes, in today's form.
    Those indexes decoded to unit directions, hence scale 1."""
    meta = dict(m["code"]["codec"])
    rot = m["code_rotation"]
    meta.update(method="rot:binary", rotation_file=rot["rotation_file"],
                params={**meta["params"], "center": rot["center"], "scale": [1.0]})
    return meta


def _shard_table(rows: SourceRows, codes: np.ndarray, rerank: np.ndarray | None) -> Any:
    import pyarrow as pa
    import shapely

    f = rows.frame
    cols: dict[str, Any] = {
        "id": pa.array(f["id"].astype(str).tolist(), pa.string()),
        "lon": pa.array(f["lon"].to_numpy(np.float64)),
        "lat": pa.array(f["lat"].to_numpy(np.float64)),
        "geometry": pa.array(shapely.to_wkb(f["geometry"].to_numpy()), pa.binary()),
    }
    cols["date"] = _strings(f["date"])
    cols["code"] = _fixed(codes)
    if rerank is not None:
        cols["rerank"] = _fixed(rerank)
    for name in ("label", "split", "source"):
        cols[name] = _strings(f[name])
    return pa.table(cols)


def _strings(values: Any) -> Any:
    import pyarrow as pa

    return pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                     for v in values], pa.string())


def _fixed(codes: np.ndarray) -> Any:
    import pyarrow as pa

    codes = np.ascontiguousarray(codes, np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(codes.shape[1]), len(codes),
                                                [None, pa.py_buffer(codes.tobytes())])


def fixed_to_numpy(column: Any) -> np.ndarray:
    """A fixed-size binary Arrow column as an (n, width) uint8 array (no per-row Python)."""
    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    width = col.type.byte_width
    buf = col.buffers()[1]
    return np.frombuffer(buf, np.uint8, count=len(col) * width,
                         offset=col.offset * width).reshape(len(col), width).copy()


def _geo_meta(bbox: Sequence[float]) -> bytes:
    return json.dumps({"version": "1.1.0", "primary_column": "geometry",
                       "columns": {"geometry": {"encoding": "WKB",
                                                "geometry_types": ["Polygon"],
                                                "bbox": list(bbox)}}}).encode()


def _bbox_of(wkb: Any) -> tuple[float, float, float, float]:
    import shapely

    b = shapely.bounds(shapely.from_wkb(np.asarray(wkb.to_numpy(zero_copy_only=False),
                                                   dtype=object)))
    return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()),
            float(b[:, 3].max()))


# ---------------------------------------------------------------- building


def build_index(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                code: str | None = None, rerank: str | None = None,
                precision: int | None = None, seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Build ``out`` from embedding products, or append them to the index already there.

    New indexes fit the code (and int8 re-rank) codec on every row given; appends reuse the
    manifest's codecs, and refuse another model, dimension, code or geohash precision."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from terrastill.embeddings import geohash

    out = Path(out)
    if not sources:
        raise BadInputError("no embedding product given to index")
    if code is not None and code.lower() not in CODES:
        raise BadInputError(f"--code {code}: expected binary, rot-binary, int4 or rot-int4")
    if rerank is not None and rerank.lower() not in RERANKS:
        raise BadInputError(f"--rerank {rerank}: expected int8 or none")
    if precision is not None and not 1 <= precision <= 8:
        raise BadInputError(f"--geohash-precision {precision}: expected 1..8")
    old = read_manifest(out) if manifest_path(out).exists() else None
    parts = [read_source(s) for s in sources]
    model, dim = parts[0].model, parts[0].vectors.shape[1]
    for p in parts[1:]:
        if not same_model(p.model, model) or p.vectors.shape[1] != dim:
            raise BadInputError(f"{p.path}: {p.model.get('name')} embeddings of "
                                f"{p.vectors.shape[1]} dims, but {parts[0].path} holds "
                                f"{model.get('name')} embeddings of {dim} dims")
    vectors = np.concatenate([p.vectors for p in parts])
    import pandas as pd

    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    dup = frame["id"].duplicated()
    if dup.any():
        raise BadInputError(f"id {frame['id'][dup].iloc[0]!r} appears twice in the input")
    if old is None:
        method = CODES[(code or DEFAULT_CODE).lower()]
        rr = (rerank or "int8").lower()
        prec = precision or DEFAULT_PRECISION
        codec = fit_code(method, vectors, seed=seed)
        rcodec = fit("int8", vectors, seed=seed, fit_info={"split": "all rows indexed"}) \
            if rr == "int8" else None
        manifest: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "model": model, "dim": int(dim),
            "code": {"method": method, "bytes": codec.bytes_per_embedding,
                     "distance": DISTANCES[method], "codec": _codec_meta(codec)},
            "rerank": None if rcodec is None else {
                "method": "int8", "bytes": rcodec.bytes_per_embedding,
                "distance": RERANK_DISTANCE, "codec": _codec_meta(rcodec)},
            "geohash_precision": prec, "rows": 0, "bbox": None, "shards": [], "sources": []}
        existing_ids: set[str] = set()
    else:
        manifest = old.manifest
        codec, rcodec, prec = old.codec, old.rerank_codec, old.precision
        _check_append(old, model, dim, code, rerank, precision)
        existing_ids = set(old.read_column("id"))
        clash = frame["id"][frame["id"].isin(existing_ids)]
        if len(clash):
            raise BadInputError(f"id {clash.iloc[0]!r} is already in the index {out}")
    codes = codec.encode(vectors)
    rcodes = None if rcodec is None else rcodec.encode(vectors)
    cells = geohash.encode(frame["lon"].to_numpy(), frame["lat"].to_numpy(), prec)
    shards = {s["geohash"]: dict(s) for s in manifest["shards"]}
    groups = pd.Series(np.arange(len(frame))).groupby(cells)
    total = len(groups)
    with contextlib.ExitStack() as stack:
        # entered first, renamed last: the manifest names only shards already in place
        man_tmp = stack.enter_context(atomic_path(manifest_path(out)))
        rot_tmp = None
        rotation = codec.params.get("rotation")
        if old is None and rotation is not None:
            rot_tmp = stack.enter_context(atomic_path(out / "rotation.npy"))
            with open(rot_tmp, "wb") as fh:
                np.save(fh, rotation)
        for done, (cell, idx) in enumerate(groups, 1):
            sel = idx.to_numpy()
            sub = SourceRows(frame.iloc[sel].reset_index(drop=True), vectors[sel], model,
                             out)
            table = _shard_table(sub, codes[sel], None if rcodes is None else rcodes[sel])
            rel = f"shards/{cell}.parquet"
            if cell in shards:
                table = pa.concat_tables([old.read_shard_table(ShardInfo(
                    cell, rel, shards[cell]["rows"], tuple(shards[cell]["bbox"]))), table],
                    promote_options="default")
            bbox = _bbox_of(table.column("geometry"))
            table = table.replace_schema_metadata({b"geo": _geo_meta(bbox)})
            tmp = stack.enter_context(atomic_path(out / rel))
            pq.write_table(table, tmp, compression="zstd", row_group_size=65536)
            shards[cell] = {"geohash": cell, "path": rel, "rows": table.num_rows,
                            "bbox": list(bbox)}
            if progress:
                progress(done, total)
        ordered = [shards[c] for c in sorted(shards)]
        boxes = np.array([s["bbox"] for s in ordered])
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        manifest.update(
            shards=ordered, rows=int(sum(s["rows"] for s in ordered)),
            bbox=[float(boxes[:, 0].min()), float(boxes[:, 1].min()),
                  float(boxes[:, 2].max()), float(boxes[:, 3].max())],
            software=f"terrastill {__version__}",
            sources=manifest["sources"] + [{"path": str(p.path), "rows": len(p.frame),
                                            "added": now} for p in parts])
        man_tmp.write_text(json.dumps(manifest, indent=1))
    return {"path": out, "added": len(frame), "rows": manifest["rows"],
            "shards": len(manifest["shards"]), "touched": total,
            "method": manifest["code"]["method"], "bytes": manifest["code"]["bytes"],
            "rerank": rcodec is not None, "appended": old is not None}


def _check_append(old: SearchIndex, model: dict[str, Any], dim: int, code: str | None,
                  rerank: str | None, precision: int | None) -> None:
    m = old.manifest
    if not same_model(model, m["model"]) or dim != m["dim"]:
        raise BadInputError(f"{old.path}: the index holds {m['model'].get('name')} embeddings "
                            f"of {m['dim']} dims; these are {model.get('name')} embeddings of "
                            f"{dim} dims")
    if code is not None and CODES[code.lower()] != m["code"]["method"]:
        raise BadInputError(f"--code {code}: the index at {old.path} stores "
                            f"{m['code']['method']} codes")
    if rerank is not None and (rerank.lower() == "int8") != (m["rerank"] is not None):
        raise BadInputError(f"--rerank {rerank}: the index at {old.path} was built "
                            f"{'with' if m['rerank'] else 'without'} int8 re-rank codes")
    if precision is not None and precision != old.precision:
        raise BadInputError(f"--geohash-precision {precision}: the index at {old.path} uses "
                            f"{old.precision}")


# ---------------------------------------------------------------- opening and reading


@dataclass
class SearchIndex:
    """An opened index: its manifest, codecs and shards."""

    path: Path
    manifest: dict[str, Any]
    codec: Codec
    rerank_codec: Codec | None
    shards: list[ShardInfo]

    @property
    def method(self) -> str:
        return str(self.manifest["code"]["method"])

    @property
    def hamming(self) -> bool:
        """Whether codes are sign bits scored by Hamming distance (binary, rot:binary)."""
        return self.method in HAMMING

    @property
    def precision(self) -> int:
        return int(self.manifest["geohash_precision"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.manifest["model"])

    @property
    def code_bytes(self) -> int:
        return int(self.manifest["code"]["bytes"])

    def shards_meeting(self, bounds: Sequence[float] | None) -> list[ShardInfo]:
        """Shards whose bbox meets ``bounds`` (all of them for None)."""
        return [s for s in self.shards if bounds is None or s.meets(bounds)]

    def read_shard_table(self, shard: ShardInfo) -> Any:
        """A shard as a pyarrow Table, checked against the manifest (BadInputError naming the
        shard when it is missing, unreadable or does not match)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        f = self.path / shard.path
        if not f.is_file():
            raise BadInputError(f"shard {f} is missing")
        try:
            table = pq.read_table(f)
        except (OSError, pa.ArrowException) as exc:
            raise BadInputError(f"shard {f} is corrupt ({type(exc).__name__})") from None
        need = {"id", "lon", "lat", "geometry", "code"}
        if not need <= set(table.column_names):
            raise BadInputError(f"shard {f} lacks columns {sorted(need - set(table.column_names))}")
        width = table.schema.field("code").type
        if not pa.types.is_fixed_size_binary(width) or width.byte_width != self.code_bytes:
            raise BadInputError(f"shard {f}: code column is {width}, the manifest says "
                                f"{self.code_bytes}-byte codes")
        if table.num_rows != shard.rows:
            raise BadInputError(f"shard {f} holds {table.num_rows} rows, the manifest says "
                                f"{shard.rows}")
        return table

    def read_shard(self, shard: ShardInfo) -> Rows:
        """A shard's rows: columns (geometry as shapely), codes and re-rank codes."""
        import shapely

        table = self.read_shard_table(shard)
        codes = fixed_to_numpy(table.column("code"))
        rerank = fixed_to_numpy(table.column("rerank")) if "rerank" in table.column_names \
            else None
        frame = table.drop_columns([c for c in ("code", "rerank")
                                    if c in table.column_names]).to_pandas()
        frame["geometry"] = shapely.from_wkb(frame["geometry"].to_numpy())
        frame["shard"] = shard.geohash
        return Rows(frame, codes, rerank)

    def read_column(self, name: str) -> list[Any]:
        """One column over every shard (e.g. ids)."""
        import pyarrow.parquet as pq

        out: list[Any] = []
        for s in self.shards:
            self.read_shard_table(s)
            out += pq.read_table(self.path / s.path, columns=[name]).column(name).to_pylist()
        return out

    def rows(self, area: Any = None, allow_partial: bool = False) -> Rows:
        """Rows whose footprint meets ``area`` (a lon/lat shapely geometry; None: all), read
        only from shards whose bbox meets it. A bad shard is an error unless
        ``allow_partial`` (then it is named in ``Rows.skipped``)."""
        import pandas as pd
        import shapely

        bounds = None if area is None else area.bounds
        parts: list[Rows] = []
        skipped: list[str] = []
        for s in self.shards_meeting(bounds):
            try:
                r = self.read_shard(s)
            except BadInputError as exc:
                if not allow_partial:
                    raise BadInputError(f"{exc} (pass --allow-partial to search the other "
                                        "shards)") from None
                log.warning("%s; searching the other shards", exc)
                skipped.append(str(exc))
                continue
            if area is not None:
                shapely.prepare(area)
                keep = shapely.intersects(area, r.frame["geometry"].to_numpy())
                r = r.take(np.flatnonzero(keep))
            parts.append(r)
        if not parts:
            return Rows(pd.DataFrame(columns=["id", "lon", "lat", "geometry", "shard"]),
                        np.zeros((0, self.code_bytes), np.uint8), None, skipped)
        frame = pd.concat([p.frame for p in parts], ignore_index=True)
        rerank = None if any(p.rerank is None for p in parts) else \
            np.concatenate([p.rerank for p in parts])
        return Rows(frame, np.concatenate([p.codes for p in parts]), rerank, skipped)

    def lookup(self, lon: float, lat: float) -> Rows:
        """The one row whose footprint holds (lon, lat) (nearest centre among overlaps), from
        whichever shard has it; BadInputError when no shard or patch covers the point."""
        import shapely

        near = [s for s in self.shards if s.holds(lon, lat)]
        if not near:
            raise BadInputError(f"point {lon:g},{lat:g} is outside every shard of {self.path} "
                                f"(index bbox {_fmt(self.manifest['bbox'])})")
        best: tuple[float, Rows] | None = None
        for s in near:
            r = self.read_shard(s)
            hit = np.flatnonzero(shapely.intersects_xy(r.frame["geometry"].to_numpy(), lon,
                                                       lat))
            if not len(hit):
                continue
            d = np.hypot(r.frame["lon"].to_numpy()[hit] - lon,
                         r.frame["lat"].to_numpy()[hit] - lat)
            i = int(hit[np.argmin(d)])
            if best is None or d.min() < best[0]:
                best = (float(d.min()), r.take(np.array([i])))
        if best is None:
            raise BadInputError(f"point {lon:g},{lat:g}: no patch of {self.path} covers it")
        return best[1]

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Codes → float32 vectors in the embedding space (approximate)."""
        return self.codec.decode(codes)

    def decode_rerank(self, rerank: np.ndarray | None) -> np.ndarray | None:
        """int8 re-rank codes → (n, D) float32 vectors (None when the index has none)."""
        if rerank is None or self.rerank_codec is None:
            return None
        return self.rerank_codec.decode(rerank)

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Float query vectors → (codes, re-rank codes) with the index's codecs."""
        codes = self.codec.encode(vectors)
        return codes, None if self.rerank_codec is None else self.rerank_codec.encode(vectors)


def _fmt(b: Sequence[float] | None) -> str:
    return "none" if not b else ", ".join(f"{v:.4f}" for v in b)


def read_manifest(index: str | os.PathLike[str]) -> SearchIndex:
    """Open an index folder (BadInputError when it is not one)."""
    root = Path(index)
    mp = manifest_path(root)
    if not mp.is_file():
        raise NotFoundError(f"{root}: not a search index (no manifest.json)")
    try:
        m = json.loads(mp.read_text())
        if m.get("format") != FORMAT:
            raise ValueError(f"format {m.get('format')!r}")
        if int(m.get("version", 0)) > VERSION:
            raise ValueError(f"version {m['version']} is newer than {VERSION}")
        shards = [ShardInfo(str(s["geohash"]), str(s["path"]), int(s["rows"]),
                            tuple(float(v) for v in s["bbox"])) for s in m["shards"]]
        code_meta = _legacy_rot_binary(m) if "code_rotation" in m else m["code"]["codec"]
        codec = _codec_from(code_meta, root, f"{mp} code")
        rcodec = None if not m.get("rerank") else \
            _codec_from(m["rerank"]["codec"], root, f"{mp} rerank")
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"{mp}: not a valid index manifest ({exc})") from None
    for s in shards:  # a manifest pointing outside its folder is refused
        if Path(s.path).is_absolute() or ".." in Path(s.path).parts:
            raise BadInputError(f"{mp}: shard path {s.path!r} leaves the index folder")
    return SearchIndex(root, m, codec, rcodec, shards)


def open_index(index: str | os.PathLike[str]) -> SearchIndex:
    """Open a search index folder (see the module docstring for the API)."""
    return read_manifest(index)
