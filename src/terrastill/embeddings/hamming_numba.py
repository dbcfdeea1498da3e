"""Compiled (numba) Hamming kernels: fused XOR + popcount + top-k over row-major uint64 codes.

Imported lazily by :mod:`terrastill.embeddings.hamming` (which falls back to NumPy when numba
is missing). ``ctpop`` emits LLVM's ``llvm.ctpop.i64``, which LLVM lowers to the best popcount
of the host CPU (``popcnt``, an AVX2 nibble-table ``vpshufb`` sequence, or AVX-512
``vpopcntq``). Kernels are compiled on first use (a few seconds each) and cached on disk
(``cache=True``: ``__pycache__`` next to this file, else numba's user cache directory, or
``NUMBA_CACHE_DIR``); without any writable location they are compiled once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

log = logging.getLogger(__name__)
SENTINEL = np.int32(1 << 30)  # larger than any distance (≤ 64 · words)
TILE = 4  # queries scored per pass over a base row


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``njit(cache=True, …)``, or without the disk cache when numba finds no writable place
    for it (it raises at decoration time then)."""

    def wrap(fn: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as e:  # "cannot cache function …: no locator available"
            log.debug("numba cache unavailable for %s: %s", fn.__name__, e)
            return njit(cache=False, **options)(fn)

    return wrap


@intrinsic
def ctpop(typingctx: Any, x: Any) -> Any:
    """Bits set in a uint64 (LLVM ``ctpop``)."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


@_jit(inline="always")
def _insert(bd: np.ndarray, bi: np.ndarray, d: int, i: int) -> None:
    """Insert (d, i) into the sorted k-best arrays, dropping the last; equal distances keep
    their order (rows are scanned by increasing index, so ties stay by lower index)."""
    p = bd.shape[0] - 1
    while p > 0 and bd[p - 1] > d:
        bd[p] = bd[p - 1]
        bi[p] = bi[p - 1]
        p -= 1
    bd[p] = d
    bi[p] = i


@_jit()
def _score(q: np.ndarray, qt: int, nt: int, base: np.ndarray, s: int, e: int,
           acc: np.ndarray) -> None:
    """acc[t, j - s] = Hamming distance of query qt + t (t < nt) to base row j (s ≤ j < e)."""
    words = q.shape[1]
    if nt == TILE:
        for j in range(s, e):
            d0 = 0
            d1 = 0
            d2 = 0
            d3 = 0
            for w in range(words):
                x = base[j, w]
                d0 += ctpop(q[qt, w] ^ x)
                d1 += ctpop(q[qt + 1, w] ^ x)
                d2 += ctpop(q[qt + 2, w] ^ x)
                d3 += ctpop(q[qt + 3, w] ^ x)
            acc[0, j - s] = d0
            acc[1, j - s] = d1
            acc[2, j - s] = d2
            acc[3, j - s] = d3
    else:
        for t in range(nt):
            for j in range(s, e):
                d = 0
                for w in range(words):
                    d += ctpop(q[qt + t, w] ^ base[j, w])
                acc[t, j - s] = d


@_jit(parallel=True)
def knn_parts(q: np.ndarray, base: np.ndarray, k: int, qchunks: int, bparts: int,
              block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per task (a query chunk × a base part) the k best (distance, row) pairs of its queries
    among its rows: ``(bparts, nq, k)`` int32 distances and int64 rows, sorted, ties by lower
    row; unfilled slots hold ``SENTINEL`` / −1. Base rows are visited in L2-sized blocks, each
    block scored against all of a task's queries; a block is scanned for candidates only when
    its minimum beats the query's current k-th distance."""
    nq = q.shape[0]
    n = base.shape[0]
    out_d = np.full((bparts, nq, k), SENTINEL, np.int32)
    out_i = np.full((bparts, nq, k), -1, np.int64)
    qper = (nq + qchunks - 1) // qchunks
    bper = (n + bparts - 1) // bparts
    for task in prange(qchunks * bparts):
        c = task // bparts
        p = task % bparts
        q0 = c * qper
        q1 = min(nq, q0 + qper)
        b0 = p * bper
        b1 = min(n, b0 + bper)
        acc = np.empty((TILE, block), np.int32)
        for s in range(b0, b1, block):
            e = min(b1, s + block)
            for qt in range(q0, q1, TILE):
                nt = min(TILE, q1 - qt)
                _score(q, qt, nt, base, s, e, acc)
                for t in range(nt):
                    bd = out_d[p, qt + t]
                    bi = out_i[p, qt + t]
                    m = SENTINEL
                    for j in range(e - s):
                        m = min(m, acc[t, j])
                    if m < bd[k - 1]:
                        for j in range(e - s):
                            if acc[t, j] < bd[k - 1]:
                                _insert(bd, bi, acc[t, j], s + j)
    return out_d, out_i


@_jit(parallel=True)
def distances_into(q: np.ndarray, base: np.ndarray, out: np.ndarray, block: int) -> None:
    """out[i, j] = Hamming distance of query i to base row j (uint16), threads over base
    blocks."""
    nq = q.shape[0]
    n = base.shape[0]
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        s = b * block
        e = min(n, s + block)
        acc = np.empty((TILE, block), np.int32)
        for qt in range(0, nq, TILE):
            nt = min(TILE, nq - qt)
            _score(q, qt, nt, base, s, e, acc)
            for t in range(nt):
                for j in range(e - s):
                    out[qt + t, s + j] = acc[t, j]
