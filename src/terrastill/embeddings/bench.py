"""``embed-bench``: accuracy vs bytes per embedding for each compression method on a table.

Compression parameters are fitted on the ``train`` split only. The evaluators use train ∪ val
as their database / fit set (nothing is tuned on val: the probe's C comes from inner CV) and
score the ``test`` split. A table without a split gets a seeded stratified 60/20/20 split.
Every method is scored on vectors decoded back to the input space (what ``decompress``
returns), so PCA rows differ from float32 only by what compression loses; ``…/hamming`` rows
compare raw packed bits instead.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.embeddings import evaluate as ev
from terrastill.embeddings.compress import Method, fit, parse_method, unpack
from terrastill.embeddings.table import read_table
from terrastill.errors import BadInputError

log = logging.getLogger(__name__)
DEFAULT_METHODS = ("float32", "int8", "int4", "int2", "binary", "binary/hamming",
                   "pca:8+int8", "pca:16+int8", "pca:32+int8", "pca:64+int8", "pca:128+int8",
                   "rot:int4", "rot:int2", "rot:binary", "rot:binary/hamming")
RECALL_K = 10


@dataclass(frozen=True)
class BenchMethod:
    """A method and how its codes are compared (cosine on decoded vectors, or Hamming)."""

    method: Method
    hamming: bool = False

    @property
    def name(self) -> str:
        return f"{self.method}/hamming" if self.hamming else str(self.method)


def parse_bench_methods(text: str | None) -> list[BenchMethod]:
    """Comma-separated method strings; ``…binary/hamming`` scores raw codes by Hamming."""
    items = [v.strip() for v in (text.split(",") if text else DEFAULT_METHODS) if v.strip()]
    if not items:
        raise BadInputError("--methods: give at least one method")
    out = [BenchMethod(parse_method("float32"))]
    for item in items:
        base, _, how = item.partition("/")
        if how and how.strip().lower() != "hamming":
            raise BadInputError(f"--methods {item!r}: only '/hamming' may follow a method")
        bm = BenchMethod(parse_method(base), hamming=bool(how))
        if bm.hamming and bm.method.quant != "binary":
            raise BadInputError(f"--methods {item!r}: Hamming distance needs binary codes")
        if bm not in out:
            out.append(bm)
    return out


@dataclass
class Data:
    """The benchmark's rows: vectors, integer labels and the three index sets."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    train: np.ndarray
    db: np.ndarray
    test: np.ndarray
    split_source: str


