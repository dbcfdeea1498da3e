"""One Lightning training loop for teachers and students: loaders, checkpoints, early stop."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset


class EpochHistory(Callback):
    """Per-epoch train/val metrics and elapsed time (kept in checkpoints for --resume)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1}
        for key, v in trainer.callback_metrics.items():
            if key.startswith(("train_", "val_")):
                row[key] = float(v)
        row["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        self.rows.append(row)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state.get("rows", []))


@dataclass
class RunResult:
    """What a training run left: its history, the best epoch (loaded) and the time taken."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    seconds: float = 0.0
    monitor: str = "val_select"


def run_training(module: L.LightningModule, train_ds: Dataset, val_ds: Dataset, *,
                 collate: Any, epochs: int, batch_size: int, seed: int, patience: int,
                 device: str, precision: str, ckpt_dir: Path, progress: bool,
                 num_workers: int = 0, resume_from: Path | None = None,
                 keep_last: bool = True) -> RunResult:
    """Fit ``module`` and load its best epoch back into it.

    The best epoch follows ``val_select`` (the task metric with ties broken by validation
    loss) or the training loss when there is no validation split; training stops early after
    ``patience`` epochs without improvement. ``keep_last`` also writes ``last.ckpt`` every
    epoch so a run can ``resume_from`` it (Lightning's ``save_last`` only refreshes it when
    the monitored checkpoint improves).
    """
    has_val = len(val_ds) > 0  # type: ignore[arg-type]
    monitor = "val_select" if has_val else "train_loss"
    mode = "max" if has_val else "min"
    gen = torch.Generator().manual_seed(seed)
    n_train = len(train_ds)  # type: ignore[arg-type]
    bs = min(batch_size, n_train)
    train_loader = DataLoader(train_ds, batch_size=bs, shuffle=True, generator=gen,
                              num_workers=num_workers, collate_fn=collate,
                              drop_last=n_train % bs == 1, persistent_workers=num_workers > 0)
    val_loader = DataLoader(val_ds, batch_size=max(bs, 32), shuffle=False,
                            num_workers=num_workers, collate_fn=collate)
    history = EpochHistory()
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                              save_top_k=1, enable_version_counter=False,
                              save_weights_only=not keep_last)
    callbacks: list[Any] = [history, best_cb,
                            EarlyStopping(monitor=monitor, mode=mode, patience=patience)]
    if keep_last:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None,
                                         save_top_k=1, every_n_epochs=1,
                                         enable_version_counter=False))
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    trainer = L.Trainer(
        max_epochs=int(epochs), accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1, precision=precision,
        deterministic=True if device == "cpu" else "warn", logger=False,
        callbacks=callbacks, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, limit_val_batches=1.0 if has_val else 0,
        default_root_dir=str(ckpt_dir.parent), log_every_n_steps=1,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        trainer.fit(module, train_loader, val_loader if has_val else None,
                    ckpt_path=str(resume_from) if resume_from else None)
    result = RunResult(history=history.rows, seconds=time.perf_counter() - t0, monitor=monitor)
    best = best_cb.best_model_path
    if best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        result.best_epoch = int(state.get("epoch", -1)) + 1
    return result
