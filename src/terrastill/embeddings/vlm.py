"""The aligned vision-language model file and its image side (student + projection head).

Layout (one ``torch.save`` of plain values and tensors, loadable with ``weights_only``)::

    {"format": "terrastill-vlm", "version": 1,
     "student": {"card": ModelCard dict, "state_dict": ...,       # the RGB encoder, as is
                 "model": {"name", "sha256", "file"}},            # (what embedding products
                                                                  #  and indexes name)
     "head": {"config": {...}, "state_dict": ...},                # pooled embedding → text space
     "logit_scale": float, "text": {"encoder", "version", "pooling", "dim"},
     "captions": {"spec": CaptionSpec dict, "classes": [...], "class_captions": {...}},
     "training": {...}}

Image vectors are the student's mean-pooled patch tokens (``embed``'s ``mean`` pooling),
standardised with the alignment rows' mean/std (stored in the head), projected and
L2-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from terrastill.atomic import atomic_path
from terrastill.errors import BadInputError, NotFoundError, SpecMismatchError

VLM_FORMAT = "terrastill-vlm"
VLM_VERSION = 1
HEADS = ("linear", "mlp")
Progress = Callable[[int, int], None]


class ProjectionHead(nn.Module):
    """Standardise (fixed buffers) then linear, or LayerNorm-free 2-layer MLP, to text dim."""

    def __init__(self, d_in: int, d_out: int, kind: str = "linear", hidden: int = 256) -> None:
        super().__init__()
        if kind not in HEADS:
            raise BadInputError(f"--head {kind!r}: expected one of {', '.join(HEADS)}")
        self.config = {"d_in": int(d_in), "d_out": int(d_out), "kind": kind,
                       "hidden": int(hidden)}
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("std", torch.ones(d_in))
        self.net: nn.Module = nn.Linear(d_in, d_out) if kind == "linear" else nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net((x - self.mean) / self.std)
        return torch.nn.functional.normalize(z, dim=-1)


def student_encoder(card_dict: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                    meta: dict[str, Any] | None = None) -> Any:
    """A :class:`~terrastill.embeddings.encoders.ViTEncoder` from a model card and weights."""
    from terrastill.embeddings.encoders import ViTEncoder
    from terrastill.models.modelfile import ModelCard
    from terrastill.models.registry import build_model, uses_coords

    card = ModelCard.from_dict(card_dict)
    model = build_model(card.arch)
    model.load_state_dict(dict(state), strict=True)
    model.eval()
    spec = card.input_spec
    if not {"bands", "num_steps", "mean", "std"} <= set(spec):
        raise BadInputError(f"model {card.name!r}: its input spec lacks bands/normalisation")
    return ViTEncoder(card.name, model.encoder, spec["bands"], spec["num_steps"], spec["mean"],
                      spec["std"], meta or {"name": card.name, "kind": "model"}, False,
                      uses_coords(card.arch))


def read_student(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(card dict, state dict, encoder) of a model file (or a folder holding model.pt)."""
    from terrastill.embeddings.encoders import file_sha256
    from terrastill.models.modelfile import load_model_file

    p = Path(path)
    if p.is_dir() and (p / "model.pt").is_file():
        p = p / "model.pt"
    loaded = load_model_file(p)
    card = loaded.card.to_dict()
    state = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    meta = {"name": loaded.card.name, "kind": "model", "file": p.name,
            "sha256": file_sha256(p), "task": loaded.card.task}
    return card, state, student_encoder(card, state, meta)


@dataclass
class LabelledVectors:
    """Pooled student vectors of a folder of images or chips, with labels and splits."""

    ids: list[str]
    vectors: np.ndarray
    labels: list[str | None]
    splits: list[str | None]


def image_read_defaults(spec: Mapping[str, Any], image_bands: str | None,
                        scale: float | None) -> tuple[str | None, float]:
    """``--image-bands`` / ``--scale``, defaulting to how the student's images were read."""
    return (image_bands if image_bands is not None else spec.get("image_bands"),
            float(scale) if scale is not None else float(spec.get("scale") or 1.0))


