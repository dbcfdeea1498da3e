"""``terrastill distill``: a shallow student from a fine-tuned teacher (fixed or auto depth)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


def _command_line() -> str:
    return shlex.join(["terrastill", *sys.argv[1:]]) if sys.argv else ""


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "—"
    return f"{float(v):.{nd}f}"


def _print_comparison(summary: dict[str, Any]) -> None:
    from rich.table import Table

    t, s = summary["teacher"], summary["student"]
    metric = summary["metric"]
    split = "test" if "test" in (s.get("metrics") or {}) else "val"
    table = Table(title=f"teacher vs student ({split} split)", header_style="bold")
    for col in ("", "depth", "params", "enc. MMACs", "MMACs", "img/s", f"val {metric}",
                f"{split} {metric}"):
        table.add_column(col, justify="right" if col else "left")
    for label, r in (("teacher", t), ("student", s)):
        m = (r.get("metrics") or {}).get(split, {}).get(metric)
        table.add_row(label, str(r["depth"]), f"{int(r['params']):,}",
                      f"{r['encoder_macs'] / 1e6:.1f}", f"{r['macs'] / 1e6:.1f}",
                      _fmt(r.get("img_s"), 1), _fmt(r.get("metric")), _fmt(m))
    ratios = summary.get("ratios") or {}
    tm = (t.get("metrics") or {}).get(split, {}).get(metric)
    sm = (s.get("metrics") or {}).get(split, {}).get(metric)
    diff = f"{(sm - tm) * 100:+.2f} pp" if tm is not None and sm is not None and \
        metric != "rmse" else "—"
    table.add_row("ratio / Δ", "", f"{ratios.get('params', 0):.1f}×",
                  f"{ratios.get('encoder_macs', 0):.1f}×", f"{ratios.get('macs', 0):.1f}×",
                  f"{ratios['img_s']:.1f}×" if ratios.get("img_s") else "—", "", diff)
    console.print(table)


@handle_errors
def distill(
    teacher: Path = typer.Argument(..., help="Teacher model file (model.pt from train)."),
    chips_dir: Path = typer.Argument(..., help="Chip dataset folder the teacher was made for."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (model.pt, metrics.json, "
                                                      "search.csv/json/png)."),
    layers: str = typer.Option("auto", "--layers", "-l",
                               help="Student encoder blocks: a number, or 'auto' (search)."),
    tolerance: float = typer.Option(
        1.0, "--tolerance", help="auto: largest allowed drop of the validation metric below "
                                 "the teacher's (percentage points of mIoU; % of RMSE)."),
    candidates: str | None = typer.Option(
        None, "--candidates", help="auto: depths to try, e.g. 1,2,3 (default 1..depth-1)."),
    alpha: float = typer.Option(0.5, "--alpha",
                                help="Weight of the ground-truth loss (1 − α: teacher term)."),
    temperature: float = typer.Option(2.0, "--temperature", "-T",
                                      help="Softmax temperature of the KL term."),
    feature_pairs: str | None = typer.Option(
        None, "--feature-pairs", help="Feature matching, student:teacher blocks (0-based, "
                                      "negative from the end), e.g. '0:2,-1:-1'."),
    feature_loss: str = typer.Option("mse", "--feature-loss", help="mse or cosine."),
    feature_weight: float = typer.Option(1.0, "--feature-weight"),
    student: str | None = typer.Option(
        None, "--student", help="Another student architecture, trained by logit distillation: "
                                "a registry model (unet-r18, deeplabv3-r50, tiny…) from "
                                "scratch, or a model file to start from (default: the "
                                "teacher's first --layers blocks)."),
    head_channels: str = typer.Option(
        "auto", "--head-channels",
        help="The student head's width: auto scales it with the student's depth (its MACs "
             "within the student's share of the teacher's head cost; fresh weights where "
             "shapes differ, so give it several epochs); a number sets it; teacher keeps the "
             "teacher's head, weights included."),
    reference: list[Path] = typer.Option(
        [], "--reference",
        help="auto: choose the depth on this dense reference over the val chips (rasters on "
             "the chips' grid, one per UTM zone, or a demo world) instead of the val labels, "
             "which may be too few to resolve the tolerance."),
    epochs: int = typer.Option(
        15, "--epochs", min=1,
        help="Epochs of the final student (auto: counting the chosen candidate's search "
             "epochs, which it continues from; see --no-warm-start)."),
    no_warm_start: bool = typer.Option(
        False, "--no-warm-start", help="auto: train the final student afresh for --epochs "
                                       "instead of continuing the chosen candidate."),
    search_epochs: int = typer.Option(5, "--search-epochs", min=1,
                                      help="auto: epochs per candidate depth."),
    search_all: bool = typer.Option(
        False, "--search-all", help="auto: train every candidate (default: stop at the first "
                                    "depth within tolerance; same choice, less compute)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    loss: str | None = typer.Option(None, "--loss", help="Task loss: ce, dice, focal, ce+dice; "
                                                         "mse, huber."),
    patience: int = typer.Option(5, "--patience"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto, 32, bf16, 16."),
    no_augment: bool = typer.Option(False, "--no-augment"),
    bench_seconds: float = typer.Option(1.0, "--bench-seconds",
                                        help="img/s measurement per depth (0: skip)."),
    name: str | None = typer.Option(None, "--name", help="Student name in the card."),
    num_workers: int = typer.Option(0, "--num-workers"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Distil a teacher into a student made of its first N encoder blocks (or --student).

    Loss: α·task + (1 − α)·T²·KL(teacher ‖ student) over valid pixels (regression: MSE to
    the teacher). With --layers auto every candidate depth is trained briefly and the
    smallest within --tolerance of the teacher is trained fully. --student unet-r18 distils
    the teacher's logits into another architecture (same classes and input channels).

    Example:

        terrastill distill demo-out/models/teacher/model.pt demo-out/chips/flood
        --layers auto --tolerance 1.0 --out demo-out/models/student2
    """
    setup_logging(verbose)
    from terrastill.errors import BadInputError
    from terrastill.training.depth_search import rich_table
    from terrastill.training.distill import DistillOptions
    from terrastill.training.distill import distill as run_distill
    from terrastill.training.head_sizing import parse_head_channels

    if layers.strip().lower() != "auto" and not student:
        try:
            int(layers)
        except ValueError:
            raise BadInputError(f"--layers {layers!r}: a number of blocks or 'auto'") from None
    opts = DistillOptions(
        layers=layers, tolerance=tolerance, candidates=candidates, alpha=alpha,
        temperature=temperature, feature_pairs=feature_pairs, feature_loss=feature_loss,
        feature_weight=feature_weight,
        head=({"channels": parse_head_channels(head_channels)}
              if parse_head_channels(head_channels) is not None else {}),
        epochs=epochs,
        search_epochs=search_epochs, search_all=search_all, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay,
        loss=loss, seed=seed, patience=patience, device=device, precision=precision,
        num_workers=num_workers, augment=not no_augment, progress=sys.stderr.isatty(),
        bench_seconds=bench_seconds, name=name, command=_command_line(), student=student,
        reference=[str(r) for r in reference] or None, warm_start=not no_warm_start)

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "teacher":
            console.print(f"teacher: {data['depth']} blocks, val {data['metric_name']} "
                          f"{_fmt(data['metric'])}")
        elif kind == "evidence":
            if data.get("source") != "val labels":
                console.print(f"depth search judged on the {data['source']} (teacher "
                              f"{_fmt(data.get('teacher_metric'))})")
            if data.get("note"):
                console.print(f"[yellow]warning:[/] {data['note']}")
        elif kind == "candidate":
            ci = data.get("metric_interval")
            extra = f" (95 % {ci[0]:.4f}–{ci[1]:.4f})" if ci else ""
            console.print(f"  depth {data['depth']}: val {data['metric_name']} "
                          f"{_fmt(data['metric'])}{extra}")
        elif kind == "chosen":
            mark = "" if data["within_tolerance"] else " [yellow](none within tolerance)[/]"
            console.print(f"chosen depth [bold]{data['depth']}[/]{mark}; training it fully")

    result = run_distill(teacher, chips_dir, out, opts, on_event=on_event)
    if result.search is not None:
        rows = [dict(result.summary["teacher"], role="teacher"), *result.search,
                dict(result.summary["student"], role="student")]
        console.print(rich_table(rows, title="student depth search"))
        console.print(f"search table: {out / 'search.csv'}, {out / 'search.json'}, "
                      f"{out / 'search.png'}")
    _print_comparison(result.summary)
    console.print(f"[green]student[/] {result.model_path} ({result.depth} blocks)")
