"""Named model specs shared by the CLI, the distiller and the service.

A spec is an encoder config (Prithvi's hyper-parameters at its pre-training input size), the
bands it was pre-trained on, and — for published models — where its weights live on the
Hugging Face hub. :func:`make_arch` adapts a spec to a chip dataset (bands, T, chip size) and a
task head; :func:`build_model` turns such an ``arch`` dict into a module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from terrastill.errors import BadInputError
from terrastill.models.model import TerraModel, full_arch

HLS_BANDS = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]

_V1 = {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": [1, 16, 16],
       "num_frames": 3, "img_size": 224, "in_chans": 6, "norm_eps": 1e-6}
_V2_300 = {"embed_dim": 1024, "depth": 24, "num_heads": 16, "patch_size": [1, 16, 16],
           "num_frames": 4, "img_size": 224, "in_chans": 6, "norm_eps": 1e-5}
_V2_600 = {"embed_dim": 1280, "depth": 32, "num_heads": 16, "patch_size": [1, 14, 14],
           "num_frames": 4, "img_size": 224, "in_chans": 6, "norm_eps": 1e-5}
_TL = {"coords_encoding": ["time", "location"], "coords_scale_learn": True}

_ORG = "ibm-nasa-geospatial"

SPECS: dict[str, dict[str, Any]] = {
    "prithvi-eo-1.0-100m": {
        "description": "Prithvi-EO-1.0 100M (ViT-B, 3 frames, HLS 6 bands)",
        "encoder": _V1,
        "bands": HLS_BANDS,
        "hub": {"repo_id": f"{_ORG}/Prithvi-EO-1.0-100M", "filename": "Prithvi_EO_V1_100M.pt"},
    },
    "prithvi-eo-2.0-300m": {
        "description": "Prithvi-EO-2.0 300M (ViT-L, 4 frames)",
        "encoder": _V2_300,
        "bands": HLS_BANDS,
        "hub": {"repo_id": f"{_ORG}/Prithvi-EO-2.0-300M", "filename": "Prithvi_EO_V2_300M.pt"},
    },
    "prithvi-eo-2.0-300m-tl": {
        "description": "Prithvi-EO-2.0 300M with temporal + location encodings",
        "encoder": {**_V2_300, **_TL},
        "bands": HLS_BANDS,
        "hub": {"repo_id": f"{_ORG}/Prithvi-EO-2.0-300M-TL",
                "filename": "Prithvi_EO_V2_300M_TL.pt"},
    },
    "prithvi-eo-2.0-600m": {
        "description": "Prithvi-EO-2.0 600M (ViT-H, patch 14, 4 frames)",
        "encoder": _V2_600,
        "bands": HLS_BANDS,
        "hub": {"repo_id": f"{_ORG}/Prithvi-EO-2.0-600M", "filename": "Prithvi_EO_V2_600M.pt"},
    },
    "prithvi-eo-2.0-600m-tl": {
        "description": "Prithvi-EO-2.0 600M with temporal + location encodings",
        "encoder": {**_V2_600, **_TL},
        "bands": HLS_BANDS,
        "hub": {"repo_id": f"{_ORG}/Prithvi-EO-2.0-600M-TL",
                "filename": "Prithvi_EO_V2_600M_TL.pt"},
    },
    "tiny": {
        "description": "CPU-sized Prithvi-layout ViT (96 dim, 6 blocks, patch 4) for demos/tests",
        "encoder": {"embed_dim": 96, "depth": 6, "num_heads": 3, "patch_size": [1, 4, 4],
                    "num_frames": 3, "img_size": 32, "in_chans": 6, "mlp_ratio": 2.0},
        "bands": HLS_BANDS,
        "hub": None,
        "head": {"channels": 32},
    },
    "small": {
        "description": "small Prithvi-layout ViT (192 dim, 8 blocks, patch 8)",
        "encoder": {"embed_dim": 192, "depth": 8, "num_heads": 6, "patch_size": [1, 8, 8],
                    "num_frames": 3, "img_size": 64, "in_chans": 6, "mlp_ratio": 4.0},
        "bands": HLS_BANDS,
        "hub": None,
        "head": {"channels": 128},
    },
}


def list_models() -> list[str]:
    """Names of every registered model: the ViT specs, then the CNN baselines."""
    from terrastill.models.cnn import CNN_SPECS

    return [*SPECS, *CNN_SPECS]


def is_registered(name: str) -> bool:
    """Whether ``name`` is a ViT spec or a CNN baseline (case-insensitive)."""
    return name.lower() in list_models()


def get_spec(name: str) -> dict[str, Any]:
    """A deep copy of the spec called ``name`` (case-insensitive)."""
    key = name.lower()
    from terrastill.models.cnn import is_cnn

    if is_cnn(key):
        raise BadInputError(f"model {name!r} is a CNN baseline; this needs a ViT spec "
                            f"({', '.join(SPECS)})")
    if key not in SPECS:
        raise BadInputError(f"unknown model {name!r}; choose one of: {', '.join(SPECS)}")
    spec = copy.deepcopy(SPECS[key])
    spec["name"] = key
    return spec


def make_arch(
    name: str,
    task: str = "segmentation",
    num_classes: int = 2,
    bands: Sequence[str] | None = None,
    num_steps: int | None = None,
    chip_size: int | None = None,
    head: dict[str, Any] | None = None,
    encoder_overrides: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The full ``arch`` dict for spec ``name`` adapted to a dataset and a task.

    ``inputs`` (:func:`terrastill.data.indices.input_config`): derived index channels the
    model computes from the bands itself; its channels are the bands, then the indices."""
    from terrastill.models.cnn import is_cnn, make_cnn_arch

    if is_cnn(name):
        if encoder_overrides:
            raise BadInputError(f"model {name!r}: encoder overrides apply to ViT specs only")
        return make_cnn_arch(name, task, num_classes, bands, num_steps, chip_size, head, inputs)
    spec = get_spec(name)
    enc = dict(spec["encoder"])
    has_indices = bool(inputs and inputs.get("indices"))
    if has_indices:
        from terrastill.data.indices import channel_names

        bands = channel_names(inputs, bands if bands is not None else spec["bands"])
    if bands is not None:
        enc["in_chans"] = len(bands)
    if num_steps is not None:
        enc["num_frames"] = int(num_steps)
    if chip_size is not None:
        enc["img_size"] = int(chip_size)
    enc.update(encoder_overrides or {})
    if enc["num_frames"] % enc["patch_size"][0]:
        raise BadInputError(f"T={enc['num_frames']} is not a multiple of the tubelet size "
                            f"{enc['patch_size'][0]} of model {name!r}")
    if enc["img_size"] % enc["patch_size"][1]:
        raise BadInputError(f"chip size {enc['img_size']} is not a multiple of the patch size "
                            f"{enc['patch_size'][1]} of model {name!r}")
    head_cfg = {**spec.get("head", {}), **(head or {}), "type": task}
    if task == "embedding":  # encoder only: the tokens are the output
        head_cfg = {"type": task}
    elif task == "regression":
        head_cfg.setdefault("num_outputs", 1)
    else:
        head_cfg["num_classes"] = int(num_classes)
    arch = {
        "name": spec["name"],
        "task": task,
        "encoder": enc,
        "head": head_cfg,
        "bands": list(bands) if bands is not None else list(spec["bands"]),
        "pretrained_bands": list(spec["bands"]),
        "hub": spec.get("hub"),
    }
    if has_indices:
        arch["inputs"] = copy.deepcopy(inputs)
    return full_arch(arch)


def build_model(arch: dict[str, Any]) -> Any:
    """A freshly initialised model from an ``arch`` dict (as stored in a model card): a
    :class:`TerraModel` (ViT) or a :class:`~terrastill.models.cnn.CNNModel` baseline."""
    if arch.get("family") == "cnn":
        from terrastill.models.cnn import CNNModel

        return CNNModel(arch)
    return TerraModel(arch)


def uses_coords(arch: dict[str, Any]) -> bool:
    """Whether a model built from ``arch`` takes temporal and location encodings (TL)."""
    return bool(arch["encoder"].get("coords_encoding"))