def load_data(path: str | os.PathLike[str], seed: int) -> Data:
    """Read a labelled float table and resolve its split (or make a stratified one)."""
    from terrastill.embeddings.images import stratified_split

    table = read_table(path)
    if table.meta.get("compression") or table.vectors.dtype == np.uint8:
        raise BadInputError(f"{path}: a compressed table; give the float32 table it came from")
    if table.labels is None:
        raise BadInputError(f"{path}: table has no labels (column 'label' missing or empty)")
    keep = table.frame["label"].notna().to_numpy()
    x = table.vectors[keep].astype(np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise BadInputError(f"{path}: row id {table.frame['id'][keep].iloc[np.argmax(bad)]!r} "
                            "has NaN or infinite embedding values")
    labels = table.frame["label"][keep].astype(str).to_numpy()
    classes = sorted(set(labels))
    y = np.searchsorted(classes, labels)
    has_split = "split" in table.frame and not table.frame["split"][keep].isna().all()
    if has_split:
        split = table.frame["split"][keep].astype(str).to_numpy()
        source = "table"
    else:
        split = np.asarray(stratified_split(labels, seed=seed))
        source = f"stratified 60/20/20 split made here (seed {seed})"
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    db = np.flatnonzero((split == "train") | (split == "val"))
    if len(train) < 2 or len(test) < 1:
        raise BadInputError(f"{path}: need ≥ 2 train and ≥ 1 test rows (have {len(train)} "
                            f"train, {len(test)} test)")
    if len(set(y[db])) < 2:
        raise BadInputError(f"{path}: the train rows hold fewer than two classes")
    return Data(x, y, classes, train, db, test, source)


@dataclass
class Scored:
    """Test predictions and neighbours of one method under both evaluators."""

    knn: np.ndarray
    linear: np.ndarray
    nbrs: np.ndarray
    c: float


def _score(data: Data, db_x: np.ndarray, test_x: np.ndarray, k: int, seed: int,
           neighbours: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
           probe: tuple[np.ndarray, np.ndarray]) -> Scored:
    nbrs = neighbours(test_x, db_x, max(k, RECALL_K))
    knn = ev.vote(nbrs[:, :k], data.y[data.db], len(data.classes))
    lin, c = ev.linear_probe(probe[0], data.y[data.db], probe[1], seed=seed)
    return Scored(knn, lin, nbrs[:, :RECALL_K], c)


def _evaluate(bm: BenchMethod, data: Data, k: int, seed: int) -> tuple[Scored, Any]:
    codec = fit(bm.method, data.x[data.train], seed=seed, fit_info={"split": "train"})
    if bm.hamming:
        codes = codec.encode(data.x)
        bits = unpack(codes, 1, codec.code_dim).astype(np.float64)
        return _score(data, codes[data.db], codes[data.test], k, seed, ev.hamming_neighbours,
                      (bits[data.db], bits[data.test])), codec
    dec = codec.decode(codec.encode(data.x)).astype(np.float64)
    return _score(data, dec[data.db], dec[data.test], k, seed, ev.cosine_neighbours,
                  (dec[data.db], dec[data.test])), codec


def _skip_reason(bm: BenchMethod, data: Data) -> str | None:
    k, dim = bm.method.pca, data.x.shape[1]
    if k is not None and k >= dim:
        return f"skipped: K = {k} ≥ dim {dim}"
    if k is not None and k > len(data.train):
        return f"skipped: K = {k} > {len(data.train)} train rows"
    return None


def _row(bm: BenchMethod, data: Data, ref: Scored, got: Scored, codec: Any,
         boot: np.ndarray) -> dict[str, Any]:
    yt = data.y[data.test]
    dim = data.x.shape[1]
    row: dict[str, Any] = {"method": bm.name, "evaluator": "hamming" if bm.hamming else "cosine",
                           "status": "ok", "bits": bm.method.bits, "code_dim": codec.code_dim,
                           "bytes_per_embedding": codec.bytes_per_embedding,
                           "ratio": 4 * dim / codec.bytes_per_embedding}
    for name in ("knn", "linear"):
        r_ok, m_ok = getattr(ref, name) == yt, getattr(got, name) == yt
        lo, hi = ev.bootstrap_diff(r_ok, m_ok, boot)
        f1 = ev.per_class_f1(yt, getattr(got, name), len(data.classes)) - \
            ev.per_class_f1(yt, getattr(ref, name), len(data.classes))
        present = np.unique(yt)
        worst = int(present[np.argmin(f1[present])])
        same = got is ref  # the reference row: no class can drop
        row.update({f"{name}_acc": float(m_ok.mean()),
                    f"{name}_diff": float(m_ok.mean() - r_ok.mean()),
                    f"{name}_ci_lo": lo, f"{name}_ci_hi": hi,
                    f"{name}_mcnemar_p": ev.mcnemar_p(r_ok, m_ok),
                    f"worst_class_{name}": None if same else data.classes[worst],
                    f"worst_f1_drop_{name}": None if same else float(f1[worst])})
    row["linear_C"] = got.c
    row["recall_at_10"] = ev.recall_at(ref.nbrs, got.nbrs)
    row["pca_explained_variance"] = codec.explained_variance
    return row


def run_bench(src: str | os.PathLike[str], methods: list[BenchMethod], seed: int = 0,
              k: int = 5, bootstrap: int = 1000,
              on_method: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score every method against float32; returns the summary with one row per method."""
    t0 = time.perf_counter()
    data = load_data(src, seed)
    if k < 1 or k > len(data.db):
        raise BadInputError(f"--k {k}: between 1 and the {len(data.db)} train rows")
    boot = ev.bootstrap_indices(len(data.test), bootstrap, seed)
    rows, ref = [], None
    for bm in methods:
        reason = _skip_reason(bm, data)
        if reason:
            log.info("%s: %s", bm.name, reason)
            rows.append({"method": bm.name, "status": reason})
        else:
            got, codec = _evaluate(bm, data, k, seed)
            ref = ref or got
            rows.append(_row(bm, data, ref, got, codec, boot))
        if on_method:
            on_method(bm.name)
    counts = {s: int(len(v)) for s, v in (("train", data.train), ("db", data.db),
                                          ("test", data.test))}
    return {"input": str(src), "rows": int(len(data.x)), "dim": int(data.x.shape[1]),
            "classes": data.classes, "split": data.split_source, "counts": counts,
            "seed": seed, "k": k, "bootstrap": bootstrap,
            "protocol": "compression fitted on train; kNN database and probe fit on train+val; "
                        "scored on test; decoded vectors in the input space",
            "elapsed_s": round(time.perf_counter() - t0, 2), "methods": rows}


COLUMNS = ("method", "evaluator", "status", "bits", "code_dim", "bytes_per_embedding", "ratio",
           "knn_acc", "knn_diff", "knn_ci_lo", "knn_ci_hi", "knn_mcnemar_p", "linear_acc",
           "linear_diff", "linear_ci_lo", "linear_ci_hi", "linear_mcnemar_p", "linear_C",
           "recall_at_10", "pca_explained_variance", "worst_class_knn", "worst_f1_drop_knn",
           "worst_class_linear", "worst_f1_drop_linear")


def write_outputs(summary: dict[str, Any], out: str | os.PathLike[str]) -> dict[str, Path]:
    """results.csv, results.md, results.json and pareto.png in ``out`` (each atomically)."""
    import csv
    import io
    import json

    from terrastill.atomic import write_text_atomic
    from terrastill.embeddings.bench_report import markdown, pareto_png

    out = Path(out)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in summary["methods"]:
        w.writerow({c: _csv(r.get(c)) for c in COLUMNS})
    paths = {"csv": out / "results.csv", "md": out / "results.md",
             "json": out / "results.json", "png": out / "pareto.png"}
    write_text_atomic(paths["csv"], buf.getvalue())
    write_text_atomic(paths["json"], json.dumps(_no_nan(summary), indent=2, allow_nan=False,
                                                default=_json_safe) + "\n")
    write_text_atomic(paths["md"], markdown(summary))
    pareto_png(summary, paths["png"])
    return paths


def _csv(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def _no_nan(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_no_nan(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def _json_safe(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else str(v)