def embed_images(encoder: Any, images: str, image_bands: str | None = None, scale: float = 1.0,
                 batch_size: int = 32, split_seed: int = 0,
                 progress: Progress | None = None) -> LabelledVectors:
    """Mean-pooled vectors of every image of a folder/glob (labels from class folders)."""
    from terrastill.embeddings.images import (
        file_band_names,
        list_images,
        parse_band_names,
        read_image,
        stratified_split,
    )

    records = list_images(images)
    given = parse_band_names(image_bands)
    names = file_band_names(records[0].path, given)
    missing = [b for b in encoder.bands if b not in names]
    if missing:
        raise SpecMismatchError(f"{records[0].path}: the model {encoder.name!r} reads "
                                f"{', '.join(encoder.bands)} but the image has "
                                f"{', '.join(names)} (name its bands with --image-bands)")
    vectors: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for i, rec in enumerate(records):
        arr = read_image(rec, encoder.bands, given, scale).array
        encoder.check(encoder.bands, 1, *arr.shape[-2:], str(rec.path))
        if batch and batch[0].shape != arr.shape:
            vectors.append(encoder.vectors(np.stack(batch)[:, None]))
            batch = []
        batch.append(arr)
        if len(batch) == batch_size or i == len(records) - 1:
            vectors.append(encoder.vectors(np.stack(batch)[:, None]))
            batch = []
        if progress:
            progress(i + 1, len(records))
    labels = [r.label for r in records]
    splits: list[str | None] = stratified_split(labels, seed=split_seed) \
        if all(lab is not None for lab in labels) else [None] * len(records)
    return LabelledVectors([r.id for r in records], np.concatenate(vectors), labels, splits)


def embed_chips(encoder: Any, chips_dir: str | Path, batch_size: int = 32) -> LabelledVectors:
    """Mean-pooled vectors of every chip of a chip folder (label: index column or majority)."""
    from terrastill.data.dataset import read_dataset_meta, read_index
    from terrastill.embeddings.embed import _chip_label
    from terrastill.embeddings.spectral_distill import chip_windows

    meta = read_dataset_meta(chips_dir)
    windows = chip_windows(chips_dir)
    _n, t, _c, h, w = windows.array.shape
    idx = encoder.check(list(meta["bands"]), t, h, w, str(chips_dir))
    arr = windows.array[:, :, idx]
    vecs = np.concatenate([encoder.vectors(arr[s:s + batch_size])
                           for s in range(0, len(arr), batch_size)])
    index = read_index(chips_dir).reset_index(drop=True)
    names = list(meta.get("class_names") or [])
    labels = [_chip_label(r, names) for _, r in index.iterrows()]
    return LabelledVectors(windows.ids, vecs, labels, [str(s) for s in index["split"]])


class VLM:
    """A loaded VLM file: the student encoder, the head, the text side's description."""

    def __init__(self, payload: Mapping[str, Any], path: Path | None = None) -> None:
        self.path = path
        self.payload = payload
        student = payload["student"]
        self.card: dict[str, Any] = student["card"]
        self.encoder = student_encoder(self.card, student["state_dict"],
                                       {"name": self.card["name"], "kind": "vlm-student"})
        cfg = payload["head"]["config"]
        self.head = ProjectionHead(cfg["d_in"], cfg["d_out"], cfg["kind"], cfg["hidden"])
        self.head.load_state_dict(payload["head"]["state_dict"], strict=True)
        self.head.eval()
        self.student_model: dict[str, Any] = dict(student.get("model") or
                                                  {"name": self.card["name"]})
        self.text: dict[str, Any] = dict(payload["text"])
        self.captions: dict[str, Any] = dict(payload["captions"])
        self.logit_scale = float(payload["logit_scale"])

    @property
    def input_spec(self) -> dict[str, Any]:
        return dict(self.card["input_spec"])

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Student pooled vectors (N, D) → unit vectors in the text space (N, d_text)."""
        with torch.no_grad():
            z = self.head(torch.as_tensor(np.asarray(vectors, np.float32)))
        return z.numpy().astype(np.float32)


def save_vlm(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": VLM_FORMAT, "version": VLM_VERSION, **payload}, tmp)
    return path


def load_vlm(path: str | os.PathLike[str]) -> VLM:
    """Read a VLM file (or a folder holding ``vlm.pt``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "vlm.pt"
    if not p.is_file():
        raise NotFoundError(f"{p}: no such VLM file (make one with `terrastill align`)")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise BadInputError(f"{p}: not a terrastill VLM file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != VLM_FORMAT:
        raise BadInputError(f"{p}: not a terrastill VLM file (a model file? align it first "
                            "with `terrastill align`)")
    if int(payload.get("version", 0)) > VLM_VERSION:
        raise BadInputError(f"{p}: VLM file version {payload['version']} is newer than this "
                            f"terrastill understands ({VLM_VERSION})")
    return VLM(payload, p)


def class_prototypes(text_encoder: Any, captions: Mapping[str, Sequence[str]]) -> np.ndarray:
    """(K, d) unit vectors: the mean of each class's caption embeddings, renormalised."""
    flat = [c for caps in captions.values() for c in caps]
    emb = text_encoder.encode(flat)
    out, s = [], 0
    for caps in captions.values():
        v = emb[s:s + len(caps)].mean(0)
        out.append(v / max(float(np.linalg.norm(v)), 1e-12))
        s += len(caps)
    return np.stack(out).astype(np.float32)
