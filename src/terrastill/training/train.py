"""Fine-tune a model on a chip folder (:func:`fit`) and score a model file (:func:`evaluate`).

Both are plain functions so the CLI, the demo and the distiller share them.

``fit`` writes into ``out_dir``: ``model.pt`` (the self-describing model file),
``metrics.json`` (val/test scores of the best epoch, per-epoch history, majority baseline),
``curves.png``, ``confusion.png`` and ``checkpoints/`` (``last.ckpt`` for ``resume``,
``best.ckpt``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from terrastill import __version__
from terrastill.atomic import write_text_atomic
from terrastill.data.dataset import ChipDataset, class_frequencies, read_dataset_meta
from terrastill.data.indices import inputs_from_meta
from terrastill.errors import BadInputError, SpecMismatchError
from terrastill.models.modelfile import (
    ModelCard,
    check_input_spec,
    fill_card_stats,
    load_model_file,
    require_task_model,
    save_model_file,
)
from terrastill.models.registry import make_arch, uses_coords
from terrastill.training.metrics import MONITOR, majority_baseline, make_metrics

log = logging.getLogger(__name__)

INPUT_SPEC_KEYS = ("source", "bands", "num_steps", "chip_size", "resolution", "temporal_step",
                   "temporal_tolerance", "max_cloud", "mask_classes", "resampling", "catalog")


@dataclass
class TrainOptions:
    """Everything :func:`fit` can be told (the CLI flags map 1:1)."""

    model: str = "tiny"
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    encoder_lr_scale: float = 1.0  # the encoder's lr × this (e.g. 0.1 from pretrained weights)
    freeze_encoder: bool = False
    weights: str | None = None
    loss: str | None = None
    class_weights: str | Sequence[float] | None = None  # None, "auto" or one weight per class
    seed: int = 0
    patience: int = 5
    resume: bool = False
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | 32 | bf16 | 16
    num_workers: int = 0
    augment: bool = True
    progress: bool = True
    name: str | None = None
    head: dict[str, Any] = field(default_factory=dict)
    encoder_overrides: dict[str, Any] = field(default_factory=dict)
    command: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)


def quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*_pytree.*")
    warnings.filterwarnings("ignore", message=".*TreeSpec.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*tensorboardX.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")


def resolve_device(device: str = "auto") -> str:
    if device in ("auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError("--device cuda asked for, but no CUDA GPU is available")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """Lightning precision string: CPU fp32; GPU bf16-mixed where supported, else fp16."""
    p = str(precision)
    if p == "auto":
        if device.startswith("cuda"):
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"
    return {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed", "fp16": "16-mixed"}.get(p, p)


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


_collate = collate_items  # old name


def input_spec_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    spec = {k: meta.get(k) for k in INPUT_SPEC_KEYS}
    spec["mean"] = [float(v) for v in meta["stats"]["mean"]]
    spec["std"] = [float(v) for v in meta["stats"]["std"]]
    if meta.get("indices"):  # derived channels the model computes (its arch has the formulas)
        spec["indices"] = [dict(i) for i in meta["indices"]]
        spec["index_stats"] = {k: meta["index_stats"][k] for k in ("mean", "std")}
    return spec


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: ChipDataset,
    task: str,
    class_names: Sequence[str],
    batch_size: int = 32,
    device: str = "cpu",
    use_coords: bool = False,
    autocast_dtype: torch.dtype | None = None,
    resamples: int = 1000,
) -> dict[str, Any]:
    """Metrics of ``model`` over every chip of ``dataset`` (plain loop, no Lightning), with
    95 % bootstrap intervals over chips (``intervals``; ``resamples`` 0 leaves them out)."""
    from terrastill.training.bootstrap import (
        metric_intervals,
        per_chip_confusion,
        per_chip_regression,
    )

    num_classes = max(len(class_names), int(model.arch["head"].get("num_classes", 1)))
    metrics = make_metrics(task, num_classes, class_names).to(device)
    per_chip: list[np.ndarray] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_items)
    model = model.to(device).eval()
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["image"].to(device)
        kw = {}
        if use_coords:
            kw = {"temporal_coords": batch["temporal_coords"].to(device),
                  "location_coords": batch["location_coords"].to(device)}
        with torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            out = model(x, **kw)
        label = batch["label"].to(device)
        metrics.update(out.float(), label)
        if resamples:
            per_chip.append(per_chip_regression(out, label) if task == "regression"
                            else per_chip_confusion(out.float(), label, num_classes))
    result = metrics.compute()
    result["n_chips"] = len(dataset)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if resamples and per_chip:
        result["intervals"] = metric_intervals(task, np.concatenate(per_chip), class_names,
                                               resamples)
    if task != "regression":
        result["baseline_majority"] = majority_baseline(np.asarray(result["confusion"]))
    return result


def rule_baseline(
    chips_dir: str | os.PathLike[str],
    split: str = "test",
    positive_class: int = 1,
    index: tuple[str, str] = ("green", "nir_narrow"),
    threshold: float = 0.0,
    negative_class: int = 0,
) -> dict[str, Any]:
    """Scores of a per-pixel spectral-index rule, e.g. NDWI = (green − NIR)/(green + NIR) > 0
    -> ``positive_class`` else ``negative_class``, on the same ignore-masked pixels as
    :func:`evaluate` (the index is the median over the valid time steps)."""
    meta = read_dataset_meta(chips_dir)
    bands = list(meta["bands"])
    missing = [b for b in index if b not in bands]
    if missing:
        raise BadInputError(f"{chips_dir}: no band(s) {', '.join(missing)} for the index rule")
    class_names = list(meta.get("class_names") or [])
    k = max(len(class_names), positive_class + 1, negative_class + 1)
    ds = ChipDataset(chips_dir, split, meta=meta)
    metrics = make_metrics("segmentation", k, class_names or None)
    ia, ib = bands.index(index[0]), bands.index(index[1])
    for i in range(len(ds)):
        img, _ = ds._read(i)
        label = ds[i]["label"]
        a, b = img[:, ia], img[:, ib]
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (cloudy) pixels
            idx = np.nanmedian((a - b) / (a + b), axis=0)
        pred = np.where(idx > threshold, positive_class, negative_class)
        logits = torch.nn.functional.one_hot(torch.from_numpy(pred), k).permute(2, 0, 1).float()
        metrics.update(logits.unsqueeze(0) * 10, label.unsqueeze(0))
    result = metrics.compute()
    result["rule"] = f"({index[0]} - {index[1]}) / ({index[0]} + {index[1]}) > {threshold}"
    return result


def plain(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _class_weights(opt: TrainOptions, ds: ChipDataset, k: int) -> list[float] | None:
    cw = opt.class_weights
    if cw is None or cw == "" or cw == "none":
        return None
    if cw == "auto":
        counts = class_frequencies(ds, k).astype(np.float64)
        freq = counts / max(counts.sum(), 1)
        w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
        w = w / w[w > 0].mean() if (w > 0).any() else np.ones(k)
        return [float(v) for v in w]
    if isinstance(cw, str):
        cw = [float(v) for v in cw.split(",")]
    if len(cw) != k:
        raise BadInputError(f"--class-weights needs {k} values (one per class), got {len(cw)}")
    return [float(v) for v in cw]


def fit(chips_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
        options: TrainOptions | dict[str, Any] | None = None) -> Path:
    """Fine-tune ``options.model`` on ``chips_dir``; returns the path of ``out_dir/model.pt``."""
    import lightning as L

    from terrastill.models.weights import load_pretrained
    from terrastill.training.augment import FlipRotate
    from terrastill.training.module import MODULES
    from terrastill.training.plots import plot_confusion, plot_curves
    from terrastill.training.runner import run_training

    opt = options if isinstance(options, TrainOptions) else TrainOptions.from_dict(options or {})
    quiet_lightning()
    chips_dir, out = Path(chips_dir), Path(out_dir)
    meta = read_dataset_meta(chips_dir)
    task = str(meta.get("task", "segmentation"))
    if task not in MODULES:
        raise BadInputError(f"{chips_dir}/dataset.json: unknown task {task!r}")
    class_names = list(meta.get("class_names") or [])
    if task != "regression" and len(class_names) < 2:
        raise BadInputError(f"{chips_dir}/dataset.json: a {task} dataset needs >= 2 class_names")
    k = len(class_names) if task != "regression" else 1
    device = resolve_device(opt.device)
    precision = resolve_precision(opt.precision, device)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    resume_from = last_ckpt if opt.resume and last_ckpt.is_file() else None
    if opt.resume and resume_from is None:
        log.warning("--resume: no %s yet, starting from scratch", last_ckpt)
    if resume_from is None and ckpt_dir.exists():
        for p in ckpt_dir.glob("*.ckpt"):
            p.unlink()

    L.seed_everything(opt.seed, workers=True, verbose=False)
    arch = make_arch(opt.model, task, k, bands=meta["bands"], num_steps=int(meta["num_steps"]),
                     chip_size=int(meta["chip_size"]), head=opt.head,
                     encoder_overrides=opt.encoder_overrides, inputs=inputs_from_meta(meta))
    use_coords = uses_coords(arch)
    train_ds = ChipDataset(chips_dir, "train", FlipRotate() if opt.augment else None,
                           coords=use_coords, meta=meta)
    val_ds = ChipDataset(chips_dir, "val", coords=use_coords, meta=meta)
    test_ds = ChipDataset(chips_dir, "test", coords=use_coords, meta=meta)
    if len(train_ds) == 0:
        raise BadInputError(f"{chips_dir}: no chips in the train split")
    weights_cw = _class_weights(opt, train_ds, k) if task != "regression" else None
    module = MODULES[task](arch, class_names, loss=opt.loss, class_weights=weights_cw, lr=opt.lr,
                           weight_decay=opt.weight_decay, layer_decay=opt.layer_decay,
                           freeze_encoder=opt.freeze_encoder, use_coords=use_coords,
                           encoder_lr_scale=opt.encoder_lr_scale)
    load_info = None
    if opt.weights and resume_from is None:
        if arch.get("family") == "cnn":
            from terrastill.models.cnn import load_cnn_weights

            load_info = load_cnn_weights(module.model, opt.weights)
        else:
            load_info = load_pretrained(module.model, opt.weights).to_dict()

    metric, _mode = MONITOR[task]
    has_val = len(val_ds) > 0
    run = run_training(module, train_ds, val_ds, collate=collate_items, epochs=opt.epochs,
                       batch_size=opt.batch_size, seed=opt.seed, patience=opt.patience,
                       device=device, precision=precision, ckpt_dir=ckpt_dir,
                       progress=opt.progress, num_workers=opt.num_workers,
                       resume_from=resume_from)
    history_rows, best_epoch, train_seconds, monitor = (run.history, run.best_epoch,
                                                        run.seconds, run.monitor)
    model = module.model.cpu().eval()

    results: dict[str, Any] = {}
    eval_device = device
    for split, ds in (("val", val_ds), ("test", test_ds)):
        if len(ds):
            results[split] = evaluate_model(model, ds, task, class_names, device=eval_device,
                                            use_coords=use_coords)
    model = model.cpu().eval()
    name = opt.name or f"{opt.model}-{task}"
    card = ModelCard(
        name=name, task=task, arch=model.arch, input_spec=input_spec_from_meta(meta),
        class_names=class_names,
        metrics=plain({s: {k2: v for k2, v in r.items() if k2 not in ("confusion",)}
                        for s, r in results.items()}),
        teacher=None,
        created_with={"terrastill": __version__, "command": opt.command or "terrastill train",
                      "torch": str(torch.__version__)},
        training=plain({"options": dataclasses.asdict(opt), "epochs_run": len(history_rows),
                         "best_epoch": best_epoch, "monitor": monitor, "seconds":
                         round(train_seconds, 2), "device": device, "precision": precision,
                         "pretrained": load_info, "class_weights": weights_cw,
                         "chips_dir": str(chips_dir)}),
    )
    fill_card_stats(card, model)
    model_path = save_model_file(out / "model.pt", model, card)
    summary = {
        "task": task, "model": opt.model, "name": name, "monitor": monitor,
        "best_epoch": best_epoch, "train_seconds": round(train_seconds, 2),
        "params": card.params, "macs": card.macs, "device": device, "precision": precision,
        **results, "history": history_rows,
    }
    write_text_atomic(out / "metrics.json", json.dumps(plain(summary), indent=2))
    if history_rows:
        plot_curves(history_rows, out / "curves.png", metric=metric if has_val else "loss")
    conf_src = results.get("test") or results.get("val")
    if conf_src and task != "regression":
        plot_confusion(conf_src["confusion"], class_names, out / "confusion.png",
                       title=f"confusion ({'test' if 'test' in results else 'val'})")
    return model_path


def evaluate(model_path: str | os.PathLike[str], chips_dir: str | os.PathLike[str],
             split: str = "test", batch_size: int = 32, device: str = "auto",
             out: str | os.PathLike[str] | None = None,
             reference: Sequence[str | os.PathLike[str]] | None = None,
             resamples: int = 1000) -> dict[str, Any]:
    """Score a model file on a chip folder split; refuses a dataset that does not match the
    model's input spec (:class:`SpecMismatchError`). Writes ``out`` (JSON) when given.

    Every figure comes with a 95 % bootstrap interval over chips (``intervals``). With
    ``reference`` (rasters on the chips' grids, one per UTM zone, or a demo world whose truth
    has the dataset's classes) the chips are scored against that dense reference instead of
    their sparse labels, over every pixel with valid input."""
    loaded = load_model_file(model_path)
    card = loaded.card
    require_task_model(card, model_path, "be evaluated")
    meta = read_dataset_meta(chips_dir)
    check_input_spec(card.input_spec, meta, what=f"{Path(chips_dir)}")
    if str(meta.get("task", card.task)) != card.task:
        raise SpecMismatchError(f"{chips_dir}: a {meta.get('task')} dataset, the model is for "
                                f"{card.task}")
    if card.task != "regression" and len(meta.get("class_names") or []) not in (
            0, len(card.class_names)):
        raise SpecMismatchError(f"{chips_dir}: {len(meta['class_names'])} classes, the model "
                                f"has {len(card.class_names)} ({', '.join(card.class_names)})")
    # the model's normalisation, not the dataset's: the tensors must be what it was trained on
    meta = {**meta, "stats": {"mean": card.input_spec["mean"], "std": card.input_spec["std"]}}
    use_coords = uses_coords(card.arch)
    ds = ChipDataset(chips_dir, split, coords=use_coords, meta=meta)
    if len(ds) == 0:
        raise BadInputError(f"{chips_dir}: no chips in split {split!r}")
    ref = left_out = None
    if reference:
        from terrastill.training.reference import apply_reference, resolve_references

        ref = resolve_references(list(reference), card.class_names)
        left_out = apply_reference(ds, ref)
    dev = resolve_device(device)
    result = evaluate_model(loaded.model, ds, card.task, card.class_names, batch_size, dev,
                            use_coords, resamples=resamples)
    result = plain({"model": str(model_path), "model_name": card.name, "task": card.task,
                     "chips_dir": str(chips_dir), "split": split, "class_names": card.class_names,
                     "labels": "reference" if ref else "chip labels",
                     **({"reference": {**ref.describe(), "chips_left_out": left_out}}
                        if ref else {}),
                     **result})
    if out is not None:
        write_text_atomic(out, json.dumps(result, indent=2))
    return result
