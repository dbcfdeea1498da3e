"""Lightning modules: one per task on a shared base (TorchGeo ``trainers/`` style)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from terrastill.models.registry import build_model
from terrastill.training.losses import build_loss
from terrastill.training.metrics import MONITOR, make_metrics


def layer_id(name: str, depth: int) -> int:
    """Layer index for layer-wise lr decay: embeddings 0, block i -> i+1, rest depth+1."""
    if name.startswith("encoder."):
        rest = name[len("encoder."):]
        if rest.startswith(("patch_embed", "cls_token", "pos_embed", "temporal_embed_enc",
                            "location_embed_enc")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float,
                 encoder_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases/norms/tokens; lr × layer_decay^(depth+1-layer), and
    every ``encoder.*`` parameter's lr further × ``encoder_lr_scale`` (a pretrained encoder
    fine-tuned more gently than its fresh head)."""
    depth = model.encoder.depth
    groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = p.ndim <= 1 or name.endswith(("cls_token", "scale"))
        lid = layer_id(name, depth)
        scale = layer_decay ** (depth + 1 - lid) if layer_decay and layer_decay < 1 else 1.0
        # a separate group only when scaled: the default grouping (and so the optimiser state
        # of a checkpoint to --resume) stays what it was
        is_enc = name.startswith("encoder.") and encoder_lr_scale != 1.0
        if is_enc:
            scale *= encoder_lr_scale
        key = (lid, no_wd, is_enc)
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * scale, "weight_decay": 0.0 if no_wd
                           else weight_decay, "lr_scale": scale}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


SELECT_LOSS_WEIGHT = 1e-3


class TaskModule(L.LightningModule):
    """Shared base: model from ``arch``, loss, AdamW + warm-up/cosine, per-epoch metrics."""

    task = "segmentation"

    def __init__(
        self,
        arch: dict[str, Any],
        class_names: Sequence[str] = (),
        loss: str | None = None,
        class_weights: Sequence[float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        layer_decay: float = 1.0,
        freeze_encoder: bool = False,
        warmup_frac: float = 0.05,
        min_lr_frac: float = 0.01,
        use_coords: bool = False,
        encoder_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(arch)
        self.class_names = list(class_names)
        num_classes = int(self.model.arch["head"].get("num_classes", 1))
        self.loss_fn = build_loss(self.task, loss, class_weights)
        self.val_metrics = make_metrics(self.task, num_classes, self.class_names)
        self.metric_name, self.metric_mode = MONITOR[self.task]
        self.last_val: dict[str, Any] = {}
        self._val_loss_sum, self._val_loss_n = 0.0, 0
        if freeze_encoder:
            self.model.encoder.requires_grad_(False)

    # --- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, temporal_coords, location_coords)

    def _run(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.hparams.use_coords:
            return self(batch["image"], batch.get("temporal_coords"), batch.get("location_coords"))
        return self(batch["image"])

    def _target(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch["label"]

    # --- steps -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self._run(batch)
        loss = self.loss_fn(out, self._target(batch))
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._run(batch)
        target = self._target(batch)
        loss = self.loss_fn(out, target)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=False,
                 batch_size=batch["image"].shape[0])
        self.val_metrics.to(out.device)
        self.val_metrics.update(out, target)
        n = batch["image"].shape[0]
        self._val_loss_sum += float(loss.detach()) * n
        self._val_loss_n += n

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum, self._val_loss_n = 0.0, 0

    def on_validation_epoch_end(self) -> None:
        m = self.val_metrics.compute()
        self.val_metrics.reset()
        self.last_val = m
        for key, value in m.items():
            if isinstance(value, float):
                v = value if not math.isnan(value) else (
                    -1.0 if self.metric_mode == "max" else float("inf"))
                self.log(f"val_{key}", v, prog_bar=key == self.metric_name)
        # model selection: the task metric, ties (a saturated mIoU on a small validation
        # split) broken by the validation loss
        main = m.get(self.metric_name, float("nan"))
        loss = self._val_loss_sum / max(self._val_loss_n, 1)
        loss = loss if math.isfinite(loss) else 100.0
        sign = 1.0 if self.metric_mode == "max" else -1.0
        main = main if not math.isnan(main) else -1e6
        self.log("val_select", sign * main - SELECT_LOSS_WEIGHT * min(loss, 100.0))

    # --- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups(self.model, hp.lr, hp.weight_decay, hp.layer_decay,
                              hp.get("encoder_lr_scale", 1.0))
        opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(1, int(total * hp.warmup_frac))
        floor = hp.min_lr_frac

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            prog = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SegmentationModule(TaskModule):
    task = "segmentation"


class RegressionModule(TaskModule):
    task = "regression"


class ClassificationModule(TaskModule):
    task = "classification"


MODULES = {"segmentation": SegmentationModule, "regression": RegressionModule,
           "classification": ClassificationModule}
