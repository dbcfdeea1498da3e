"""``terrastill embed``: embedding products (AOI rasters or tables) from any encoder."""

from __future__ import annotations

from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


@handle_errors
def embed(
    model: Path | None = typer.Argument(
        None, help="Model file (.pt) whose encoder to use; omit with --encoder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    encoder: str | None = typer.Option(
        None, "--encoder", help="Model-free encoder instead of MODEL: spectral (per-band "
                                "statistics) or random:<registry name> (needs --seed)."),
    seed: int | None = typer.Option(
        None, "--seed", help="Random encoder weights; also the --images split seed (0)."),
    chips_dir: Path | None = typer.Option(None, "--chips", help="Embed a chip folder."),
    images: str | None = typer.Option(None, "--images",
                                      help="Embed a folder (<Class>/*.tif) or glob of images."),
    image_bands: str | None = typer.Option(
        None, "--image-bands", help="--images band names in file order, or a preset "
                                    "(eurosat); default: the band descriptions."),
    scale: float = typer.Option(1.0, "--scale", help="--images: DN × scale + offset."),
    offset: float = typer.Option(0.0, "--offset", help="--images: added after scaling."),
    pooling: str = typer.Option("mean", "--pooling",
                                help="Table vectors: mean of the valid patch tokens, "
                                     "centre (the patches at the input's centre, for point "
                                     "labels), or cls."),
    bbox: tuple[float, float, float, float] | None = typer.Option(
        None, "--bbox", help="minx miny maxx maxy in lon/lat.", show_default=False),
    aoi: list[Path] | None = typer.Option(None, "--aoi", help="GeoJSON/GeoParquet AOI file(s)."),
    date: str | None = typer.Option(None, "--date", help="Date of the last time step."),
    catalog: str | None = typer.Option(None, "--catalog", help="STAC API URL or local file."),
    max_cloud: float | None = typer.Option(None, "--max-cloud", help="Override cloud limit."),
    tolerance: int | None = typer.Option(None, "--tolerance", help="Override ± days."),
    pixel: bool = typer.Option(False, "--pixel",
                               help="One raster pixel per input pixel (default: per patch)."),
    quantize: str | None = typer.Option(
        None, "--quantize", help="int8: per-band scale/offset in the COG (default float32)."),
    precision: str = typer.Option("auto", "--precision", help="fp32, bf16 or auto."),
    batch_size: int = typer.Option(8, "--batch-size"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    workers: int = typer.Option(0, "--workers", help="Local Dask worker processes."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Existing Dask scheduler."),
    max_area: float = typer.Option(5000.0, "--max-area", help="AOI area limit in km²."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Embed an AOI (COG per UTM zone + STAC item), a chip folder or images (GeoParquet).

    Raster pixels: the encoder's patch tokens averaged over the time steps.

    Table rows: the mean of every patch token (or the cls token).

    Example:

        terrastill embed demo-out/models/teacher/model.pt --bbox 11.95 45.28 12.05 45.33
        --date 2024-08-12 --catalog demo-out/world/catalog.json --quantize int8
        --out demo-out/emb-aoi

        terrastill embed demo-out/models/teacher/model.pt --chips demo-out/chips/flood
        --out demo-out/emb

        terrastill embed --encoder spectral --images demo-out/eurosat
        --image-bands eurosat --scale 0.0001 --out demo-out/emb-spectral
    """
    setup_logging(verbose)
    from terrastill.embeddings.encoders import EncoderChoice
    from terrastill.errors import BadInputError
    from terrastill.progress import progress_bar

    choice = EncoderChoice(model, encoder, seed, device, precision)
    if chips_dir is not None and images is not None:
        raise BadInputError("give --chips or --images, not both")
    if chips_dir is not None or images is not None:
        from terrastill.embeddings.embed import embed_chips, embed_images

        with progress_bar("items", console) as bar:
            task = bar.add_task("embed", total=None)

            def progress(d: int, t: int) -> None:
                bar.update(task, completed=d, total=t)

            if chips_dir is not None:
                path = embed_chips(choice, chips_dir, out, pooling, batch_size, progress)
            else:
                assert images is not None
                path = embed_images(choice, images, out, image_bands, scale, offset, pooling,
                                    batch_size, seed or 0, progress)
        console.print(f"[green]✓[/] {path}")
        return


    from terrastill.embeddings.raster import EmbedRequest, embed_aoi
    from terrastill.inference.aoi import request_aois

    if model is None:
        raise BadInputError(f"--encoder {encoder}: AOI embedding needs a MODEL file (its "
                            "input spec says what to read); use --chips or --images")
    day, aois = request_aois(bbox, aoi, date)
    req = EmbedRequest(model=model, aois=aois, date=day, out_dir=out, catalog=catalog,
                       max_cloud=max_cloud, tolerance=tolerance, precision=precision,
                       device=device, batch_size=batch_size, workers=workers,
                       scheduler=scheduler, max_area_km2=max_area, pixel=pixel,
                       quantize=quantize)
    with progress_bar("windows", console) as bar:
        task = bar.add_task("embed", total=None)
        res = embed_aoi(req, lambda d, t: bar.update(task, completed=d, total=t))
    t = res.timings
    console.print(f"[green]✓[/] {res.windows} windows ({res.skipped} without imagery), "
                  f"{res.patches} patches in {t['total']:.1f}s (read {t['read']:.1f}s, "
                  f"encode {t['inference']:.1f}s, write {t['write']:.1f}s)")
    for p in res.products + res.items:
        console.print(f"  {p}")
