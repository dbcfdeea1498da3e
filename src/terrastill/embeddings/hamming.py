"""Exact Hamming distances between packed binary codes: a compiled popcount scan, NumPy fallback.

Codes are (N, B) uint8 rows (``np.packbits`` order), zero-padded to whole 64-bit words.

- ``numba`` backend (the default when numba imports): :mod:`terrastill.embeddings.hamming_numba`
  fuses XOR, popcount (LLVM ``ctpop``), accumulation and the top-k selection in one compiled
  kernel over row-major (N, W) words; threads split the queries (or, for few queries, the
  base rows). Kernels compile on first use and are cached on disk (see that module).
- ``numpy`` backend (fallback): word-major (W, N) words, so that one step XORs one word of a
  block of queries against one word of a block of base rows (a broadcast outer XOR), counts
  its bits with ``np.bitwise_count`` (NumPy ≥ 2.0; a byte lookup table otherwise) and adds the
  counts into uint16 accumulators; top-k keeps, per query, the k best (distance, row) pairs
  so far and only looks at entries at or under the current k-th distance of each later block.

Both give the same exact distances and the same neighbours (ties by lower row index).
``TERRASTILL_HAMMING=numpy`` forces the fallback.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache
from types import ModuleType

import numpy as np

log = logging.getLogger(__name__)
BACKENDS = ("numba", "numpy")
QUERY_BLOCK = 16
BASE_BLOCK = 4096
_LUT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Bits set in each element (uint8 counts)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    b = x.view(np.uint8).reshape(*x.shape, x.itemsize)  # pragma: no cover - NumPy < 2
    return _LUT[b].sum(axis=-1, dtype=np.uint8)


@dataclass(frozen=True)
class Words:
    """Packed codes as row-major uint64 words (N, W), ready for :func:`distances` / :func:`knn`
    (the NumPy backend's word-major copy is made on first use)."""

    rows: np.ndarray
    nbytes: int

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])

    @property
    def nwords(self) -> int:
        return int(self.rows.shape[1])

    @cached_property
    def words(self) -> np.ndarray:
        """Word-major (W, N) copy for the NumPy backend."""
        return np.ascontiguousarray(self.rows.T)

    @classmethod
    def of(cls, codes: np.ndarray) -> Words:
        codes = np.ascontiguousarray(codes, np.uint8)
        if codes.ndim != 2:
            raise ValueError(f"codes must be (N, B) uint8, got shape {codes.shape}")
        n, nbytes = codes.shape
        if nbytes == 0:
            raise ValueError("codes must hold at least one byte per row")
        pad = (-nbytes) % 8
        if pad:
            codes = np.pad(codes, ((0, 0), (0, pad)))
        return cls(np.ascontiguousarray(codes.view(np.uint64).reshape(n, -1)), nbytes)


@lru_cache(maxsize=1)
def _numba() -> ModuleType | None:
    """The compiled kernels' module, or None when numba cannot be imported."""
    try:
        from terrastill.embeddings import hamming_numba
    except ImportError as e:  # numba missing or broken: NumPy fallback
        log.info("numba unavailable (%s): NumPy Hamming scan", e)
        return None
    return hamming_numba


def choose_backend(name: str | None = None) -> str:
    """The backend to use: ``name`` if given, else ``$TERRASTILL_HAMMING``, else numba when it
    imports, else numpy."""
    name = (name or os.environ.get("TERRASTILL_HAMMING") or "").lower() or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"Hamming backend {name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "numpy":
        return "numpy"
    if _numba() is None:
        if name == "numba":
            raise ValueError("Hamming backend 'numba': numba cannot be imported")
        return "numpy"
    return "numba"


_LOCK = threading.Lock()  # one parallel kernel at a time (numba's thread pool is shared)
SERIAL_WORK = 1 << 20  # fewer distances than this run in the calling thread: waking the
# pool costs more (5–45 ms per call on the loaded 2-core VM, vs 0.04 ms for 64 rows)


def _threads(threads: int | None, work: int) -> int:
    import numba

    if work < SERIAL_WORK:
        return 1
    limit = numba.config.NUMBA_NUM_THREADS
    return limit if threads is None else max(1, min(int(threads), limit))


def _as_words(codes: np.ndarray | Words) -> Words:
    return codes if isinstance(codes, Words) else Words.of(codes)


