"""Search an index by example: exemplar lookup, shard pruning, exact code distances, re-rank.

Scoring (``distance``: smaller is more alike):

- ``binary`` / ``rot:binary`` codes: exact Hamming distance
  (:mod:`terrastill.embeddings.hamming`). Several
  positives combine by the ``mean`` of their distances, or by bitwise ``and`` / ``or`` of
  their codes before scoring; ``invert`` scores against the bitwise NOT of the (combined)
  query, i.e. ``bits − distance``.
- ``int4`` / ``rot:int4`` codes: cosine distance (1 − cos) between decoded vectors; positives
  combine by ``mean``; ``invert`` gives ``2 − distance`` (the distance to the negated query).
- negatives (anywhere in the index): ``distance = positive distance − mean negative
  distance`` (contrastive).
- ``rerank``: the ``depth`` best rows by code distance, plus the rows tied with the
  ``depth``-th distance (at most ``TIE_FACTOR × depth`` rows in all; ties beyond that by id),
  are re-scored by cosine distance on the index's int8 codes (positives: mean, negatives and
  invert as above) and re-ordered. Hamming distances of short codes tie a lot (D sign bits
  give D + 1 values), so a cut at exactly ``depth`` rows would drop tied rows by id, i.e. at
  random with respect to the true distance.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.embeddings import hamming
from terrastill.embeddings.compress import unpack
from terrastill.embeddings.index import Rows, SearchIndex, fixed_to_numpy, same_model
from terrastill.errors import BadInputError

log = logging.getLogger(__name__)
COMBINE = ("mean", "and", "or")
DEFAULT_DEPTH = 100
TIE_FACTOR = 2  # re-rank at most this many × depth rows when code distances tie at the cut


@dataclass
class Query:
    """What to look for and where."""

    near: list[tuple[float, float]] = field(default_factory=list)
    negatives: list[tuple[float, float]] = field(default_factory=list)
    area: Any = None  # lon/lat shapely geometry; None: the whole index
    k: int = 100
    combine: str = "mean"
    invert: bool = False
    rerank: bool = False
    depth: int | None = None  # rows re-ranked (default max(100, 4k))
    allow_partial: bool = False
    vectors: np.ndarray | None = None  # extra positive float vectors (e.g. from a table)
    vector_model: dict[str, Any] | None = None


@dataclass
class Exemplars:
    """Query rows: codes plus float vectors for re-ranking (decoded int8 or given)."""

    codes: np.ndarray
    floats: np.ndarray | None
    ids: list[str]


@dataclass
class SearchResult:
    """Top-k rows, best first, with scores; ``candidates`` rows were scored."""

    rows: Rows
    distance: np.ndarray
    code_distance: np.ndarray
    candidates: int
    shards_searched: int
    skipped: list[str]
    positives: list[str]
    negatives: list[str]
    all_distance: np.ndarray | None = None  # per candidate (heatmaps), aligned with `pool`
    pool: Rows | None = None
    reranked: bool = False

    def frame(self) -> Any:
        """The result as a pandas DataFrame (rank, distance, id, geometry, index columns)."""
        f = self.rows.frame.copy()
        f.insert(0, "rank", np.arange(1, len(f) + 1, dtype=np.int32))
        f.insert(1, "distance", self.distance)
        f.insert(2, "code_distance", self.code_distance)
        return f


def _check_query(index: SearchIndex, q: Query) -> None:
    if q.combine not in COMBINE:
        raise BadInputError(f"--combine {q.combine}: expected mean, and or or")
    if not q.near and (q.vectors is None or not len(q.vectors)):
        raise BadInputError("give at least one exemplar (--near LON,LAT)")
    if q.k <= 0:
        raise BadInputError(f"--k {q.k}: expected a positive number of results")
    if q.combine != "mean" and not index.hamming:
        raise BadInputError(f"--combine {q.combine}: AND/OR combine binary codes; this index "
                            f"stores {index.method} codes (use mean)")
    if q.rerank and index.rerank_codec is None:
        raise BadInputError(f"--rerank: {index.path} was built without int8 re-rank codes "
                            "(index --rerank int8)")
    if q.depth is not None and q.depth < 1:
        raise BadInputError(f"--rerank-depth {q.depth}: expected a positive number")
    for lon, lat in q.near + q.negatives:
        if not (np.isfinite(lon) and np.isfinite(lat) and -180 <= lon <= 180
                and -90 <= lat <= 90):
            raise BadInputError(f"point {lon},{lat}: expected lon in [-180, 180], lat in "
                                "[-90, 90]")
    if q.vectors is not None:
        v = np.asarray(q.vectors)
        model = q.vector_model or {}
        if v.ndim != 2 or v.shape[1] != index.dim or not same_model(model, index.model):
            raise BadInputError(
                f"the query holds {model.get('name')} embeddings of "
                f"{v.shape[-1] if v.ndim else 0} dims; {index.path} indexes "
                f"{index.model.get('name')} embeddings of {index.dim} dims")


def _exemplars(index: SearchIndex, points: list[tuple[float, float]],
               vectors: np.ndarray | None = None) -> Exemplars:
    codes, floats, ids = [], [], []
    for lon, lat in points:
        r = index.lookup(lon, lat)
        codes.append(r.codes)
        dec = index.decode_rerank(r.rerank)
        floats.append(dec if dec is not None else index.decode_codes(r.codes))
        ids.append(str(r.frame["id"].iloc[0]))
    if vectors is not None and len(vectors):
        c, _ = index.encode(np.asarray(vectors, np.float64))
        codes.append(c)
        floats.append(np.asarray(vectors, np.float32))
        ids += [f"vector:{i}" for i in range(len(vectors))]
    if not codes:
        return Exemplars(np.zeros((0, index.code_bytes), np.uint8), None, [])
    return Exemplars(np.concatenate(codes), np.concatenate(floats), ids)


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) 1 − cos between rows."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - (a / np.where(na > 0, na, 1)) @ (b / np.where(nb > 0, nb, 1)).T


def code_space(index: SearchIndex, codes: np.ndarray) -> np.ndarray:
    """int4 codes → the quantised values in the codec's own (rotated) space, float32."""
    p = index.codec.params
    c = index.codec
    return (p["lo"] + unpack(codes, c.method.bits, c.code_dim) * p["step"]).astype(np.float32)


