"""Evaluators and statistics for compressed embeddings: kNN, linear probe, McNemar, bootstrap."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CHUNK_BYTES = 1 << 26


def _cosine_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norm > 0, norm, 1.0)


def _ranked(query: np.ndarray, base: np.ndarray, k: int,
            dist: Callable[[np.ndarray, np.ndarray], np.ndarray], row_bytes: int) -> np.ndarray:
    """Indices of each query row's ``k`` nearest base rows, nearest first (ties: lower index)."""
    k = min(k, len(base))
    step = max(1, CHUNK_BYTES // max(1, len(base) * row_bytes))
    out = np.empty((len(query), k), np.int64)
    for s in range(0, len(query), step):
        d = dist(query[s:s + step], base)
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else \
            np.tile(np.arange(d.shape[1]), (len(d), 1))
        pd = np.take_along_axis(d, part, axis=1)
        order = np.lexsort((part, pd), axis=1)
        out[s:s + step] = np.take_along_axis(part, order, axis=1)
    return out


def cosine_neighbours(query: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` base rows by cosine similarity for each query row."""
    qn, bn = _cosine_rows(query), _cosine_rows(base)
    return _ranked(qn, bn, k, lambda a, b: -(a @ b.T), 8)


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Hamming distances between packed uint8 codes (vectorised popcount)."""
    x = np.bitwise_xor(a[:, None, :], b[None, :, :])
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).sum(axis=2, dtype=np.int64)
    return np.unpackbits(x, axis=2).sum(axis=2, dtype=np.int64)


def hamming_neighbours(query: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` base rows by Hamming distance on packed codes for each query row."""
    return _ranked(query, base, k, hamming_distances, base.shape[1])


def vote(neighbours: np.ndarray, train_y: np.ndarray, n_classes: int) -> np.ndarray:
    """Majority vote of neighbour labels (integer classes); ties go to the nearer neighbour."""
    n, k = neighbours.shape
    score = np.zeros((n, n_classes))
    rows = np.arange(n)
    for r in range(k):
        # 2**-r: among classes with equal counts, the one holding the nearest neighbour wins
        np.add.at(score, (rows, train_y[neighbours[:, r]]), 1.0 + 1e-3 * 2.0 ** -r)
    return score.argmax(axis=1)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 seed: int = 0, cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
                 ) -> tuple[np.ndarray, float]:
    """Standardise + logistic regression, C chosen by stratified inner CV on train
    (``LogisticRegressionCV``, warm-started along the C path). Returns test predictions and
    the chosen C."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    tx, qx = scaler.transform(train_x), scaler.transform(test_x)
    folds = int(min(5, np.bincount(train_y).min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds < 2:  # a class with a single train row: no inner CV possible
            model = LogisticRegression(C=1.0, max_iter=1000, solver="newton-cg").fit(tx, train_y)
            return model.predict(qx), 1.0
        model = LogisticRegressionCV(Cs=list(cs), cv=StratifiedKFold(folds, shuffle=True,
                                                                     random_state=seed),
                                     scoring="accuracy", max_iter=1000, n_jobs=1, l1_ratios=(0.0,),
                                     solver="newton-cg",
                                     use_legacy_attributes=False).fit(tx, train_y)
    return model.predict(qx), float(np.ravel(model.C_)[0])


def mcnemar_p(ref_correct: np.ndarray, correct: np.ndarray) -> float:
    """Exact McNemar test: two-sided binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    b = int(np.sum(ref_correct & ~correct))
    c = int(np.sum(~ref_correct & correct))
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def bootstrap_indices(n: int, rounds: int, seed: int) -> np.ndarray:
    """Seeded (rounds, n) resamples of test rows, shared by every method (paired)."""
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def bootstrap_diff(ref_correct: np.ndarray, correct: np.ndarray,
                   idx: np.ndarray) -> tuple[float, float]:
    """95 % percentile interval of accuracy(method) − accuracy(ref) over resamples ``idx``."""
    if len(idx) == 0:
        return float("nan"), float("nan")
    diff = correct.astype(np.float64)[idx].mean(axis=1) - \
        ref_correct.astype(np.float64)[idx].mean(axis=1)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float(lo), float(hi)


def recall_at(ref_nbrs: np.ndarray, nbrs: np.ndarray) -> float:
    """Mean share of each row's reference neighbours found among its method neighbours."""
    k = ref_nbrs.shape[1]
    hits = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(ref_nbrs, nbrs,
                                                                          strict=True)]
    return float(np.mean(hits) / k) if hits else float("nan")


def per_class_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    from sklearn.metrics import f1_score

    return np.asarray(f1_score(y, pred, labels=np.arange(n_classes), average=None,
                               zero_division=0), np.float64)
