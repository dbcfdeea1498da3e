"""``terrastill train`` and ``terrastill evaluate``: fine-tune a teacher, score a model file."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


def _command_line() -> str:
    return shlex.join(["terrastill", *sys.argv[1:]]) if sys.argv else ""


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _print_metrics(title: str, m: dict) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    ci = m.get("intervals") or {}
    if ci:
        table.add_column(f"{100 * ci['level']:.0f} % interval ({ci['unit']}s resampled)",
                         justify="right")

    def row(label: str, value: object, interval: object = None) -> None:
        extra = [_interval(interval)] if ci else []
        table.add_row(label, _fmt(value), *extra)

    keys = ("miou", "accuracy", "macro_f1", "roc_auc", "rmse", "mae", "r2", "n_pixels", "n_chips")
    for key in keys:
        if key in m:
            row("labelled pixels" if key == "n_pixels" else key, m[key], ci.get(key))
    base = m.get("baseline_majority")
    if base:
        row("majority-class mIoU", base["miou"])
    for name, v in (m.get("iou_per_class") or {}).items():
        row(f"IoU {name}", v, (ci.get("iou_per_class") or {}).get(name))
    console.print(table)


def _interval(v: object) -> str:
    if not isinstance(v, list | tuple) or len(v) != 2:
        return ""
    return f"{v[0]:.4f} – {v[1]:.4f}"


@handle_errors
def train(
    chips_dir: Path = typer.Argument(..., help="Chip dataset folder (from `terrastill chips`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (model.pt, metrics...)."),
    model: str = typer.Option("tiny", "--model", "-m",
                              help="Registry model: tiny, small, prithvi-eo-1.0-100m, "
                                   "prithvi-eo-2.0-300m[-tl], prithvi-eo-2.0-600m[-tl]; CNN "
                                   "baselines from scratch: unet-r18, deeplabv3-r50."),
    weights: str | None = typer.Option(
        None, "--weights", help="Pretrained encoder: local .pt/.safetensors, hub repo id "
                                "(org/name[:file]) or a registry name with hub weights."),
    epochs: int = typer.Option(15, "--epochs", min=1, help="Maximum epochs."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW, warm-up + cosine)."),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    layer_decay: float = typer.Option(
        1.0, "--layer-decay", help="Layer-wise lr decay (<1: earlier blocks learn slower)."),
    encoder_lr_scale: float = typer.Option(
        1.0, "--encoder-lr-scale", min=0.0,
        help="The encoder's learning rate × this (e.g. 0.1 when fine-tuning from --weights: "
             "the fresh head learns at --lr, the pretrained encoder slower)."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder",
                                        help="Train the head only (decoder probing)."),
    loss: str | None = typer.Option(None, "--loss",
                                    help="ce, dice, focal, ce+dice (classes); mse, huber."),
    class_weights: str | None = typer.Option(
        None, "--class-weights", help="'auto' (inverse sqrt frequency) or comma-separated."),
    patience: int = typer.Option(5, "--patience", help="Early-stopping patience (epochs)."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume",
                                help="Continue from OUT/checkpoints/last.ckpt."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision",
                                  help="auto (CPU fp32, GPU bf16/fp16 AMP), 32, bf16, 16."),
    no_augment: bool = typer.Option(False, "--no-augment", help="No flips/rot90."),
    name: str | None = typer.Option(None, "--name", help="Model name in the card."),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader worker processes."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Fine-tune a Prithvi-compatible model (or train a CNN baseline) on a chip dataset.

    Example:

        terrastill train demo-out/chips/flood --model tiny --epochs 15
        --out demo-out/models/teacher2
    """
    setup_logging(verbose)
    from terrastill.training.train import TrainOptions, fit

    opts = TrainOptions(
        model=model, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        layer_decay=layer_decay, encoder_lr_scale=encoder_lr_scale,
        freeze_encoder=freeze_encoder, weights=weights, loss=loss,
        class_weights=class_weights, seed=seed, patience=patience, resume=resume,
        device=device, precision=precision, num_workers=num_workers, augment=not no_augment,
        progress=sys.stderr.isatty(), name=name, command=_command_line(),
    )
    path = fit(chips_dir, out, opts)
    metrics = json.loads((out / "metrics.json").read_text())
    split = "test" if "test" in metrics else "val"
    if split in metrics:
        _print_metrics(f"{metrics['name']}: {split} split (best epoch {metrics['best_epoch']})",
                       metrics[split])
    console.print(f"[green]model[/] {path}  ({metrics['params']:,} params, "
                  f"{metrics['macs'] / 1e6:.1f} M MACs/chip, {metrics['train_seconds']:.0f} s)")


@handle_errors
def evaluate(
    model: Path = typer.Argument(..., help="Model file (model.pt)."),
    chips_dir: Path = typer.Argument(..., help="Chip dataset folder."),
    split: str = typer.Option("test", "--split", help="train, val, test or all."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="metrics JSON to write (default: metrics-SPLIT.json beside "
                                  "the model)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    reference: list[Path] = typer.Option(
        [], "--reference",
        help="Score against this dense reference instead of the chips' labels: a raster on "
             "the chips' grid (repeat once per UTM zone) or a demo world (world.json or its "
             "folder: the truth of the task with the dataset's classes)."),
    resamples: int = typer.Option(1000, "--resamples", min=0,
                                  help="Bootstrap resamples of the chips for the 95 % "
                                       "intervals (0: none)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Score a model file on a chip dataset split (refuses a mismatched input spec). Every
    figure has a 95 % bootstrap interval over chips, and the labelled-pixel count says how
    much evidence there is.

    Example:

        terrastill evaluate demo-out/models/teacher/model.pt demo-out/chips/flood --split test

        terrastill evaluate demo-out/models/student/model.pt demo-out/chips/flood --split test
        --reference demo-out/world
    """
    setup_logging(verbose)
    from terrastill.training.train import evaluate as run_evaluate

    suffix = "-reference" if reference else ""
    target = out or model.parent / f"metrics-{split}{suffix}.json"
    m = run_evaluate(model, chips_dir, split=split, batch_size=batch_size, device=device,
                     out=target, reference=reference, resamples=resamples)
    against = " against the reference" if reference else ""
    _print_metrics(f"{m['model_name']} on {chips_dir} ({split}){against}", m)
    console.print(f"[green]metrics[/] {target}")
