"""Task-specific distillation: a shallow student cut from a fine-tuned teacher.

Student = the teacher's patch embedding + its first ``N`` encoder blocks (weights copied) + the
teacher's final norm and head (copied: the head only sees ``embed_dim``, which a truncated
encoder keeps, so its shapes always match; a different ``head`` config gives a fresh head).

Loss (segmentation / classification)::

    α · task(student, ground truth)                       # CE with ignore -1 (or --loss)
    + (1 − α) · T² · KL(softmax(teacher/T) ‖ softmax(student/T))   # mean over valid pixels
    + β · Σ feature(student block k, teacher block m)     # optional, MSE or 1 − cosine

The KL term runs over every pixel whose *input* is valid (``batch["valid"]``), including
pixels whose label is -1: that is where distillation helps most with sparse labels.
Regression: ``α · task + (1 − α) · MSE(student, teacher)`` over valid pixels.

:func:`distill` runs the whole thing (fixed depth or ``auto`` search, see
:mod:`terrastill.training.depth_search`) and writes the student's model file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from terrastill.errors import BadInputError, SpecMismatchError
from terrastill.training.module import TaskModule

log = logging.getLogger(__name__)

FEATURE_LOSSES = ("mse", "cosine")


# --- student construction -------------------------------------------------------------------

def make_student(teacher: nn.Module, depth: int, head: dict[str, Any] | None = None) -> nn.Module:
    """The teacher's embedding + first ``depth`` blocks + final norm + head (all copied).

    ``head``: overrides of the head config (e.g. ``{"channels": 32}``); where the resulting
    head's parameter shapes differ from the teacher's, those head weights stay freshly
    initialised (shape-matching ones are still copied).
    """
    from terrastill.models.model import TerraModel, truncate

    n = int(teacher.encoder.depth)
    if not 1 <= depth <= n:
        raise BadInputError(f"--layers {depth}: the teacher has {n} encoder blocks; "
                            f"choose 1..{n}")
    student = truncate(teacher, depth)
    if head:
        arch = dict(student.arch)
        arch["head"] = {**arch["head"], **head}
        fresh = TerraModel(arch)
        state = fresh.state_dict()
        src = student.state_dict()
        for k, v in src.items():
            if k in state and state[k].shape == v.shape:
                state[k] = v
        fresh.load_state_dict(state)
        student = fresh
    return student


def parse_feature_pairs(spec: str | Sequence[Sequence[int]] | None
                        ) -> list[tuple[int, int]]:
    """``"1:3,3:7"`` or ``[(1, 3), (3, 7)]`` -> [(student block, teacher block)] (0-based)."""
    if spec is None or spec == "" or spec == "none":
        return []
    if isinstance(spec, str):
        pairs = []
        for part in spec.split(","):
            try:
                a, b = part.split(":")
                pairs.append((int(a), int(b)))
            except ValueError:
                raise BadInputError(f"--feature-pairs {spec!r}: expected 'S:T[,S:T...]' "
                                    f"(student block : teacher block, 0-based)") from None
        return pairs
    return [(int(a), int(b)) for a, b in spec]


def resolve_feature_pairs(pairs: Sequence[tuple[int, int]], student_depth: int,
                          teacher_depth: int) -> list[tuple[int, int]]:
    """Negative indices count from the end (``-1:-1`` = last student ↔ last teacher block)."""
    out = []
    for s, t in pairs:
        s2 = s if s >= 0 else student_depth + s
        t2 = t if t >= 0 else teacher_depth + t
        if not (0 <= s2 < student_depth and 0 <= t2 < teacher_depth):
            raise BadInputError(f"feature pair {s}:{t} is outside the student's {student_depth} "
                                f"/ the teacher's {teacher_depth} blocks")
        out.append((s2, t2))
    return out


# --- the loss -------------------------------------------------------------------------------

def kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (valid) pixels of KL(softmax(teacher/T) ‖ softmax(student/T)), classes on dim 1.

    Not multiplied by T². ``student``/``teacher``: (B, K, H, W) or (B, K); ``valid``: (B, H, W)
    bool (ignored for (B, K) logits).
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # (B, H, W) or (B,)
    if valid is not None and kl.ndim == 3:
        mask = valid.to(kl.device).bool()
        if not mask.any():
            return student.sum() * 0
        return kl[mask].mean()
    return kl.mean()


def mse_to_teacher(student: torch.Tensor, teacher: torch.Tensor,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of dense outputs over valid pixels (regression distillation)."""
    s = student.float()
    t = teacher.float()
    if valid is not None and s.ndim == 4:
        mask = valid.to(s.device).bool().unsqueeze(1).expand_as(s)
        if not mask.any():
            return s.sum() * 0
        return F.mse_loss(s[mask], t[mask])
    return F.mse_loss(s, t)


