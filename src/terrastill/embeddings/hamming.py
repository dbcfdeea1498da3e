"""Exact Hamming distances between packed binary codes: popcount over 64-bit words, blockwise.

Codes are (N, B) uint8 rows (``np.packbits`` order). They are zero-padded to whole 64-bit
words and stored word-major (W, N) so that one step XORs one word of a block of queries
against one word of a block of base rows (a broadcast outer XOR), counts its bits with
``np.bitwise_count`` (NumPy ≥ 2.0; a byte lookup table otherwise) and adds the counts into
uint16 accumulators. No per-row Python: the loops run over words and blocks only. Top-k
keeps, per query, the k best (distance, row) pairs so far and only looks at entries at or
under the current k-th distance of each later block.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

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
    """Packed codes as word-major uint64 (W, N), ready for :func:`distances` / :func:`knn`."""

    words: np.ndarray
    nbytes: int

    @property
    def n(self) -> int:
        return int(self.words.shape[1])

    @classmethod
    def of(cls, codes: np.ndarray) -> Words:
        codes = np.ascontiguousarray(codes, np.uint8)
        if codes.ndim != 2:
            raise ValueError(f"codes must be (N, B) uint8, got shape {codes.shape}")
        n, nbytes = codes.shape
        pad = (-nbytes) % 8
        if pad:
            codes = np.pad(codes, ((0, 0), (0, pad)))
        w = codes.view(np.uint64).reshape(n, -1)
        return cls(np.ascontiguousarray(w.T), nbytes)


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


def distances(queries: np.ndarray | Words, base: np.ndarray | Words) -> np.ndarray:
    """(len(queries), len(base)) exact Hamming distances (uint16)."""
    qw, bw = _as_words(queries), _as_words(base)
    if qw.words.shape[0] != bw.words.shape[0]:
        raise ValueError(f"codes of {qw.nbytes} and {bw.nbytes} bytes cannot be compared")
    q = np.ascontiguousarray(qw.words.T)
    out = np.empty((qw.n, bw.n), np.uint16)
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
            if s == 0 and acc.shape[1] > k:  # seed the k best with the first block
                part = np.argpartition(acc, k - 1, axis=1)[:, :k]
                rows = np.repeat(np.arange(len(qb)), k)
                cols = part.ravel()
            else:
                tau = bd[:, -1]
                rows, cols = np.nonzero(acc <= np.minimum(tau, 65535)[:, None].astype(np.uint16))
            if len(rows):
                bd, bi = _merge(bd, bi, rows, acc[rows, cols].astype(np.int32),
                                cols.astype(np.int64) + s + offset, k)
        best_d[j:j + len(qb)], best_i[j:j + len(qb)] = bd, bi
    return best_d, best_i


def knn(queries: np.ndarray | Words, base: np.ndarray | Words, k: int, threads: int = 1
        ) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` nearest base rows by exact Hamming distance: (distances, indices),
    nearest first, ties by lower index. ``threads`` split the base rows (NumPy releases the
    GIL inside its loops)."""
    qw, bw = _as_words(queries), _as_words(base)
    if qw.words.shape[0] != bw.words.shape[0]:
        raise ValueError(f"codes of {qw.nbytes} and {bw.nbytes} bytes cannot be compared")
    if not 1 <= k <= bw.n:
        raise ValueError(f"k = {k}: expected 1..{bw.n}")
    q = np.ascontiguousarray(qw.words.T)
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
