"""Masked-autoencoder pretraining of the encoder on sampled windows (Lightning, resumable).

:func:`pretrain` writes into ``out_dir``: ``model.pt`` (an encoder-only ``embedding`` model
file with the windows' input spec and normalisation), ``mae.pt`` (encoder + decoder in the
official Prithvi layout with a small ``config``; ``terrastill train --weights`` loads it),
``losses.csv``, ``loss.png`` and ``checkpoints/last.ckpt`` (for ``--resume``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from terrastill import __version__
from terrastill.atomic import atomic_path, write_text_atomic
from terrastill.embeddings.mae import MaskedAutoencoder
from terrastill.embeddings.sampling import Windows
from terrastill.errors import BadInputError
from terrastill.progress import progress_bar
from terrastill.training.augment import FlipRotate
from terrastill.training.train import plain, quiet_lightning, resolve_device

MAE_FORMAT = "terrastill-mae"


@dataclass
class PretrainOptions:
    """Everything :func:`pretrain` can be told (the CLI flags map 1:1)."""

    model: str = "tiny"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    augment: bool = True  # random flips and 90° rotations of each window, every epoch
    seed: int = 0
    workers: int = 0
    resume: bool = False
    weights: str | None = None
    device: str = "auto"
    name: str | None = None
    command: str | None = None


class WindowDataset(Dataset):
    """Normalised windows (C, T, H, W) float32 with NaN kept (the MAE masks it out), flipped
    and rotated at random when ``augment`` (overhead images have no up)."""

    def __init__(self, array: np.ndarray, mean: list[float], std: list[float],
                 augment: bool = False) -> None:
        m = np.asarray(mean, np.float32).reshape(1, 1, -1, 1, 1)
        s = np.asarray(std, np.float32).reshape(1, 1, -1, 1, 1)
        x = (array.astype(np.float32) - m) / s
        self.x = torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2)))
        self.augment = FlipRotate() if augment else None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.augment is None:
            return self.x[i]
        return self.augment({"image": self.x[i]})["image"]


class MAEModule(L.LightningModule):
    """The MAE objective: masked-patch MSE, AdamW with warm-up and cosine decay."""

    def __init__(self, encoder_cfg: dict[str, Any], decoder_cfg: dict[str, int] | None = None,
                 norm_pix_loss: bool = False, mask_ratio: float = 0.75, lr: float = 1e-3,
                 weight_decay: float = 0.05, warmup_frac: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mae = MaskedAutoencoder(encoder_cfg, decoder_cfg, norm_pix_loss)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self.mae(batch, self.hparams.mask_ratio)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        from terrastill.training.module import param_groups

        hp = self.hparams
        opt = torch.optim.AdamW(param_groups(self.mae, hp.lr, hp.weight_decay, 1.0), lr=hp.lr,
                                betas=(0.9, 0.95))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(1, int(total * hp.warmup_frac))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            prog = min(1.0, (step - warm) / max(1, total - warm))
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * prog))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class EpochBars(Callback):
    """A rich bar per epoch (batches, with the running loss), Lightning's own bar off."""

    def __init__(self, bar: Any, epochs: int) -> None:
        self.bar, self.epochs, self.task = bar, epochs, None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.task = self.bar.add_task(f"epoch {trainer.current_epoch + 1}/{self.epochs}",
                                      total=int(trainer.num_training_batches))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.bar.update(self.task, advance=1, description=(
            f"epoch {trainer.current_epoch + 1}/{self.epochs} loss {float(loss):.4f}"))


def check_model_input(model: str, bands: list[str], num_steps: int, chip_size: int,
                      what: str) -> dict[str, Any]:
    """The embedding ``arch`` for these windows; a patch-size misfit names ``what``."""
    from terrastill.models.registry import get_spec, make_arch

    spec = get_spec(model)
    patch = spec["encoder"]["patch_size"][1]
    if chip_size % patch:
        raise BadInputError(f"{what}: {chip_size} px windows are not a multiple of model "
                            f"{model!r}'s patch size {patch}")
    return make_arch(model, "embedding", bands=bands, num_steps=num_steps, chip_size=chip_size)