class _Scratch:
    """Reusable buffers of one worker: XOR words, their bit counts, the uint16 sums."""

    def __init__(self, nq: int, nb: int):
        self.x = np.empty((nq, nb), np.uint64)
        self.c = np.empty((nq, nb), np.uint8)
        self.c2 = np.empty((nq, nb), np.uint8)
        self.acc = np.empty((nq, nb), np.uint16)


def _count(x: np.ndarray, out: np.ndarray) -> None:
    if hasattr(np, "bitwise_count"):
        np.bitwise_count(x, out=out)
    else:  # pragma: no cover - NumPy < 2
        out[...] = popcount(x)


def _block(q: np.ndarray, base: np.ndarray, buf: _Scratch | None = None) -> np.ndarray:
    """(len(q), nb) uint16 distances; ``q`` is (nq, W) uint64, ``base`` (W, nb) uint64.

    Per word: one broadcast XOR and one popcount into uint8; the counts of up to three words
    are summed in uint8 (≤ 192) before one add into the uint16 totals."""
    nq, nb = q.shape[0], base.shape[1]
    if buf is None or buf.x.shape[0] < nq or buf.x.shape[1] < nb:
        buf = _Scratch(nq, nb)
    x, c, c2, acc = (a[:nq, :nb] for a in (buf.x, buf.c, buf.c2, buf.acc))
    words = base.shape[0]
    for w0 in range(0, words, 3):
        np.bitwise_xor(q[:, w0, None], base[w0, None, :], out=x)
        _count(x, c)
        for w in range(w0 + 1, min(w0 + 3, words)):
            np.bitwise_xor(q[:, w, None], base[w, None, :], out=x)
            _count(x, c2)
            np.add(c, c2, out=c)
        if w0 == 0:
            acc[...] = c
        else:
            np.add(acc, c, out=acc)
    return acc


def _pair(queries: np.ndarray | Words, base: np.ndarray | Words) -> tuple[Words, Words]:
    qw, bw = _as_words(queries), _as_words(base)
    if qw.nwords != bw.nwords:
        raise ValueError(f"codes of {qw.nbytes} and {bw.nbytes} bytes cannot be compared")
    return qw, bw


def distances(queries: np.ndarray | Words, base: np.ndarray | Words,
              threads: int | None = None, backend: str | None = None) -> np.ndarray:
    """(len(queries), len(base)) exact Hamming distances (uint16). ``threads`` (numba
    backend; default: numba's thread count) split the base rows."""
    qw, bw = _pair(queries, base)
    out = np.empty((qw.n, bw.n), np.uint16)
    if qw.n == 0 or bw.n == 0:
        return out
    if choose_backend(backend) == "numba":
        import numba

        jit = _numba()
        assert jit is not None
        with _LOCK:
            old = numba.get_num_threads()
            numba.set_num_threads(_threads(threads, qw.n * bw.n))
            try:
                jit.distances_into(qw.rows, bw.rows, out, BASE_BLOCK)
            finally:
                numba.set_num_threads(old)
        return out
    q = qw.rows
    buf = _Scratch(min(QUERY_BLOCK, qw.n), min(BASE_BLOCK, bw.n))
    for s in range(0, bw.n, BASE_BLOCK):
        blk = bw.words[:, s:s + BASE_BLOCK]
        for j in range(0, qw.n, QUERY_BLOCK):
            out[j:j + QUERY_BLOCK, s:s + blk.shape[1]] = _block(q[j:j + QUERY_BLOCK], blk,
                                                                 buf)
    return out