def feature_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                 kind: str = "mse") -> torch.Tensor:
    """Mean over block pairs of MSE or (1 − cosine similarity over D) of (B, 1+L, D) tokens."""
    if kind not in FEATURE_LOSSES:
        raise BadInputError(f"feature loss {kind!r}: choose one of {FEATURE_LOSSES}")
    terms = []
    for s, t in zip(student_feats, teacher_feats, strict=True):
        s, t = s.float(), t.float().detach()
        if kind == "mse":
            terms.append(F.mse_loss(s, t))
        else:
            terms.append((1 - F.cosine_similarity(s, t, dim=-1)).mean())
    return torch.stack(terms).mean()


def distillation_loss(
    task: str,
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    target: torch.Tensor,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    alpha: float = 0.5,
    temperature: float = 2.0,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``α·task + (1−α)·T²·KL`` (classes) or ``α·task + (1−α)·MSE`` (regression).

    Returns the total and its parts (``task``, ``kd``: the unweighted KD term, T² included).
    """
    task_term = task_loss(student_out, target)
    if task == "regression":
        kd = mse_to_teacher(student_out, teacher_out, valid)
    else:
        kd = float(temperature) ** 2 * kl_to_teacher(student_out, teacher_out, temperature,
                                                     valid)
    total = float(alpha) * task_term + (1 - float(alpha)) * kd
    return total, {"task": task_term.detach(), "kd": kd.detach()}


# --- Lightning module -----------------------------------------------------------------------

class DistillationModule(TaskModule):
    """A :class:`TaskModule` whose training loss distils a frozen teacher into ``self.model``.

    Validation (``val_loss``, ``val_miou``...) is the plain task metric of the student, so the
    base class's checkpointing and early stopping work unchanged.
    """

    def __init__(
        self,
        arch: dict[str, Any],
        teacher_arch: dict[str, Any],
        class_names: Sequence[str] = (),
        alpha: float = 0.5,
        temperature: float = 2.0,
        feature_pairs: Sequence[Sequence[int]] = (),
        feature_loss: str = "mse",
        feature_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(arch, class_names, **kwargs)
        from terrastill.models.registry import build_model

        if not 0.0 <= float(alpha) <= 1.0:
            raise BadInputError(f"--alpha {alpha}: must be in [0, 1]")
        if float(temperature) <= 0:
            raise BadInputError(f"--temperature {temperature}: must be > 0")
        if feature_loss not in FEATURE_LOSSES:
            raise BadInputError(f"--feature-loss {feature_loss!r}: choose one of "
                                f"{FEATURE_LOSSES}")
        self.teacher = build_model(teacher_arch)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.feature_pairs = resolve_feature_pairs(
            [tuple(p) for p in feature_pairs], self.model.encoder.depth,
            self.teacher.encoder.depth)
        self.feature_kind = feature_loss
        self.feature_weight = float(feature_weight)

    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        self.teacher.eval()  # frozen: dropout/BN statistics never change
        return self

    def _coords(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.hparams.use_coords:
            return {"temporal_coords": batch.get("temporal_coords"),
                    "location_coords": batch.get("location_coords")}
        return {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        kw = self._coords(batch)
        s_blocks = [s for s, _ in self.feature_pairs] or None
        t_blocks = [t for _, t in self.feature_pairs] or None
        s_out, s_feats = self.model.forward_with_features(x, s_blocks, **kw)
        with torch.no_grad():
            t_out, t_feats = self.teacher.forward_with_features(x, t_blocks, **kw)
        loss, parts = distillation_loss(self.task, s_out, t_out, self._target(batch),
                                        self.loss_fn, self.alpha, self.temperature,
                                        batch.get("valid"))
        bs = x.shape[0]
        if self.feature_pairs and self.feature_weight:
            feat = feature_loss(s_feats, t_feats, self.feature_kind)
            loss = loss + self.feature_weight * feat
            self.log("train_feat", feat, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train_task", parts["task"], on_step=False, on_epoch=True, batch_size=bs)
        self.log("train_kd", parts["kd"], on_step=False, on_epoch=True, batch_size=bs)
        return loss


DISTILL_MODULES: dict[str, type[DistillationModule]] = {
    task: type(f"{task.capitalize()}DistillationModule", (DistillationModule,), {"task": task})
    for task in ("segmentation", "regression", "classification")
}


# --- the whole run --------------------------------------------------------------------------

@dataclass
class DistillOptions:
    """Everything :func:`distill` can be told (the CLI flags map 1:1)."""

    layers: int | str = "auto"  # N or "auto"
    tolerance: float = 1.0  # pp of the validation metric (mIoU ×100; % of RMSE for regression)
    candidates: str | Sequence[int] | None = None  # depths to search (default 1..depth-1)
    alpha: float = 0.5
    temperature: float = 2.0
    feature_pairs: str | Sequence[Sequence[int]] | None = None
    feature_loss: str = "mse"
    feature_weight: float = 1.0
    # head overrides: {"channels": "auto"} sizes it with the student's depth (head_sizing);
    # empty: the teacher's head, weights and all
    head: dict[str, Any] = field(default_factory=lambda: {"channels": "auto"})
    epochs: int = 15
    search_epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    loss: str | None = None
    seed: int = 0
    patience: int = 5
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    augment: bool = True
    progress: bool = True
    search_all: bool = False  # auto: train every candidate (else stop at the first within
    #                           tolerance, ascending: same choice, less compute)
    bench_seconds: float = 1.0  # img/s measurement per depth (0: skip)
    bench_batch_size: int = 8
    keep_search_checkpoints: bool = False
    # auto: the chosen depth's final run continues from its search candidate's weights for
    # the remaining epochs - search_epochs (False: a fresh run of `epochs`)
    warm_start: bool = True
    # auto: a dense reference (rasters or a demo world) to choose the depth on, scored over
    # the val chips, when sparse labels cannot resolve the tolerance
    reference: Sequence[str] | None = None
    name: str | None = None
    command: str | None = None
    # another architecture to distil into (a registry name such as unet-r18, or a model file
    # to start from) instead of the teacher's first N blocks: logit distillation only
    student: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown distillation option(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass
class DistillResult:
    model_path: Path
    depth: int
    teacher_metrics: dict[str, Any]
    student_metrics: dict[str, Any]
    search: list[dict[str, Any]] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Context:
    """What every student run shares: teacher, data, device."""

    teacher: nn.Module
    card: Any
    teacher_path: Path
    chips_dir: Path
    meta: dict[str, Any]
    task: str
    class_names: list[str]
    use_coords: bool
    device: str
    precision: str
    train_ds: Any
    val_ds: Any
    test_ds: Any


def _load_context(teacher_path: str | os.PathLike[str], chips_dir: str | os.PathLike[str],
                  opt: DistillOptions) -> _Context:
    from terrastill.data.dataset import ChipDataset, read_dataset_meta
    from terrastill.models.modelfile import (
        check_input_spec,
        load_model_file,
        require_task_model,
    )
    from terrastill.models.registry import uses_coords
    from terrastill.training.augment import FlipRotate
    from terrastill.training.train import resolve_device, resolve_precision

    loaded = load_model_file(teacher_path)
    card = loaded.card
    require_task_model(card, teacher_path, "be distilled")
    chips_dir = Path(chips_dir)
    meta = read_dataset_meta(chips_dir)
    check_input_spec(card.input_spec, meta, what=str(chips_dir))
    task = card.task
    if str(meta.get("task", task)) != task:
        raise SpecMismatchError(f"{chips_dir}: a {meta.get('task')} dataset, the teacher is for "
                                f"{task}")
    if task != "regression" and len(meta.get("class_names") or []) not in (
            0, len(card.class_names)):
        raise SpecMismatchError(f"{chips_dir}: {len(meta['class_names'])} classes, the teacher "
                                f"has {len(card.class_names)} ({', '.join(card.class_names)})")
    # the teacher's normalisation: the student must see exactly the teacher's inputs
    meta = {**meta, "stats": {"mean": card.input_spec["mean"], "std": card.input_spec["std"]}}
    use_coords = uses_coords(card.arch)
    train_ds = ChipDataset(chips_dir, "train", FlipRotate() if opt.augment else None,
                           coords=use_coords, meta=meta)
    if len(train_ds) == 0:
        raise BadInputError(f"{chips_dir}: no chips in the train split")
    val_ds = ChipDataset(chips_dir, "val", coords=use_coords, meta=meta)
    test_ds = ChipDataset(chips_dir, "test", coords=use_coords, meta=meta)
    device = resolve_device(opt.device)
    return _Context(teacher=loaded.model, card=card, teacher_path=Path(teacher_path),
                    chips_dir=chips_dir, meta=meta, task=task,
                    class_names=list(card.class_names), use_coords=use_coords, device=device,
                    precision=resolve_precision(opt.precision, device), train_ds=train_ds,
                    val_ds=val_ds, test_ds=test_ds)


def _evaluate(ctx: _Context, model: nn.Module, splits: Sequence[str] = ("val", "test")
              ) -> dict[str, Any]:
    from terrastill.training.train import evaluate_model

    out: dict[str, Any] = {}
    for split in splits:
        ds = {"train": ctx.train_ds, "val": ctx.val_ds, "test": ctx.test_ds}[split]
        if len(ds):
            r = evaluate_model(model, ds, ctx.task, ctx.class_names, device=ctx.device,
                               use_coords=ctx.use_coords)
            out[split] = {k: v for k, v in r.items() if k != "confusion"}
            out[split]["confusion"] = r.get("confusion")
    model.cpu()
    return out


def architecture_student(ctx: _Context, choice: str) -> nn.Module:
    """A student of another architecture (``--student``): a registry model built for the
    teacher's inputs and classes (fresh weights), or a model file (its weights) whose classes
    and input channels must match the teacher's."""
    from terrastill.models.cnn import check_student_fits
    from terrastill.models.modelfile import load_model_file
    from terrastill.models.registry import build_model, is_registered, list_models, make_arch

    spec = ctx.card.input_spec
    path = Path(choice)
    if path.suffix in (".pt", ".pth") or path.is_file():
        loaded = load_model_file(path)
        check_student_fits(loaded.card.arch, ctx.teacher.arch, f"--student {choice}")
        return loaded.model.train()
    if not is_registered(choice):
        raise BadInputError(f"--student {choice!r}: neither a model file nor a registry model "
                            f"({', '.join(list_models())})")
    head = ctx.teacher.arch["head"]
    k = int(head.get("num_classes", head.get("num_outputs", 1)))
    arch = make_arch(choice, ctx.task, k, bands=spec["bands"], num_steps=int(spec["num_steps"]),
                     chip_size=int(spec["chip_size"]), inputs=ctx.teacher.arch.get("inputs"))
    check_student_fits(arch, ctx.teacher.arch, f"--student {choice}")
    return build_model(arch)


def train_student(ctx: _Context, depth: int, out_dir: Path, opt: DistillOptions,
                  epochs: int, init: Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Distil the teacher into a ``depth``-block student for ``epochs``; returns the best
    student (CPU, eval) and a summary (history, best epoch, seconds, results per split).
    ``init``: a state dict of this student (a search candidate's) to continue from."""
    import lightning as L

    from terrastill.training.runner import run_training
    from terrastill.training.train import collate_items, quiet_lightning

    quiet_lightning()
    L.seed_everything(opt.seed, workers=True, verbose=False)
    if opt.student:
        student = architecture_student(ctx, opt.student)
        depth = int(student.depth)
    else:
        from terrastill.training.head_sizing import resolve_head

        outputs = len(ctx.class_names) if ctx.task != "regression" else 1
        student = make_student(ctx.teacher, depth,
                               resolve_head(ctx.teacher, depth, opt.head, outputs))
    pairs = resolve_feature_pairs(parse_feature_pairs(opt.feature_pairs), depth,
                                  ctx.teacher.encoder.depth)
    module = DISTILL_MODULES[ctx.task](
        student.arch, ctx.teacher.arch, ctx.class_names, alpha=opt.alpha,
        temperature=opt.temperature, feature_pairs=pairs, feature_loss=opt.feature_loss,
        feature_weight=opt.feature_weight, loss=opt.loss, lr=opt.lr,
        weight_decay=opt.weight_decay, use_coords=ctx.use_coords)
    module.model.load_state_dict(student.state_dict())
    if init is not None:
        module.model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    module.teacher.load_state_dict(ctx.teacher.state_dict())

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    run = run_training(module, ctx.train_ds, ctx.val_ds, collate=collate_items, epochs=epochs,
                       batch_size=opt.batch_size, seed=opt.seed, patience=opt.patience,
                       device=ctx.device, precision=ctx.precision, ckpt_dir=ckpt_dir,
                       progress=opt.progress, num_workers=opt.num_workers, keep_last=False)
    monitor, seconds, best_epoch = run.monitor, run.seconds, run.best_epoch
    model = module.model.cpu().eval()
    ctx.teacher.cpu().eval()
    summary = {"depth": depth, "epochs": int(epochs), "epochs_run": len(run.history),
               "best_epoch": best_epoch, "monitor": monitor, "train_seconds": round(seconds, 2),
               "history": run.history, "feature_pairs": pairs}
    return model, summary


def _search_evidence(ctx: _Context, opt: DistillOptions, teacher_results: dict[str, Any]
                     ) -> tuple[Any, dict[str, Any]]:
    """What the depth search scores candidates on: the val split's labels, or the dense
    reference over the val chips when one is given. Returns (dataset or None for the val
    split, a description with the teacher's interval and whether it resolves the
    tolerance)."""
    from terrastill.data.dataset import ChipDataset
    from terrastill.training.metrics import MONITOR
    from terrastill.training.train import evaluate_model

    metric, mode = MONITOR[ctx.task]
    info: dict[str, Any] = {"source": "val labels"}
    dataset = None
    result = teacher_results.get("val") or {}
    if opt.reference:
        from terrastill.training.reference import apply_reference, resolve_references

        ref = resolve_references(list(opt.reference), ctx.class_names)
        ds = ChipDataset(ctx.chips_dir, "val", coords=ctx.use_coords, meta=ctx.meta)
        try:
            left_out = apply_reference(ds, ref)
        except BadInputError as exc:
            info["reference_unusable"] = str(exc)
        else:
            dataset = ds
            result = evaluate_model(ctx.teacher, ds, ctx.task, ctx.class_names,
                                    device=ctx.device, use_coords=ctx.use_coords)
            ctx.teacher.cpu()
            info = {"source": "dense reference over the val chips",
                    "reference": ref.describe(), "chips_left_out": left_out}
    interval = (result.get("intervals") or {}).get(metric)
    value = result.get(metric)
    info.update({"teacher_metric": value, "teacher_interval": interval,
                 "labelled_pixels": result.get("n_pixels"), "chips": result.get("n_chips")})
    if interval and value is not None:
        width = (interval[1] - interval[0]) * 100.0
        if mode == "min":  # tolerance in percent of the metric
            width = width / max(abs(float(value)), 1e-12)
        info["interval_width"] = round(width, 3)
        info["resolves_tolerance"] = bool(width <= opt.tolerance)
    else:
        info["resolves_tolerance"] = False
    if not info["resolves_tolerance"]:
        hint = ("" if dataset is not None else
                "; give a dense reference (--reference RASTER or a demo world) or more "
                "labelled validation pixels")
        info["note"] = (f"the teacher's validation {metric} is only known to within "
                        f"{info.get('interval_width', float('nan')):.2f} (95 % interval over "
                        f"{info.get('chips')} chips, {info.get('labelled_pixels')} pixels), "
                        f"wider than the tolerance {opt.tolerance:g}: the choice of depth is "
                        f"not resolved by this evidence{hint}")
        log.warning(info["note"])
    return dataset, info


def _metric_of(results: dict[str, Any], task: str, split: str = "val") -> float | None:
    from terrastill.training.metrics import MONITOR

    r = results.get(split) or results.get("test") or {}
    v = r.get(MONITOR[task][0])
    return None if v is None else float(v)


def _stats(model: nn.Module) -> dict[str, int]:
    from terrastill.models.modelfile import ModelCard, fill_card_stats

    card = ModelCard(name="x", task="x", arch=model.arch, input_spec={})
    fill_card_stats(card, model)
    return {"params": card.params, "encoder_params": card.encoder_params, "macs": card.macs,
            "encoder_macs": card.encoder_macs, "depth": card.depth}


def _throughput(model: nn.Module, opt: DistillOptions, device: str) -> float | None:
    if not opt.bench_seconds:
        return None
    from terrastill.bench.throughput import quick_throughput

    return quick_throughput(model, batch_size=opt.bench_batch_size, seconds=opt.bench_seconds,
                            device=device)


def distill(teacher_path: str | os.PathLike[str], chips_dir: str | os.PathLike[str],
            out_dir: str | os.PathLike[str],
            options: DistillOptions | dict[str, Any] | None = None,
            on_event: Callable[[str, dict[str, Any]], None] | None = None) -> DistillResult:
    """Distil ``teacher_path`` on ``chips_dir`` into ``out_dir/model.pt``.

    ``options.layers``: a depth, or ``"auto"`` — train every candidate depth for
    ``search_epochs``, keep the smallest whose validation metric is within ``tolerance`` of
    the teacher's (see :func:`terrastill.training.depth_search.choose_depth`), then train that
    depth for ``epochs``. ``on_event(kind, data)`` is told about progress (``teacher``,
    ``candidate``, ``chosen``, ``done``).
    """
    from terrastill import __version__
    from terrastill.atomic import write_text_atomic
    from terrastill.models.modelfile import ModelCard, fill_card_stats, save_model_file
    from terrastill.training import depth_search
    from terrastill.training.metrics import MONITOR
    from terrastill.training.plots import plot_confusion, plot_curves
    from terrastill.training.train import plain

    opt = options if isinstance(options, DistillOptions) else DistillOptions.from_dict(
        options or {})
    emit = on_event or (lambda kind, data: None)
    if not 0.0 <= opt.alpha <= 1.0:
        raise BadInputError(f"--alpha {opt.alpha}: must be in [0, 1]")
    if opt.temperature <= 0:
        raise BadInputError(f"--temperature {opt.temperature}: must be > 0")
    if opt.tolerance < 0:
        raise BadInputError(f"--tolerance {opt.tolerance}: must be >= 0")
    if opt.feature_loss not in FEATURE_LOSSES:
        raise BadInputError(f"--feature-loss {opt.feature_loss!r}: choose one of "
                            f"{FEATURE_LOSSES}")
    parse_feature_pairs(opt.feature_pairs)
    layers = str(opt.layers).strip().lower()
    if layers != "auto" and not opt.student:
        try:
            fixed = int(layers)
        except ValueError:
            raise BadInputError(f"--layers {opt.layers!r}: a number of blocks or 'auto'"
                                ) from None
    out = Path(out_dir)
    ctx = _load_context(teacher_path, chips_dir, opt)
    depth_t = int(ctx.teacher.encoder.depth)
    if isinstance((opt.head or {}).get("channels"), int):  # too narrow: say so before training
        from terrastill.training.head_sizing import resolve_head

        resolve_head(ctx.teacher, depth_t, {"channels": opt.head["channels"]},
                     len(ctx.class_names) if ctx.task != "regression" else 1)
    cnn_teacher = ctx.teacher.arch.get("family") == "cnn"
    if opt.student:
        if opt.feature_pairs:
            raise BadInputError("--feature-pairs: a --student of another architecture learns "
                                "from the teacher's logits only")
        if opt.head and opt.head.get("channels") not in (None, "auto"):
            raise BadInputError("--head-channels: applies to students cut from the teacher, "
                                "not to --student")
        student0 = architecture_student(ctx, opt.student)  # refuses a mismatch up front
        layers, fixed = "student", int(student0.depth)
        del student0
    elif cnn_teacher:
        raise BadInputError(f"{teacher_path}: a CNN teacher cannot be cut into encoder "
                            "blocks; choose a student architecture with --student")
    metric_name, mode = MONITOR[ctx.task]
    if layers not in ("auto", "student") and not 1 <= fixed <= depth_t:
        raise BadInputError(f"--layers {fixed}: the teacher has {depth_t} encoder blocks; "
                            f"choose 1..{depth_t}")
    cands = depth_search.candidate_depths(depth_t, opt.candidates) if layers == "auto" else []
    if opt.feature_pairs:  # validate against the smallest student we may train
        smallest = fixed if layers != "auto" else min(cands)
        resolve_feature_pairs(parse_feature_pairs(opt.feature_pairs), smallest, depth_t)
    out.mkdir(parents=True, exist_ok=True)

    teacher_results = _evaluate(ctx, ctx.teacher)
    teacher_metric = _metric_of(teacher_results, ctx.task)
    teacher_row = {"depth": depth_t, "role": "teacher", **_stats(ctx.teacher),
                   "img_s": _throughput(ctx.teacher, opt, ctx.device),
                   "metric": teacher_metric, "metric_name": metric_name}
    emit("teacher", teacher_row)

    search_rows: list[dict[str, Any]] | None = None
    evidence: dict[str, Any] | None = None
    if layers == "auto":
        from terrastill.training.train import evaluate_model

        evidence_ds, evidence = _search_evidence(ctx, opt, teacher_results)
        emit("evidence", evidence)
        if evidence_ds is not None:  # candidates and the teacher judged on the reference
            teacher_metric = evidence["teacher_metric"]
            teacher_row["metric"] = teacher_metric
        search_rows = []
        for d in cands:
            cdir = out / "search" / f"depth-{d}"
            done = cdir / "result.json"
            if done.is_file():  # resumable: a finished candidate is not trained again
                row = json.loads(done.read_text())
            else:
                model, summ = train_student(ctx, d, cdir, opt, opt.search_epochs)
                if evidence_ds is not None:
                    res = {"val": evaluate_model(model, evidence_ds, ctx.task, ctx.class_names,
                                                 device=ctx.device,
                                                 use_coords=ctx.use_coords)}
                    model.cpu()
                else:
                    res = _evaluate(ctx, model, ("val",))
                if opt.warm_start:  # the chosen candidate's final run continues from here
                    tmp = cdir / "weights.pt.tmp"
                    torch.save(model.state_dict(), tmp)
                    os.replace(tmp, cdir / "weights.pt")
                interval = (res.get("val") or {}).get("intervals", {}).get(metric_name)
                row = {"depth": d, "role": "candidate", **_stats(model),
                       "img_s": _throughput(model, opt, ctx.device),
                       "metric": _metric_of(res, ctx.task), "metric_name": metric_name,
                       "metric_interval": interval, "evidence": evidence["source"],
                       "train_seconds": summ["train_seconds"], "epochs": opt.search_epochs}
                write_text_atomic(done, json.dumps(plain(row), indent=2))
                if not opt.keep_search_checkpoints:
                    shutil.rmtree(cdir / "checkpoints", ignore_errors=True)
            search_rows.append(row)
            emit("candidate", row)
            if (not opt.search_all and teacher_metric is not None
                    and depth_search.within_tolerance(row["metric"], teacher_metric,
                                                      opt.tolerance, mode)):
                break  # ascending order: a deeper candidate can no longer be chosen
        choice = depth_search.choose_depth(
            [(r["depth"], r["metric"]) for r in search_rows], teacher_metric, opt.tolerance,
            mode)
        depth = choice.depth
        for r in search_rows:
            r["chosen"] = r["depth"] == depth
            r["within_tolerance"] = r["depth"] in choice.within
        emit("chosen", {"depth": depth, "within_tolerance": choice.within_tolerance,
                        "reason": choice.reason})
        if not choice.within_tolerance:
            log.warning("no candidate depth is within %.2f of the teacher's %s; using %d (%s)",
                        opt.tolerance, metric_name, depth, choice.reason)
    else:
        depth = fixed

    # the chosen candidate already has search_epochs of distillation: continue from its best
    # weights for the rest of the budget instead of starting again
    init = out / "search" / f"depth-{depth}" / "weights.pt"
    warm = (search_rows is not None and opt.warm_start and init.is_file()
            and opt.epochs > opt.search_epochs)
    final_epochs = opt.epochs - opt.search_epochs if warm else opt.epochs
    model, summ = train_student(ctx, depth, out, opt, final_epochs, init if warm else None)
    summ["warm_start"] = ({"from": str(init.parent.relative_to(out)),
                           "search_epochs": opt.search_epochs, "epochs_after": final_epochs}
                          if warm else None)
    results = _evaluate(ctx, model)
    student_stats = _stats(model)
    student_row = {"depth": depth, "role": "student", **student_stats,
                   "img_s": _throughput(model, opt, ctx.device),
                   "metric": _metric_of(results, ctx.task), "metric_name": metric_name,
                   "train_seconds": summ["train_seconds"], "epochs": opt.epochs}
    if search_rows is not None:
        table = [teacher_row, *search_rows, student_row]
        depth_search.write_search_report(table, out, title=f"{ctx.card.name}: student depth "
                                         f"search ({metric_name}, tolerance {opt.tolerance})",
                                         tolerance=opt.tolerance, mode=mode)

    strip = ("confusion",)
    t_metrics = plain({s: {k: v for k, v in r.items() if k not in strip}
                        for s, r in teacher_results.items()})
    s_metrics = plain({s: {k: v for k, v in r.items() if k not in strip}
                        for s, r in results.items()})
    settings = {"layers": str(opt.layers), "depth": depth, "student": opt.student,
                "alpha": opt.alpha,
                "temperature": opt.temperature, "tolerance": opt.tolerance,
                "feature_pairs": summ["feature_pairs"], "feature_loss": opt.feature_loss,
                "feature_weight": opt.feature_weight, "head": opt.head or None,
                "search_evidence": evidence, "warm_start": summ["warm_start"],
                "loss": opt.loss or ("mse" if ctx.task == "regression" else "ce")}
    teacher_info = {"path": str(ctx.teacher_path), "name": ctx.card.name, "depth": depth_t,
                    "params": teacher_row["params"], "macs": teacher_row["macs"],
                    "encoder_macs": teacher_row["encoder_macs"], "metrics": t_metrics}
    name = opt.name or (f"{ctx.card.name}-student-{Path(opt.student).stem}" if opt.student
                        else f"{ctx.card.name}-student-{depth}")
    card = ModelCard(
        name=name, task=ctx.task, arch=model.arch, input_spec=dict(ctx.card.input_spec),
        class_names=ctx.class_names, class_colors=list(ctx.card.class_colors or []),
        metrics=s_metrics, teacher=teacher_info,
        created_with={"terrastill": __version__, "command": opt.command or "terrastill distill",
                      "torch": str(torch.__version__)},
        training=plain({"distillation": settings, "options": dataclasses.asdict(opt),
                         "epochs_run": summ["epochs_run"], "best_epoch": summ["best_epoch"],
                         "monitor": summ["monitor"], "seconds": summ["train_seconds"],
                         "device": ctx.device, "precision": ctx.precision,
                         "chips_dir": str(ctx.chips_dir),
                         "search": search_rows}),
    )
    fill_card_stats(card, model)
    model_path = save_model_file(out / "model.pt", model, card)
    summary = plain({
        "task": ctx.task, "name": name, "depth": depth, "teacher_depth": depth_t,
        "metric": metric_name, "distillation": settings,
        "teacher": {**teacher_row, "metrics": t_metrics},
        "student": {**student_row, "metrics": s_metrics},
        "ratios": {
            "encoder_macs": teacher_row["encoder_macs"] / max(student_stats["encoder_macs"], 1),
            "macs": teacher_row["macs"] / max(student_stats["macs"], 1),
            "params": teacher_row["params"] / max(student_stats["params"], 1),
            "img_s": (student_row["img_s"] / teacher_row["img_s"]
                      if student_row["img_s"] and teacher_row["img_s"] else None)},
        "search": search_rows, "history": summ["history"], "best_epoch": summ["best_epoch"],
        "train_seconds": summ["train_seconds"],
    })
    write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2))
    if summ["history"]:
        plot_curves(summ["history"], out / "curves.png",
                    metric=metric_name if len(ctx.val_ds) else "loss")
    conf = (results.get("test") or results.get("val") or {}).get("confusion")
    if conf is not None and ctx.task != "regression":
        plot_confusion(conf, ctx.class_names, out / "confusion.png", title="student confusion")
    emit("done", summary)
    return DistillResult(model_path=model_path, depth=depth, teacher_metrics=t_metrics,
                         student_metrics=s_metrics, search=search_rows, summary=summary)
