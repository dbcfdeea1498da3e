"""``terrastill predict``: run a model file over areas of interest, chips or a scene."""

from __future__ import annotations

from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


@handle_errors
def predict(
    model: Path = typer.Argument(..., help="Model file (.pt) from train or distill."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for COGs + sidecar."),
    bbox: tuple[float, float, float, float] | None = typer.Option(
        None, "--bbox", help="minx miny maxx maxy in lon/lat (more AOIs: --aoi files).",
        show_default=False),
    aoi: list[Path] | None = typer.Option(None, "--aoi", help="GeoJSON/GeoParquet AOI file(s)."),
    date: str | None = typer.Option(None, "--date", help="Date of the last time step."),
    catalog: str | None = typer.Option(None, "--catalog", help="STAC API URL or local file."),
    max_cloud: float | None = typer.Option(None, "--max-cloud", help="Override cloud limit."),
    tolerance: int | None = typer.Option(None, "--tolerance", help="Override ± days."),
    overlap: float = typer.Option(0.25, "--overlap", help="Window overlap fraction."),
    composite: bool = typer.Option(
        False, "--composite",
        help="Fill each step's cloudy pixels from the other acquisitions within the "
             "tolerance (per pixel; more of a cloudy AOI gets a prediction)."),
    precision: str = typer.Option(
        "auto", "--precision",
        help="fp32, bf16 or auto: bf16 only where the model card says it stays within 0.5 pp "
             "and it measured faster on this machine (timed once per model, cached)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    block_windows: int = typer.Option(
        256, "--block-windows", help="Neighbouring windows read together (shared reads)."),
    read_ahead: int | None = typer.Option(
        None, "--read-ahead",
        help="Blocks read in a thread while the model runs (default: 1 on GPU, 0 on CPU)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    probabilities: bool = typer.Option(False, "--probabilities",
                                       help="Also write per-class probabilities (percent)."),
    truecolor: bool = typer.Option(
        False, "--truecolor",
        help="Also write the input's last step as a true-colour reflectance COG."),
    workers: int = typer.Option(0, "--workers", help="Local Dask worker processes."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Existing Dask scheduler."),
    max_area: float = typer.Option(5000.0, "--max-area", help="AOI area limit in km²."),
    name: str = typer.Option("prediction", "--name", help="Product file name prefix."),
    chips_dir: Path | None = typer.Option(None, "--chips",
                                          help="Predict every chip of a chip dataset instead."),
    image: Path | None = typer.Option(None, "--image",
                                      help="Predict over a multi-band GeoTIFF instead."),
    image_bands: str | None = typer.Option(
        None, "--image-bands",
        help="Names of the image's bands in order (t0:red,... or red,... for T=1); "
             "default: the band descriptions."),
    scale: float = typer.Option(1.0, "--scale", help="--image: value × scale + offset."),
    offset: float = typer.Option(0.0, "--offset", help="--image: added after scaling."),
    nodata: float | None = typer.Option(
        None, "--nodata",
        help="--image: the value of missing pixels (default: the file's nodata tag; pixels "
             "outside the image and NaN are always missing)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Predict over an AOI through the same data pipeline as training, writing COGs.

    Example:

        terrastill predict demo-out/models/student/model.pt --bbox 11.95 45.28 12.05 45.33
        --date 2024-08-12 --catalog demo-out/world/catalog.json --out demo-out/pred
    """
    setup_logging(verbose)
    from terrastill.progress import progress_bar

    if chips_dir is not None:
        from terrastill.inference.chips import predict_chips

        with progress_bar("chips", console) as bar:
            task = bar.add_task("predict chips", total=None)
            n = predict_chips(model, chips_dir, out, batch_size=batch_size, precision=precision,
                              device=device,
                              progress=lambda d, t: bar.update(task, completed=d, total=t))
        console.print(f"[green]✓[/] {n} chip predictions in {out}")
        return

    if image is not None:
        from terrastill.inference.image import predict_image

        names = [v.strip() for v in image_bands.split(",")] if image_bands else None
        with progress_bar("windows", console) as bar:
            task = bar.add_task("predict image", total=100)
            res = predict_image(model, image, out, names, scale, offset, overlap, batch_size,
                                precision, name, probabilities, device,
                                truecolor, lambda _s, f: bar.update(task, completed=round(f * 100)),
                                nodata=nodata)
        for p in res.classes + res.probabilities + res.truecolor:
            console.print(f"[green]✓[/] {p}")
        for note in res.warnings:
            console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
        return


    from terrastill.inference.aoi import request_aois
    from terrastill.inference.predict import PredictRequest
    from terrastill.inference.predict import predict as run_predict

    day, aois = request_aois(bbox, aoi, date)
    req = PredictRequest(model=model, aois=aois, date=day, out_dir=out, catalog=catalog,
                         max_cloud=max_cloud, tolerance=tolerance, overlap=overlap,
                         composite=composite,
                         precision=precision, device=device, batch_size=batch_size,
                         block_windows=block_windows, read_ahead=read_ahead,
                         write_probabilities=probabilities, write_truecolor=truecolor,
                         workers=workers,
                         scheduler=scheduler, max_area_km2=max_area, name=name)
    with progress_bar("windows", console) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, frac: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=100)
            bar.update(tasks[stage], completed=round(frac * 100))

        res = run_predict(req, progress)
    t = res.timings
    console.print(f"[green]✓[/] {res.windows} windows, {res.pixels} px in {t['total']:.1f}s "
                  f"(read {t['read']:.1f}s, inference {t['inference']:.1f}s, "
                  f"write {t['write']:.1f}s)")
    for p in res.classes + res.probabilities + res.truecolor:
        console.print(f"  {p}")
    console.print(f"  {res.sidecar}")