def _merge(best_d: np.ndarray, best_i: np.ndarray, rows: np.ndarray, d: np.ndarray,
           idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep each row's k smallest (distance, index) pairs of its current best plus new ones."""
    nq = best_d.shape[0]
    r = np.concatenate([np.repeat(np.arange(nq), best_d.shape[1]), rows])
    dd = np.concatenate([best_d.ravel(), d])
    ii = np.concatenate([best_i.ravel(), idx])
    order = np.lexsort((ii, dd, r))
    r, dd, ii = r[order], dd[order], ii[order]
    start = np.searchsorted(r, np.arange(nq))
    pos = np.arange(len(r)) - start[r]
    keep = pos < k
    out_d = np.full((nq, k), np.iinfo(np.int32).max, np.int32)
    out_i = np.full((nq, k), -1, np.int64)
    out_d[r[keep], pos[keep]] = dd[keep]
    out_i[r[keep], pos[keep]] = ii[keep]
    return out_d, out_i


def _knn_range(q: np.ndarray, base: np.ndarray, k: int, offset: int
               ) -> tuple[np.ndarray, np.ndarray]:
    nq, n = q.shape[0], base.shape[1]
    best_d = np.full((nq, k), np.iinfo(np.int32).max, np.int32)
    best_i = np.full((nq, k), -1, np.int64)
    buf = _Scratch(min(QUERY_BLOCK, nq), min(BASE_BLOCK, n))
    for j in range(0, nq, QUERY_BLOCK):
        qb = q[j:j + QUERY_BLOCK]
        bd, bi = best_d[j:j + len(qb)], best_i[j:j + len(qb)]
        for s in range(0, n, BASE_BLOCK):
            acc = _block(qb, base[:, s:s + BASE_BLOCK], buf)
            if s == 0 and acc.shape[1] > k:  # seed with the first block's k-th distance
                tau = np.partition(acc, k - 1, axis=1)[:, k - 1]  # (every row tied with it
            else:                                                 # competes on its index)
                tau = np.minimum(bd[:, -1], 65535).astype(np.uint16)
            rows, cols = np.nonzero(acc <= tau[:, None])
            if len(rows):
                bd, bi = _merge(bd, bi, rows, acc[rows, cols].astype(np.int32),
                                cols.astype(np.int64) + s + offset, k)
        best_d[j:j + len(qb)], best_i[j:j + len(qb)] = bd, bi
    return best_d, best_i


def knn(queries: np.ndarray | Words, base: np.ndarray | Words, k: int, threads: int = 1,
        backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` nearest base rows by exact Hamming distance: (int32 distances, int64
    indices), nearest first, ties by lower index. ``threads`` split the queries (numba, when
    there are enough) or the base rows (NumPy releases the GIL inside its loops)."""
    qw, bw = _pair(queries, base)
    if not 1 <= k <= bw.n:
        raise ValueError(f"k = {k}: expected 1..{bw.n}")
    if qw.n == 0:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.int64)
    if choose_backend(backend) == "numba":
        return _knn_numba(qw, bw, k, threads)
    q = qw.rows
    threads = max(1, min(threads, bw.n // max(k, BASE_BLOCK // 4) or 1))
    if threads == 1:
        return _knn_range(q, bw.words, k, 0)
    edges = np.linspace(0, bw.n, threads + 1).astype(int)
    parts: Sequence[tuple[np.ndarray, np.ndarray]]
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda t: _knn_range(q, bw.words[:, edges[t]:edges[t + 1]], k,
                                                   int(edges[t])), range(threads)))
    d, i = parts[0]
    for pd, pi in parts[1:]:
        rows = np.repeat(np.arange(len(pd)), k)
        d, i = _merge(d, i, rows, pd.ravel(), pi.ravel(), k)
    return d, i


NUMBA_BLOCK = 2048  # base rows per block: 2048 × 128 B codes stay in a core's L2


def _knn_numba(qw: Words, bw: Words, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """The compiled scan: tasks are query chunks (several per thread, taken dynamically so a
    busy core does not hold the others up) or, with fewer queries than 4 per thread, base
    parts whose k-best lists are merged here."""
    import numba

    jit = _numba()
    assert jit is not None
    t = _threads(threads, qw.n * bw.n)
    if qw.n >= 4 * t:
        qchunks, bparts = min(4 * t, qw.n // 4), 1
    else:
        qchunks, bparts = 1, max(1, min(t, bw.n // max(k, NUMBA_BLOCK)))
    with _LOCK:
        old = numba.get_num_threads()
        numba.set_num_threads(t)
        try:
            with numba.parallel_chunksize(1):
                d, i = jit.knn_parts(qw.rows, bw.rows, k, qchunks, bparts, NUMBA_BLOCK)
        finally:
            numba.set_num_threads(old)
    if bparts == 1:
        return d[0], i[0]
    # merge the parts' sorted lists: by distance, then row (unfilled slots sort last)
    d = d.transpose(1, 0, 2).reshape(qw.n, -1)
    i = i.transpose(1, 0, 2).reshape(qw.n, -1)
    key = d.astype(np.int64) * (bw.n + 1) + np.where(i < 0, bw.n, i)
    top = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, top, 1), np.take_along_axis(i, top, 1)