def _int4_distance(index: SearchIndex, query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Cosine distance in the embedding space from float queries to int4 codes, computed in
    the code space: x̂ = μ + Rᵀy, so x̂·p = y·(R p) + μ·p and |x̂|² = |y|² + 2 y·(R μ) + |μ|²
    (R = I, μ = 0 without rotation)."""
    y = code_space(index, codes).astype(np.float64)
    p = index.codec.params
    q = np.asarray(query, np.float64)
    if index.codec.method.pca is not None:
        raise BadInputError("PCA codes are not searchable")
    if "rotation" in p:
        rot, mu = p["rotation"], p["center"]
        dots = y @ (rot @ q.T) + (q @ mu)[None, :]
        norm2 = (y * y).sum(1) + 2 * y @ (rot @ mu) + mu @ mu
    else:
        dots = y @ q.T
        norm2 = (y * y).sum(1)
    qn = np.linalg.norm(q, axis=1)
    cos = dots / np.maximum(np.sqrt(np.maximum(norm2, 0))[:, None] * qn[None, :], 1e-30)
    return (1.0 - cos).T


def _valid_bits_mask(index: SearchIndex) -> np.ndarray:
    bits = np.zeros(index.code_bytes * 8, np.uint8)
    bits[:index.codec.code_dim] = 1
    return np.packbits(bits)


def code_distances(index: SearchIndex, pos: Exemplars, neg: Exemplars, codes: np.ndarray,
                   combine: str, invert: bool) -> np.ndarray:
    """Distance of every row's code to the query (see the module docstring)."""
    if index.hamming:
        bits = index.codec.code_dim
        if combine == "mean":
            qcodes = pos.codes
        else:
            op = np.bitwise_and if combine == "and" else np.bitwise_or
            qcodes = op.reduce(pos.codes, axis=0, keepdims=True)
        d = hamming.distances(qcodes, codes).astype(np.float64).mean(axis=0)
        if invert:
            d = bits - d
        if len(neg.codes):
            d = d - hamming.distances(neg.codes, codes).astype(np.float64).mean(axis=0)
        return d
    assert pos.floats is not None
    d = _int4_distance(index, pos.floats, codes).mean(axis=0)
    if invert:
        d = 2.0 - d
    if len(neg.codes):
        assert neg.floats is not None
        d = d - _int4_distance(index, neg.floats, codes).mean(axis=0)
    return d


def rerank_distances(index: SearchIndex, pos: Exemplars, neg: Exemplars,
                     rerank: np.ndarray, invert: bool) -> np.ndarray:
    """Cosine distance on the int8 re-rank codes (positives by mean)."""
    vec = index.decode_rerank(rerank)
    assert vec is not None and pos.floats is not None
    d = _cosine_distance(pos.floats, vec).mean(axis=0)
    if invert:
        d = 2.0 - d
    if neg.floats is not None and len(neg.floats):
        d = d - _cosine_distance(neg.floats, vec).mean(axis=0)
    return d


def _top(d: np.ndarray, k: int, ids: np.ndarray) -> np.ndarray:
    """Indices of the ``k`` smallest distances, ties by id (deterministic)."""
    if k < len(d):
        part = np.argpartition(d, k - 1)[:k]
        kth = d[part].max()
        part = np.flatnonzero(d <= kth)  # every row tied with the k-th competes on id
    else:
        part = np.arange(len(d))
    order = np.lexsort((ids[part], d[part]))
    return part[order][:k]


def rerank_candidates(d: np.ndarray, depth: int, ids: np.ndarray,
                      limit: int | None = None) -> np.ndarray:
    """Rows to re-rank, best code distance first (ties by id): the ``depth`` best and every
    row tied with the ``depth``-th distance, at most ``limit`` rows (default ``TIE_FACTOR ×
    depth``; the ties beyond it go by id)."""
    n = len(d)
    if depth >= n:
        return _top(d, n, ids)
    limit = max(depth, limit if limit is not None else TIE_FACTOR * depth)
    kth = np.partition(d, depth - 1)[depth - 1]
    return _top(d, min(int((d <= kth).sum()), limit), ids)


def run_search(index: SearchIndex, q: Query, keep_all: bool = False) -> SearchResult:
    """Run a query against an opened index (``keep_all``: also return every candidate's
    distance, for heatmaps)."""
    _check_query(index, q)
    pos = _exemplars(index, q.near, q.vectors)
    neg = _exemplars(index, q.negatives)
    if neg.floats is None:
        neg.floats = np.zeros((0, index.dim), np.float32)
    pool = index.rows(q.area, allow_partial=q.allow_partial)
    n = len(pool)
    searched = len(index.shards_meeting(None if q.area is None else q.area.bounds))
    if n == 0:
        raise BadInputError(f"no indexed patch in the search area ({searched} shard(s) "
                            "opened)")
    if q.k > n:
        raise BadInputError(f"--k {q.k} is larger than the {n} candidate patches in the "
                            "search area")
    d = code_distances(index, pos, neg, pool.codes, q.combine, q.invert)
    ids = pool.frame["id"].astype(str).to_numpy()
    if q.rerank:
        assert pool.rerank is not None
        depth = min(n, max(q.depth or max(DEFAULT_DEPTH, 4 * q.k), q.k))
        cand = rerank_candidates(d, depth, ids)
        rd = rerank_distances(index, pos, neg, pool.rerank[cand], q.invert)
        order = _top(rd, q.k, ids[cand])
        best, final = cand[order], rd[order]
    else:
        best = _top(d, q.k, ids)
        final = d[best]
    return SearchResult(rows=pool.take(best), distance=np.asarray(final, np.float64),
                        code_distance=d[best].astype(np.float64), candidates=n,
                        shards_searched=searched - len(pool.skipped), skipped=pool.skipped,
                        positives=pos.ids, negatives=neg.ids,
                        all_distance=d if keep_all else None, pool=pool if keep_all else None,
                        reranked=q.rerank)


def result_table(index: SearchIndex, result: SearchResult, name: str | None = None) -> Any:
    """The result as a pyarrow Table with GeoParquet metadata (rank, distance, id, geometry,
    the index's columns, best first). With ``name`` (the service) the metadata names the
    index by it and counts skipped shards instead of naming their files."""
    import json

    import pyarrow as pa
    import shapely

    from terrastill.embeddings.index import _fixed

    f = result.frame()
    geoms = f["geometry"].to_numpy()
    cols: dict[str, Any] = {
        "rank": pa.array(f["rank"].to_numpy(np.int32)),
        "distance": pa.array(f["distance"].to_numpy(np.float64)),
        "id": pa.array(f["id"].astype(str).tolist(), pa.string()),
        "geometry": pa.array(shapely.to_wkb(geoms), pa.binary()),
        "code_distance": pa.array(f["code_distance"].to_numpy(np.float64)),
    }
    for col in f.columns:
        if col not in cols:
            cols[col] = pa.array(f[col].tolist())
    cols["code"] = _fixed(result.rows.codes)
    if result.rows.rerank is not None:
        cols["rerank"] = _fixed(result.rows.rerank)
    b = shapely.bounds(geoms)
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                    "bbox": [float(b[:, 0].min()), float(b[:, 1].min()),
                                             float(b[:, 2].max()), float(b[:, 3].max())]}}}
    info = {"index": name or str(index.path), "method": index.method,
            "distance": index.manifest["rerank"]["distance"] if result.reranked
            else index.manifest["code"]["distance"],
            "candidates": result.candidates, "positives": result.positives,
            "negatives": result.negatives,
            "skipped_shards": len(result.skipped) if name else result.skipped}
    return pa.table(cols).replace_schema_metadata({b"geo": json.dumps(geo).encode(),
                                                   b"terrastill": json.dumps(info).encode()})


def write_result(index: SearchIndex, result: SearchResult,
                 out: str | os.PathLike[str]) -> Path:
    """Write the result as GeoParquet (ZSTD) atomically."""
    import pyarrow.parquet as pq

    from terrastill.atomic import atomic_path

    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".geoparquet"):
        out = out / "results.parquet"
    table = result_table(index, result)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return out


def read_codes(path: str | os.PathLike[str], column: str = "code") -> np.ndarray:
    """A fixed-size binary column of a Parquet file as (n, width) uint8."""
    import pyarrow.parquet as pq

    return fixed_to_numpy(pq.read_table(path, columns=[column]).column(column))
