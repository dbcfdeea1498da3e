"""Pretrained encoder weights: Hugging Face hub or a local file, in the official Prithvi layout.

Accepted sources:

- a local ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` (torch) or ``.safetensors`` file;
- a registry name with hub weights (``prithvi-eo-2.0-300m``);
- a hub repo id ``org/name`` (the file name from the registry when known) or ``org/name:file``
  or ``hf://org/name/file``. Downloads go through ``huggingface_hub.hf_hub_download`` (cache
  aware); with ``HF_HUB_OFFLINE=1`` only the local cache is used.

The official checkpoints hold the MAE (``encoder.*`` + ``decoder.*`` in Prithvi-EO-2.0; bare
names plus ``decoder_*``/``mask_token`` in Prithvi-EO-1.0). Decoder keys are dropped, prefixes
stripped, the position embedding is interpolated to the target (T, H, W) token grid, and the
patch-embedding input channels are matched to the target bands by name. Files written by
terrastill (``pretrain``'s ``mae.pt``, any ``model.pt``) carry their own bands and encoder
config, which stand in for a registry spec.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from terrastill.errors import BadInputError, NotFoundError
from terrastill.models.pos_embed import interpolate_pos_embed

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
DECODER_PREFIXES = ("decoder", "mask_token")
_STRIP_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "prithvi.")

# Other names the same physical band goes by, mapped to terrastill's canonical names.
BAND_ALIASES = {
    "b02": "blue", "b2": "blue", "coastal_blue": "blue",
    "b03": "green", "b3": "green",
    "b04": "red", "b4": "red",
    "b8a": "nir_narrow", "nir08": "nir_narrow", "nir_narrow": "nir_narrow", "b05": "nir_narrow",
    "b11": "swir1", "swir16": "swir1", "swir_1": "swir1", "b06": "swir1",
    "b12": "swir2", "swir22": "swir2", "swir_2": "swir2", "b07": "swir2",
}


def canonical_band(name: str) -> str:
    low = str(name).lower()
    return BAND_ALIASES.get(low, low)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did."""

    source: str
    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    interpolated_pos_embed: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    missing_bands: list[str] = field(default_factory=list)
    extra_bands: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "path": self.path, "loaded": len(self.loaded),
                "missing": self.missing, "dropped": len(self.dropped),
                "interpolated_pos_embed": self.interpolated_pos_embed,
                "missing_bands": self.missing_bands, "extra_bands": self.extra_bands}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_download(repo_id: str, filename: str, cache_dir: str | os.PathLike[str] | None = None,
                 revision: str | None = None) -> Path:
    """``hf_hub_download`` honouring ``HF_HUB_OFFLINE`` (read now, not at import)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    offline = _offline()
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                                    cache_dir=cache, local_files_only=offline))
    except LocalEntryNotFoundError as exc:
        how = "offline mode (HF_HUB_OFFLINE) and it is not in the local cache" if offline else \
            "the hub cannot be reached and it is not in the local cache"
        raise NotFoundError(f"{repo_id}/{filename}: {how}") from exc
    except Exception as exc:  # hub errors (404, auth) have many classes across versions
        raise NotFoundError(f"{repo_id}/{filename}: cannot download ({exc})") from exc


def resolve_weights(source: str | os.PathLike[str],
                    cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, dict | None]:
    """Local path of ``source`` and, when it names a registry spec, that spec."""
    from terrastill.models.registry import SPECS, get_spec

    text = str(source)
    p = Path(text).expanduser()
    if p.exists():
        if not p.is_file():
            raise BadInputError(f"{p}: is not a file")
        return p, None
    if text.lower() in SPECS:
        spec = get_spec(text)
        if not spec.get("hub"):
            raise BadInputError(f"model {text!r} has no published weights")
        return hub_download(spec["hub"]["repo_id"], spec["hub"]["filename"], cache_dir), spec
    if text.startswith("hf://"):
        parts = text[5:].split("/")
        if len(parts) < 3:
            raise BadInputError(f"{text}: expected hf://org/name/file")
        return hub_download("/".join(parts[:2]), "/".join(parts[2:]), cache_dir), None
    if text.lower().endswith((*TORCH_SUFFIXES, ".safetensors")) and ":" not in text:
        raise NotFoundError(f"{text}: no such weights file")
    repo, _, filename = text.partition(":")
    if repo.count("/") == 1 and not text.startswith((".", "/", "~")):
        spec = next((get_spec(n) for n, s in SPECS.items()
                     if s.get("hub") and s["hub"]["repo_id"].lower() == repo.lower()), None)
        if not filename:
            if spec is None:
                raise BadInputError(f"{repo}: unknown repository; name the file as {repo}:FILE")
            filename = spec["hub"]["filename"]
        return hub_download(repo, filename, cache_dir), spec
    raise NotFoundError(f"{text}: no such file, registry model or hub repository")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a torch or safetensors file (common wrappers unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # many exception types for a corrupt or foreign file
        raise BadInputError(f"{path}: cannot read checkpoint ({type(exc).__name__})") from exc
    for key in ("state_dict", "model", "model_state_dict", "teacher"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise BadInputError(f"{path}: not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def checkpoint_description(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The bands and encoder config a checkpoint says it was trained with, when it says so:
    a ``terrastill pretrain`` MAE file (``config``) or a terrastill model file (``card``)."""
    path = Path(path)
    if path.suffix not in TORCH_SUFFIXES:
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # read_checkpoint reports an unreadable file
        return None
    if not isinstance(obj, Mapping):
        return None
    cfg = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
    if cfg is None and isinstance(obj.get("card"), Mapping):
        cfg = obj["card"].get("arch")
    if not cfg or not isinstance(cfg.get("encoder"), Mapping):
        return None
    return {"bands": list(cfg["bands"]) if cfg.get("bands") else None,
            "encoder": dict(cfg["encoder"])}


