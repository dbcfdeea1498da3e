"""``terrastill demo``: the whole pipeline on the built-in offline world, end to end."""

from __future__ import annotations

from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


@handle_errors
def demo(
    out: Path = typer.Argument(Path("demo-out"), help="Folder for every stage's output."),
    task: str = typer.Option("flood", help="World task: flood or landcover."),
    teacher: str = typer.Option("tiny", help="Registry model for the teacher."),
    epochs: int = typer.Option(15, help="Teacher epochs."),
    layers: str = typer.Option("auto", "--layers", help="Student depth: N or auto."),
    seed: int = typer.Option(0),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes (a smoke run in ~1 min)."),
    serve: bool = typer.Option(False, "--serve", help="Serve the models and map afterwards."),
    port: int = typer.Option(8000, "--port", help="Port for --serve (loopback)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """World → chips → teacher → student → prediction COGs (→ web map with --serve).

    Example:

        terrastill demo demo-out --serve
    """
    setup_logging(verbose)
    from rich.table import Table

    from terrastill.demo import DemoOptions, run_demo

    opts = (DemoOptions.quick_options(task=task, seed=seed) if quick else
            DemoOptions(task=task, teacher=teacher, epochs=epochs, student_layers=layers,
                        seed=seed))
    summary = run_demo(out, opts, say=lambda m: console.print(f"[bold cyan]{m}[/]"))
    table = Table(title=f"demo: {task}")
    for col in ("model", "params", "MACs/chip", "test mIoU (labels)", "labelled px",
                "test mIoU vs truth (95 % CI)", "truth px"):
        table.add_column(col)
    for key in ("teacher", "student"):
        if key in summary:
            from terrastill.models.modelfile import read_card

            card = read_card(summary[key]["path"])
            m, d = summary[key]["test"], summary[key].get("test_truth") or {}
            ci = (d.get("intervals") or {}).get("miou")
            dense = (f"{d['miou']:.3f} ({ci[0]:.3f}–{ci[1]:.3f})" if "miou" in d and ci
                     else d.get("error", "—"))
            table.add_row(f"{key} ({card.depth} blocks)", f"{card.params:,}",
                          f"{card.macs / 1e6:.1f} M", f"{m.get('miou', float('nan')):.3f}",
                          f"{m.get('n_pixels', 0):,}", dense, f"{d.get('n_pixels', 0):,}")
    console.print(table)
    for epsg, s in summary["prediction"]["vs_truth"].items():
        console.print(f"prediction vs truth (EPSG:{epsg}): mIoU {s['miou']:.3f}, "
                      f"accuracy {s['accuracy']:.3f} over {s['pixels']:,} px")
    for p in summary["prediction"]["classes"]:
        console.print(f"[green]prediction COG:[/] {p}")
    secs = summary.get("seconds") or {}
    if secs:
        console.print("seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()))
    console.print(f"summary: {out / 'summary.json'}")
    if serve:
        from terrastill.commands.serve import serve as serve_cmd
        from terrastill.demo import add_demo_job

        add_demo_job(out, summary)  # the demo's own prediction, listed as a finished job
        serve_cmd(models=Path(summary["serve_models"]), data=out / "serve",
                  host="127.0.0.1", port=port, token=None, catalog=summary["catalog"],
                  workers=1, scheduler=None, cors_origin=[], max_aoi_km2=2500.0,
                  max_body_bytes=1_000_000, no_auth=False, allowed_host=[], public_url=None,
                  basemap=None, verbose=verbose, config=None)
