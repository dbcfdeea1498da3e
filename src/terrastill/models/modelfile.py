"""The self-describing model file: one ``torch.save`` of a plain dict.

Layout::

    {"format": "terrastill-model", "version": 1, "card": ModelCard.to_dict(),
     "state_dict": {name: tensor}}

Only plain Python values and tensors are stored, so it loads with ``weights_only=True`` and
needs nothing else: the card's ``arch`` rebuilds the module, its ``input_spec`` says how to make
the input tensors (bands, T, chip size, normalisation).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from terrastill import __version__
from terrastill.atomic import atomic_path
from terrastill.errors import BadInputError, NotFoundError, SpecMismatchError

FORMAT = "terrastill-model"
VERSION = 1

_COLOR_RULES: list[tuple[tuple[str, ...], str]] = [
    (("nodata", "no data", "ignore", "unknown"), "#000000"),
    (("flood", "water", "river", "lake", "ocean", "sea", "wet"), "#1f78b4"),
    (("cloud", "snow", "ice"), "#f0f0f0"),
    (("shadow",), "#555555"),
    (("mangrove", "forest", "tree", "wood"), "#1b5e20"),
    (("shrub", "scrub"), "#7a9a3a"),
    (("grass", "pasture", "meadow", "range"), "#8fd16a"),
    (("crop", "agri", "field", "farm", "cultivat"), "#c8d84a"),
    (("urban", "built", "city", "settlement", "road", "impervious"), "#d62728"),
    (("bare", "sand", "soil", "desert", "rock"), "#d2b48c"),
    (("burn", "fire", "scar"), "#7f2704"),
    (("locust", "swarm", "pest", "damage", "presence", "positive"), "#e6550d"),
    (("absence", "negative", "background", "other", "non", "not", "land", "dry"), "#e8e3c8"),
]
_FALLBACK = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#ff7f0e",
             "#2ca02c", "#aec7e8", "#ffbb78"]


def default_class_colors(class_names: Sequence[str]) -> list[str]:
    """A hex colour per class from its name (water blue, forest dark green, cropland
    yellow-green, urban red, bare tan, land/background light...), distinct fallbacks otherwise."""
    colors: list[str] = []
    fallback = iter(_FALLBACK * 4)
    for name in class_names:
        low = str(name).lower()
        color = next((c for keys, c in _COLOR_RULES if any(k in low for k in keys)), None)
        if color is None or color in colors:
            color = next(c for c in fallback if c not in colors)
        colors.append(color)
    return colors


@dataclass
class ModelCard:
    """Everything a model file says about itself (besides its weights)."""

    name: str
    task: str
    arch: dict[str, Any]
    input_spec: dict[str, Any]
    class_names: list[str] = field(default_factory=list)
    class_colors: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: int = 0
    encoder_params: int = 0
    macs: int = 0
    encoder_macs: int = 0
    teacher: dict[str, Any] | None = None
    depth: int = 0
    precision: dict[str, Any] = field(default_factory=dict)
    created_with: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.class_names and not self.class_colors:
            self.class_colors = default_class_colors(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class LoadedModel:
    model: nn.Module
    card: ModelCard
    path: Path | None = None


def _num_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def fill_card_stats(card: ModelCard, model: nn.Module) -> ModelCard:
    """Set params, encoder_params, MACs (per chip, ``torch.utils.flop_counter``) and depth."""
    from terrastill.data.indices import input_channels
    from terrastill.models.encoder import count_macs

    enc = model.encoder
    cfg = enc.config
    # the caller's channels: a model with derived indices computes those itself
    x = torch.zeros(1, input_channels(model.arch), int(cfg["num_frames"]),
                    int(cfg["img_size"]), int(cfg["img_size"]),
                    device=next(model.parameters()).device)
    card.params = _num_params(model)
    card.encoder_params = _num_params(enc)
    card.macs = count_macs(model, x)
    card.encoder_macs = count_macs(enc, x)
    card.depth = enc.depth
    card.arch = model.arch
    if not card.created_with:
        card.created_with = {"terrastill": __version__}
    return card


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (Path, torch.dtype, torch.device)):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def save_model_file(path: str | os.PathLike[str], model: nn.Module, card: ModelCard) -> Path:
    """Write ``model`` + ``card`` to ``path`` atomically; returns the path."""
    path = Path(path)
    if getattr(model, "arch", None) is not None:
        card.arch = model.arch
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    # a JSON round trip keeps the card to plain types, so weights_only loading always works
    card_dict = json.loads(json.dumps(card.to_dict(), default=_json_default))
    payload = {"format": FORMAT, "version": VERSION, "card": card_dict, "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _read(path: str | os.PathLike[str], map_location: Any = "cpu",
          mmap: bool = False) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: no such model file")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise BadInputError(f"{p}: not a terrastill model file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadInputError(f"{p}: not a terrastill model file")
    if int(payload.get("version", 0)) > VERSION:
        raise BadInputError(f"{p}: model file version {payload['version']} is newer than this "
                            f"terrastill understands ({VERSION})")
    return payload


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card alone: the weights are memory-mapped, not read, and no module is built."""
    return ModelCard.from_dict(_read(path, mmap=True)["card"])


def load_model_file(path: str | os.PathLike[str], map_location: Any = "cpu") -> LoadedModel:
    """Rebuild the module from the card's ``arch`` and load its weights; eval mode."""
    from terrastill.models.registry import build_model

    payload = _read(path, map_location)
    card = ModelCard.from_dict(payload["card"])
    model = build_model(card.arch)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return LoadedModel(model=model, card=card, path=Path(path))


def require_task_model(card: ModelCard, path: str | os.PathLike[str], what: str) -> None:
    """Refuse an encoder-only ``embedding`` model where a task head is needed (``what``:
    predict, evaluate, distill...) with one clear line."""
    if card.task == "embedding":
        raise BadInputError(f"{path}: an encoder-only embedding model (from pretrain) cannot "
                            f"{what}; use `terrastill embed`, or fine-tune it first with "
                            f"`terrastill train --weights {path}`")


SPEC_KEYS_STRICT = ("bands", "num_steps", "chip_size")


def check_input_spec(input_spec: Mapping[str, Any], dataset_meta: Mapping[str, Any],
                     what: str = "dataset") -> None:
    """Raise :class:`SpecMismatchError` when a dataset's bands / T / chip size differ from the
    model's input spec (source and resolution differences are also refused)."""
    problems = []
    for key in ("source", *SPEC_KEYS_STRICT, "resolution"):
        want, got = input_spec.get(key), dataset_meta.get(key)
        if want is None or got is None:
            continue
        if key == "resolution":
            if abs(float(want) - float(got)) > 1e-6:
                problems.append(f"resolution {got} (model: {want})")
        elif key == "bands":
            if list(want) != list(got):
                problems.append(f"bands {list(got)} (model: {list(want)})")
        elif key == "source":
            if str(want).lower() != str(got).lower():
                problems.append(f"source {got!r} (model: {want!r})")
        elif int(want) != int(got):
            problems.append(f"{key} {got} (model: {want})")
    if problems:
        raise SpecMismatchError(f"{what} does not match the model's input spec: "
                                + "; ".join(problems))
