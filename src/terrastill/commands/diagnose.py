"""``terrastill diagnose``: effective receptive field and distance-stratified recall of a
segmentation model on a chip folder."""

from __future__ import annotations

from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


@handle_errors
def diagnose(
    model: Path = typer.Argument(..., help="Segmentation model file (model.pt)."),
    chips: Path = typer.Argument(..., help="Chip dataset folder (from `terrastill chips`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (JSON, CSV, PNG)."),
    chips_max: int = typer.Option(200, "--chips-max", min=1,
                                  help="Chips to use (a seeded sample when there are more)."),
    pixels_per_chip: int = typer.Option(4, "--pixels-per-chip", min=1,
                                        help="Output pixels per chip for the gradients."),
    split: str = typer.Option("all", "--split", help="train, val, test or all."),
    reference: list[str] | None = typer.Option(
        None, "--reference", help="Dense labels: reference rasters (one per UTM zone) or a "
                                  "demo world (its truth for the model's classes)."),
    occlude: int = typer.Option(0, "--occlude", min=0,
                                help="Also mask a random square of this many pixels at the "
                                     "target step of each chip (synthetic cloud)."),
    ambiguous_threshold: float = typer.Option(
        0.5, "--ambiguous-threshold",
        help="A visible labelled pixel is ambiguous when a per-pixel logistic regression on its "
             "own bands (cross-fitted by chip) gives its class less than this probability."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda."),
    seed: int = typer.Option(0, "--seed", min=0),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Does the model use long-range context? (1) Effective receptive field: gradients of each
    class's pre-softmax logit at sampled output pixels w.r.t. the input; the diameters holding
    50 / 90 / 99 % of the gradient mass, per class. (2) Distance-stratified recall: labelled
    pixels whose input is masked at the target date, by distance to the nearest visible pixel
    of their class; recall per distance bin and distance-weighted recall; the same for visible
    pixels whose own spectrum cannot tell their class (ambiguous), by distance to the nearest
    visible unambiguous pixel of their class. Field labels are
    usually drawn where the sky was clear: --reference gives dense labels and --occlude
    hides a square of each chip on purpose.

    Example:

        terrastill diagnose demo-out/models/teacher/model.pt demo-out/chips/flood
        --out demo-out/diagnose/teacher --reference demo-out/world
    """
    setup_logging(verbose)
    from terrastill.diagnostics.run import DiagnoseRequest
    from terrastill.diagnostics.run import diagnose as run

    s = run(DiagnoseRequest(model=model, chips=chips, out=out, chips_max=chips_max,
                            pixels_per_chip=pixels_per_chip, split=split,
                            batch_size=batch_size, device=device, seed=seed,
                            reference=tuple(reference or ()), occlude=occlude,
                            ambiguous_threshold=ambiguous_threshold))
    parts = [f"{c['class']} d50 {c['d50_m']:.0f} m / d90 {c['d90_m']:.0f} m"
             for c in s["erf"]["classes"]]
    rec = [f"{c['class']} {c['recall']:.2f} (DWR {c['distance_weighted_recall']:.2f}, "
           f"{c['hidden_pixels']} px)" for c in s["recall"]["classes"] if c["hidden_pixels"]]
    amb = [f"{c['class']} {c['recall']:.2f} ({c['hidden_pixels']} px)"
           for c in s["recall_ambiguous"]["classes"] if c["hidden_pixels"]]
    console.print(f"[green]diagnose[/] {out}: {s['chips_used']} chips; ERF {'; '.join(parts)}; "
                  f"hidden-pixel recall {'; '.join(rec) or 'no hidden labelled pixels'}; "
                  f"ambiguous-pixel recall {'; '.join(amb) or 'no ambiguous pixels'} "
                  f"({s['seconds']:.1f}s)", highlight=False)
