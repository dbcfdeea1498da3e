"""Rank a search index's rows by a text query through an aligned (VLM) student."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.errors import BadInputError, SpecMismatchError


def vlm_fits_index(vlm: Any, index: Any) -> bool:
    """Whether ``index`` holds embeddings of ``vlm``'s student (same model and width)."""
    from terrastill.embeddings.index import same_model

    want = {"name": vlm.student_model.get("name"), "sha256": vlm.student_model.get("sha256")}
    return same_model(index.model, want) and index.dim == vlm.encoder.dim


def check_vlm_index(vlm: Any, index: Any, where: str | os.PathLike[str]) -> None:
    """A one-line error unless ``index`` can be ranked by ``vlm`` (its student's embeddings,
    int8 re-rank vectors kept)."""
    from terrastill.embeddings.index import same_model

    want = {"name": vlm.student_model.get("name"), "sha256": vlm.student_model.get("sha256")}
    if not same_model(index.model, want):
        raise SpecMismatchError(f"{where}: indexed embeddings of model "
                                f"{index.model.get('name')!r}, but the VLM's student is "
                                f"{want['name']!r}; index embeddings made with the student "
                                "(`terrastill embed STUDENT`)")
    if index.dim != vlm.encoder.dim:
        raise SpecMismatchError(f"{where}: {index.dim}-d embeddings, the VLM's student gives "
                                f"{vlm.encoder.dim}")
    if index.rerank_codec is None:
        raise BadInputError(f"{where}: the index keeps no re-rank vectors; rebuild it with "
                            "--rerank int8")


def text_search(index: Any, vlm: Any, text: str, area: Any = None, k: int = 100,
                cache_dir: str | Path | None = None, encoder: Any = None) -> Any:
    """The ``k`` rows in ``area`` closest to ``text`` as a :class:`SearchResult` (distance =
    1 − cosine in the aligned space), every candidate's distance kept for heatmaps.
    ``encoder``: the VLM's text encoder, already open (a server keeps one)."""
    from terrastill.embeddings.captions import CaptionSpec
    from terrastill.embeddings.search import SearchResult
    from terrastill.embeddings.text import open_text_encoder
    from terrastill.embeddings.zeroshot import rank_by_text

    if not text.strip():
        raise BadInputError("the text query is empty")
    if k <= 0:
        raise BadInputError(f"k {k}: expected a positive number of results")
    check_vlm_index(vlm, index, index.path)
    pool = index.rows(area)
    if not len(pool):
        raise BadInputError(f"{index.path}: no row meets the search area")
    vectors = index.decode_rerank(pool.rerank)
    if encoder is None:
        encoder = open_text_encoder(vlm.text["encoder"], cache_dir)
    order, scores = rank_by_text(vlm.project(vectors), text,
                                 CaptionSpec.from_dict(vlm.captions["spec"]), encoder)
    distance = 1.0 - np.asarray(scores, np.float64)
    best = order[:k]
    n_shards = len(index.shards_meeting(None if area is None else area.bounds))
    return SearchResult(rows=pool.take(best), distance=distance[best],
                        code_distance=distance[best], candidates=len(pool),
                        shards_searched=n_shards, skipped=list(pool.skipped), positives=[],
                        negatives=[], all_distance=distance, pool=pool, reranked=True)
