"""Measure once whether bf16 autocast changes a model's metric, and record it in the model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOLERANCE_PP = 0.5


def calibrate_precision(model_path: str | Path, chips_dir: str | Path, split: str = "val",
                        tolerance_pp: float = TOLERANCE_PP, device: str = "cpu") -> dict[str, Any]:
    """Evaluate ``split`` in fp32 and under bf16 autocast; store the verdict in the card.

    ``bf16_ok`` is true when the metric (mIoU, or RMSE for regression, in percentage points of
    the fp32 value) moves by at most ``tolerance_pp``. ``predict --precision auto`` reads it.
    """
    import torch

    from terrastill.data.dataset import ChipDataset, read_dataset_meta
    from terrastill.models.modelfile import load_model_file, save_model_file
    from terrastill.models.registry import uses_coords
    from terrastill.training.train import evaluate_model

    loaded = load_model_file(model_path)
    card = loaded.card
    meta = read_dataset_meta(chips_dir)
    meta["stats"] = {"mean": card.input_spec["mean"], "std": card.input_spec["std"]}
    coords = uses_coords(card.arch)
    ds = ChipDataset(chips_dir, split, meta=meta, coords=coords)
    if len(ds) == 0:
        split = "all"
        ds = ChipDataset(chips_dir, split, meta=meta, coords=coords)
    runs = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        runs[name] = evaluate_model(loaded.model, ds, card.task, card.class_names,
                                    device=device, use_coords=coords, autocast_dtype=dtype)
    if card.task == "regression":
        metric, scale = "rmse", 100.0 / max(abs(runs["fp32"]["rmse"]), 1e-9)
    else:
        metric, scale = "miou", 100.0
    delta = (runs["bf16"][metric] - runs["fp32"][metric]) * scale
    verdict = {"bf16_ok": bool(abs(delta) <= tolerance_pp), "metric": metric,
               "fp32": runs["fp32"][metric], "bf16": runs["bf16"][metric],
               "bf16_delta_pp": round(float(delta), 4), "tolerance_pp": tolerance_pp,
               "split": split, "chips": len(ds), "device": device,
               "seconds": {k: v["seconds"] for k, v in runs.items()}}
    card.precision = verdict
    save_model_file(model_path, loaded.model, card)
    return verdict