def to_encoder_state(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official layout -> encoder-relative names; returns (state, dropped keys)."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in sd.items():
        k = key
        changed = True
        while changed:
            changed = False
            for pre in _STRIP_PREFIXES:
                if k.startswith(pre):
                    k = k[len(pre):]
                    changed = True
        if k.startswith(DECODER_PREFIXES) or k.startswith("head."):
            dropped.append(key)
            continue
        out[k] = value
    return out, dropped


def _infer_grid(n_tokens: int, prefer_t: Sequence[int]) -> tuple[int, int, int]:
    for t in [*prefer_t, *range(1, 33)]:
        if t <= 0 or n_tokens % t:
            continue
        side = math.isqrt(n_tokens // t)
        if side * side * t == n_tokens:
            return t, side, side
    raise BadInputError(f"cannot infer the token grid of a {n_tokens}-token position embedding")


def match_bands(weight: torch.Tensor, src_bands: Sequence[str], dst_bands: Sequence[str],
                report: LoadReport | None = None) -> torch.Tensor:
    """Patch-embedding weight (D, C_src, t, p, p) -> (D, C_dst, t, p, p) by band name.

    A band the checkpoint lacks gets the mean of the checkpoint's kernels (warned); checkpoint
    bands the dataset lacks are dropped (warned).
    """
    src = [canonical_band(b) for b in src_bands]
    dst = [canonical_band(b) for b in dst_bands]
    if weight.shape[1] != len(src):
        raise BadInputError(f"checkpoint patch embedding has {weight.shape[1]} input channels "
                            f"but {len(src)} pretrained band names were given")
    mean_kernel = weight.mean(dim=1)
    cols = []
    missing = []
    for name, orig in zip(dst, dst_bands, strict=True):
        if name in src:
            cols.append(weight[:, src.index(name)])
        else:
            cols.append(mean_kernel)
            missing.append(str(orig))
    extra = [str(b) for b, c in zip(src_bands, src, strict=True) if c not in dst]
    if missing:
        msg = (f"band(s) {', '.join(missing)} not in the pretrained weights "
               f"({', '.join(map(str, src_bands))}): initialised with the mean kernel")
        log.warning(msg)
        if report:
            report.missing_bands = missing
            report.warnings.append(msg)
    if extra:
        msg = f"pretrained band(s) {', '.join(extra)} not in the dataset: dropped"
        log.warning(msg)
        if report:
            report.extra_bands = extra
            report.warnings.append(msg)
    return torch.stack(cols, dim=1).contiguous()


def adapt_encoder_state(
    sd: Mapping[str, torch.Tensor],
    encoder: nn.Module,
    src_bands: Sequence[str] | None = None,
    dst_bands: Sequence[str] | None = None,
    src_grid: Sequence[int] | None = None,
    report: LoadReport | None = None,
) -> dict[str, torch.Tensor]:
    """Make an encoder-relative state dict fit ``encoder``: bands, position grid, extras."""
    target = encoder.state_dict()
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k not in target:
            if report:
                report.dropped.append(k)
            continue
        out[k] = v
    w = out.get("patch_embed.proj.weight")
    if w is not None:
        tw = target["patch_embed.proj.weight"]
        if w.shape[2:] != tw.shape[2:]:
            raise BadInputError(f"checkpoint patch/tubelet size {tuple(w.shape[2:])} differs "
                                f"from the model's {tuple(tw.shape[2:])}")
        if w.shape[0] != tw.shape[0]:
            raise BadInputError(f"checkpoint embed dim {w.shape[0]} differs from the model's "
                                f"{tw.shape[0]}: wrong model size for these weights")
        if src_bands is not None and dst_bands is not None:
            out["patch_embed.proj.weight"] = match_bands(w, src_bands, dst_bands, report)
        elif w.shape[1] != tw.shape[1]:
            raise BadInputError(f"checkpoint has {w.shape[1]} input bands, the model "
                                f"{tw.shape[1]}; give the band names to match them")
    pe = out.get("pos_embed")
    if pe is not None:
        tpe = target["pos_embed"]
        dst_grid = tuple(encoder.grid_size)
        if pe.shape != tpe.shape or (src_grid is not None and tuple(src_grid) != dst_grid):
            grid = tuple(src_grid) if src_grid is not None else _infer_grid(
                pe.shape[1] - 1, [dst_grid[0]])
            out["pos_embed"] = interpolate_pos_embed(pe, grid, dst_grid)
            if report:
                report.interpolated_pos_embed = (grid, dst_grid)
    for k, v in list(out.items()):
        if v.shape != target[k].shape:
            raise BadInputError(f"checkpoint tensor {k} has shape {tuple(v.shape)}, the model "
                                f"expects {tuple(target[k].shape)}")
    return out


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike[str],
    src_bands: Sequence[str] | None = None,
    src_config: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadReport:
    """Load pretrained encoder weights into ``model`` (a TerraModel or a bare encoder).

    ``src_bands`` / ``src_config`` describe the checkpoint (its bands and its pre-training
    ``num_frames``/``img_size``/``patch_size``); registry names and known hub repos supply them.
    """
    path, spec = resolve_weights(source, cache_dir)
    encoder = getattr(model, "encoder", model)
    report = LoadReport(source=str(source), path=str(path))
    if spec is not None:
        src_bands = src_bands or spec["bands"]
        src_config = src_config or spec["encoder"]
    else:
        described = checkpoint_description(path)
        if described is not None:
            src_bands = src_bands or described["bands"]
            src_config = src_config or described["encoder"]
    arch = getattr(model, "arch", {}) or {}
    dst_bands = arch.get("bands")
    if src_bands is None and dst_bands is not None and arch.get("pretrained_bands"):
        src_bands = arch["pretrained_bands"]
    src_grid = None
    if src_config is not None:
        ps = src_config.get("patch_size", [1, 16, 16])
        ps = [1, ps, ps] if isinstance(ps, int) else ps
        src_grid = (int(src_config["num_frames"]) // ps[0], int(src_config["img_size"]) // ps[1],
                    int(src_config["img_size"]) // ps[2])
    raw = read_checkpoint(path)
    sd, dropped = to_encoder_state(raw)
    report.dropped.extend(dropped)
    state = adapt_encoder_state(sd, encoder, src_bands if dst_bands else None,
                                dst_bands, src_grid, report)
    result = encoder.load_state_dict(state, strict=False)
    report.loaded = sorted(state)
    report.missing = list(result.missing_keys)
    if report.missing:
        msg = f"{len(report.missing)} encoder tensor(s) not in the checkpoint: " + ", ".join(
            report.missing[:5])
        log.warning(msg)
        report.warnings.append(msg)
    if not report.loaded:
        raise BadInputError(f"{path}: no encoder weights found in this checkpoint")
    return report
