"""Ambiguous pixels: visible labelled pixels whose own spectrum does not tell their class.

A pixel is *ambiguous* when a per-pixel spectral classifier (multinomial logistic regression on
the pixel's band values at the target step, standardised) gives its labelled class a
probability below a threshold. The classifier is fitted on the visible labelled pixels of the
chips and cross-fitted by chip (group k-fold): every pixel is scored by a classifier that never
saw its chip, so neither the pixel nor its near-identical neighbours vote for themselves.
Whatever a segmentation model gets right on such pixels it gets from context, like a pixel under
cloud.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

MAX_FOLDS = 5


@dataclass
class Ambiguity:
    """Per-pixel probability of the labelled class (NaN where not scored) and the summary."""

    prob: np.ndarray  # (N,) probability of each pixel's own class, cross-fitted
    ambiguous: np.ndarray  # (N,) bool: prob < threshold
    folds: int
    grouping: str  # "chip" or "pixel" (a single chip: folds over pixels)
    accuracy: float  # cross-fitted accuracy of the per-pixel classifier


def cross_fitted_probability(features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                             num_classes: int, threshold: float = 0.5,
                             seed: int = 0) -> Ambiguity:
    """Score each row of ``features`` (N, bands) with a logistic regression that was fitted
    without the row's group (its chip); ``labels`` (N,) are class ids in ``[0, num_classes)``.
    With one group the folds are over rows instead (seeded)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(labels)
    prob = np.full(n, np.nan)
    pred = np.full(n, -1)
    uniq = np.unique(groups)
    if len(uniq) >= 2:
        k = min(MAX_FOLDS, len(uniq))
        splits = GroupKFold(n_splits=k).split(features, labels, groups)
        grouping = "chip"
    else:
        k = min(MAX_FOLDS, n)
        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(features) if k >= 2 \
            else iter(())
        grouping = "pixel"
    for train, test in splits:
        present = np.unique(labels[train])
        if len(present) < 2:  # one class in training: its probability is 1, the others 0
            prob[test] = (labels[test] == present[0]).astype(float) if len(present) else 0.0
            pred[test] = present[0] if len(present) else -1
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings on separable toy data
            clf.fit(features[train], labels[train])
        p = clf.predict_proba(features[test])  # columns: clf.classes_
        full = np.zeros((len(test), num_classes))
        full[:, clf.classes_.astype(int)] = p
        prob[test] = full[np.arange(len(test)), labels[test]]
        pred[test] = full.argmax(axis=1)
    scored = np.isfinite(prob)
    acc = float((pred[scored] == labels[scored]).mean()) if scored.any() else float("nan")
    return Ambiguity(prob, scored & (prob < threshold), k if n else 0, grouping, acc)
