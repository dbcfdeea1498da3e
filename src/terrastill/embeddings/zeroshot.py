"""Zero-shot labels and text retrieval with an aligned VLM, and the metrics that score them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from terrastill.embeddings.captions import CaptionSpec, readable
from terrastill.embeddings.vlm import class_prototypes


def zero_shot(image_vectors: np.ndarray, classes: Sequence[str], spec: CaptionSpec,
              text_encoder: Any) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class index (N,), cosine scores (N, K)) for projected unit vectors."""
    protos = class_prototypes(text_encoder, spec.class_captions(classes))
    scores = np.asarray(image_vectors, np.float32) @ protos.T
    return scores.argmax(1), scores


def rank_by_text(image_vectors: np.ndarray, query: str, spec: CaptionSpec,
                 text_encoder: Any) -> tuple[np.ndarray, np.ndarray]:
    """(order best first, cosine scores) of projected image vectors for a free-text query."""
    q = text_encoder.encode([spec.query(query)])[0]
    scores = np.asarray(image_vectors, np.float32) @ q
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order, scores


def label_indices(labels: Sequence[str | None], classes: Sequence[str]) -> np.ndarray:
    """Each label's index in ``classes`` (matched by readable name), −1 when not there."""
    key = {readable(c): i for i, c in enumerate(classes)}
    return np.array([key.get(readable(v), -1) if v is not None else -1 for v in labels])


def average_precision_at(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """AP@k of one ranking: Σ_{i≤k} P@i·rel_i / min(k, #relevant) (ties: lower index first)."""
    n_rel = int(relevant.sum())
    if n_rel == 0:
        return float("nan")
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    rel = relevant[order].astype(np.float64)
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / min(k, n_rel))


def text_to_image_map(image_vectors: np.ndarray, y: np.ndarray, protos: np.ndarray,
                      k: int) -> float:
    """Mean over classes (queries: class prototypes) of AP@k over the images."""
    scores = np.asarray(image_vectors) @ protos.T
    aps = [average_precision_at(scores[:, c], y == c, k) for c in range(protos.shape[0])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def image_to_text_top1(image_vectors: np.ndarray, y: np.ndarray, caption_vectors: np.ndarray,
                       caption_class: np.ndarray) -> np.ndarray:
    """Per image: whether its single nearest caption (of every class's) is of its class."""
    best = (np.asarray(image_vectors) @ caption_vectors.T).argmax(1)
    return caption_class[best] == y
