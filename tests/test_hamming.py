"""Hamming scan: the compiled (numba) and NumPy backends against brute force and each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from terrastill.embeddings import hamming

numba_only = pytest.mark.skipif(hamming._numba() is None, reason="numba not importable")
BACKENDS = [pytest.param("numba", marks=numba_only), "numpy"]


def _brute(q: np.ndarray, base: np.ndarray) -> np.ndarray:
    return np.unpackbits(q[:, None, :] ^ base[None, :, :], axis=2).sum(2)


def _order(ref: np.ndarray, k: int) -> np.ndarray:
    """Each row's k smallest by (distance, index)."""
    idx = np.broadcast_to(np.arange(ref.shape[1]), ref.shape)
    return np.lexsort((idx, ref), axis=1)[:, :k]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "nbytes", "nq", "k"), [
    (40_000, 13, 37, 10),   # 13 B: padded to 2 words; many queries: split by queries
    (9_000, 13, 3, 10),     # few queries: split by base rows, merged
    (5_000, 1, 21, 50),     # 1-byte codes: massive ties, broken by lower index
    (300, 128, 9, 300),     # k = n
    (7, 16, 2, 3),          # fewer rows than a block / than threads × k
])
@pytest.mark.parametrize("threads", [1, 2])
def test_exact_distances_and_knn(backend: str, n: int, nbytes: int, nq: int, k: int,
                                 threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hamming, "SERIAL_WORK", 0)  # small inputs use the threads too
    rng = np.random.default_rng(n + nbytes)
    base = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    q = rng.integers(0, 256, (nq, nbytes), dtype=np.uint8)
    ref = _brute(q, base)
    d = hamming.distances(q, base, threads=threads, backend=backend)
    assert d.dtype == np.uint16 and (d == ref).all()
    kd, ki = hamming.knn(q, hamming.Words.of(base), k, threads=threads, backend=backend)
    order = _order(ref, k)
    assert kd.dtype == np.int32 and ki.dtype == np.int64
    assert (ki == order).all()
    assert (kd == np.take_along_axis(ref, order, 1)).all()


@numba_only
def test_small_work_runs_serially() -> None:
    assert hamming._threads(2, hamming.SERIAL_WORK - 1) == 1
    assert hamming._threads(2, hamming.SERIAL_WORK) == 2


@numba_only
def test_backends_agree_on_1024_bit_codes() -> None:
    rng = np.random.default_rng(3)
    base = hamming.Words.of(rng.integers(0, 256, (30_000, 128), dtype=np.uint8))
    q = rng.integers(0, 256, (64, 128), dtype=np.uint8)
    a = hamming.knn(q, base, 10, threads=2, backend="numba")
    b = hamming.knn(q, base, 10, threads=2, backend="numpy")
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert (hamming.distances(q[:5], base, backend="numba")
            == hamming.distances(q[:5], base, backend="numpy")).all()


def test_fallback_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hamming, "_numba", lambda: None)
    assert hamming.choose_backend() == "numpy"
    with pytest.raises(ValueError, match="numba cannot be imported"):
        hamming.choose_backend("numba")
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, (2_000, 8), dtype=np.uint8)
    kd, ki = hamming.knn(base[:5], base, 4)
    assert (ki[:, 0] == np.arange(5)).all() and (kd[:, 0] == 0).all()


def test_backend_choice_and_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERRASTILL_HAMMING", "numpy")
    assert hamming.choose_backend() == "numpy"
    monkeypatch.delenv("TERRASTILL_HAMMING")
    assert hamming.choose_backend() == ("numba" if hamming._numba() else "numpy")
    with pytest.raises(ValueError, match="expected one of"):
        hamming.choose_backend("faiss")
    a = np.zeros((3, 8), np.uint8)
    with pytest.raises(ValueError, match="cannot be compared"):
        hamming.knn(a, np.zeros((3, 16), np.uint8), 1)
    with pytest.raises(ValueError, match=r"expected 1\.\.3"):
        hamming.knn(a, a, 4)
    with pytest.raises(ValueError, match=r"\(N, B\) uint8"):
        hamming.Words.of(np.zeros(8, np.uint8))


@numba_only
def test_jit_falls_back_when_no_cache_location(monkeypatch: pytest.MonkeyPatch) -> None:
    from terrastill.embeddings import hamming_numba

    calls: list[bool] = []

    def fake_njit(cache: bool = False, **options: object) -> object:
        calls.append(cache)
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available")
        return lambda fn: fn

    monkeypatch.setattr(hamming_numba, "njit", fake_njit)
    f = hamming_numba._jit()(lambda x: x + 1)
    assert f(1) == 2 and calls == [True, False]


@numba_only
@pytest.mark.slow
def test_kernels_cache_to_numba_cache_dir(tmp_path: Path) -> None:
    """With NUMBA_CACHE_DIR (e.g. a read-only install) the compiled kernels land there and a
    second process loads them instead of compiling."""
    code = ("import numpy as np; from terrastill.embeddings import hamming; "
            "b = np.arange(4096, dtype=np.uint8).reshape(-1, 16); "
            "print(hamming.knn(b[:8], b, 3, threads=2)[1][:, 0].tolist())")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        assert out.strip() == str(list(range(8)))
    assert list(tmp_path.rglob("hamming_numba.knn_parts-*.nbi"))