def pretrain(windows: Windows, out_dir: str | Path, options: PretrainOptions | None = None
             ) -> dict[str, Any]:
    """Train the MAE on ``windows``; write the outputs; return a summary."""
    from terrastill.models.modelfile import ModelCard, fill_card_stats, save_model_file
    from terrastill.models.registry import build_model
    from terrastill.models.weights import load_pretrained
    from terrastill.training.runner import EpochHistory

    opt = options or PretrainOptions()
    if not 0.0 < opt.mask_ratio < 1.0:
        raise BadInputError(f"--mask-ratio {opt.mask_ratio}: expected a fraction in (0, 1)")
    out = Path(out_dir)
    spec = dict(windows.spec)
    arch = check_model_input(opt.model, list(spec["bands"]), int(spec["num_steps"]),
                             int(spec["chip_size"]), "windows")
    quiet_lightning()
    device = resolve_device(opt.device)
    mean, std = windows.stats()
    ds = WindowDataset(windows.array, mean, std, augment=opt.augment)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resume_from = last if opt.resume and last.is_file() else None
    if resume_from is None and ckpt_dir.exists():
        for p in ckpt_dir.glob("*.ckpt"):
            p.unlink()
    L.seed_everything(opt.seed, workers=True, verbose=False)
    module = MAEModule(arch["encoder"], None, opt.norm_pix_loss, opt.mask_ratio, opt.lr,
                       opt.weight_decay)
    load_info = None
    if opt.weights and resume_from is None:
        module.mae.arch = arch  # bands by name, as for a fine-tuned model
        load_info = load_pretrained(module.mae, opt.weights).to_dict()
    bs = min(opt.batch_size, len(ds))
    loader = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=opt.workers,
                        generator=torch.Generator().manual_seed(opt.seed),
                        drop_last=len(ds) % bs == 1, persistent_workers=opt.workers > 0)
    history = EpochHistory()
    t0 = time.perf_counter()
    with progress_bar("batches") as bar:
        trainer = L.Trainer(
            max_epochs=int(opt.epochs), accelerator="gpu" if device.startswith("cuda") else "cpu",
            devices=1, deterministic=device == "cpu" or "warn", logger=False,
            callbacks=[history, EpochBars(bar, opt.epochs),
                       ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None,
                                       save_top_k=1, every_n_epochs=1,
                                       enable_version_counter=False)],
            enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
            default_root_dir=str(out), log_every_n_steps=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            trainer.fit(module, loader, ckpt_path=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t0
    mae = module.mae.cpu().eval()
    rows = history.rows
    curve = [round(float(r.get("train_loss", float("nan"))), 6) for r in rows]

    input_spec = {**spec, "mean": mean, "std": std}
    training = plain({
        "objective": "mae", "mask_ratio": opt.mask_ratio, "norm_pix_loss": opt.norm_pix_loss,
        "decoder": mae.config["decoder"], "samples": len(windows.ids),
        "windows": windows.summary(), "epochs": len(rows), "loss_curve": curve,
        "seconds": round(seconds, 2), "resumed": resume_from is not None, "device": device,
        "pretrained": load_info, "options": dataclasses.asdict(opt)})
    enc_model = build_model(arch)
    enc_model.encoder.load_state_dict(mae.encoder.state_dict())
    enc_model.eval()
    card = ModelCard(name=opt.name or f"{opt.model}-mae", task="embedding", arch=enc_model.arch,
                     input_spec=input_spec, training=training,
                     created_with={"terrastill": __version__, "torch": str(torch.__version__),
                                   "command": opt.command or "terrastill pretrain"})
    fill_card_stats(card, enc_model)
    write_mae(out / "mae.pt", mae, arch, input_spec, training)
    _write_losses(out, rows)
    model_path = save_model_file(out / "model.pt", enc_model, card)
    return {"model": model_path, "mae": out / "mae.pt", "samples": len(windows.ids),
            "epochs": len(rows), "loss_curve": curve, "seconds": round(seconds, 2),
            "windows": windows.summary(), "params": card.encoder_params}


def write_mae(path: Path, mae: MaskedAutoencoder, arch: dict[str, Any],
              input_spec: dict[str, Any], training: dict[str, Any]) -> Path:
    """The full MAE state dict (official key layout) and a small config, atomically."""
    config = {"encoder": mae.config["encoder"], "decoder": mae.config["decoder"],
              "norm_pix_loss": mae.config["norm_pix_loss"], "bands": list(arch["bands"]),
              "name": arch["name"], "input_spec": input_spec,
              "mask_ratio": training["mask_ratio"], "epochs": training["epochs"]}
    payload = {"format": MAE_FORMAT, "version": 1, "config": plain(config),
               "state_dict": {k: v.detach().cpu().clone() for k, v in mae.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _write_losses(out: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "train_loss", "elapsed_s"])
    for r in rows:
        w.writerow([r["epoch"], r.get("train_loss", ""), r.get("elapsed_s", "")])
    write_text_atomic(out / "losses.csv", buf.getvalue())
    from terrastill.training.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["epoch"] for r in rows], [r.get("train_loss", np.nan) for r in rows], "-o", ms=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked-patch MSE")
    ax.set_title("MAE pretraining loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out / "loss.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
