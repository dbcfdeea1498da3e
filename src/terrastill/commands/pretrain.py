"""``terrastill pretrain``: masked-autoencoder pretraining on unlabelled windows or images."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


def _date(text: str | None, flag: str) -> dt.date:
    from terrastill.errors import BadInputError

    if not text:
        raise BadInputError(f"{flag}: a date is required (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BadInputError(f"{flag} {text!r}: expected a date YYYY-MM-DD") from None


def _csv(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


@handle_errors
def pretrain(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (model.pt, mae.pt, ...)."),
    catalog: str | None = typer.Option(None, "--catalog", help="STAC API URL or local file."),
    bbox: tuple[float, float, float, float] | None = typer.Option(
        None, "--bbox", help="minx miny maxx maxy in lon/lat.", show_default=False),
    aoi: list[Path] | None = typer.Option(None, "--aoi", help="GeoJSON/GeoParquet AOI file(s)."),
    start: str | None = typer.Option(None, "--start", help="First date windows may use."),
    end: str | None = typer.Option(None, "--end", help="Last date windows may use."),
    images: str | None = typer.Option(
        None, "--images", help="Pretrain on a folder (or glob) of GeoTIFFs instead (T = 1)."),
    image_bands: str | None = typer.Option(
        None, "--image-bands", help="--images: band names in file order or a preset "
                                    "(eurosat); default: the band descriptions."),
    scale: float = typer.Option(1.0, "--scale", help="--images: DN × scale (e.g. 0.0001)."),
    model: str = typer.Option("tiny", "--model", "-m",
                              help="Registry model: tiny, small, prithvi-eo-…"),
    weights: str | None = typer.Option(
        None, "--weights", help="Start the encoder from these weights (as train --weights)."),
    source: str = typer.Option("hls", "--source", help="Sensor profile: hls, s2, s1, landsat."),
    bands: str | None = typer.Option(None, "--bands", help="Comma-separated band names."),
    num_steps: int = typer.Option(3, "--num-steps", min=1, help="Time steps per window (T)."),
    temporal_step: int = typer.Option(30, "--temporal-step", min=0,
                                      help="Days between steps."),
    temporal_tolerance: int = typer.Option(5, "--temporal-tolerance", min=0,
                                           help="± days around each step's date."),
    chip_size: int = typer.Option(32, "--chip-size", min=1, help="Window size in pixels."),
    samples: int = typer.Option(256, "--samples", min=1, help="Windows to sample."),
    max_cloud: float = typer.Option(50.0, "--max-cloud",
                                    help="Max % of a window masked per step."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW)."),
    mask_ratio: float = typer.Option(0.75, "--mask-ratio", help="Share of tokens masked."),
    norm_pix_loss: bool = typer.Option(False, "--norm-pix-loss",
                                       help="Per-patch normalised pixel targets."),
    augment: bool = typer.Option(True, "--augment/--no-augment",
                                 help="Random flips and 90° rotations of every window."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes."),
    resume: bool = typer.Option(False, "--resume",
                                help="Continue from OUT/checkpoints/last.ckpt."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    name: str | None = typer.Option(None, "--name", help="Model name in the card."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Pretrain the encoder with Prithvi's masked-autoencoder objective (no labels).

    Random windows (seeded places inside the AOI × dates from --start to --end) are read through
    the chip pipeline, cloudy ones skipped; or every image of --images.

    Example:

        terrastill pretrain --catalog demo-out/world/catalog.json
        --bbox 11.9 45.25 12.1 45.35 --start 2024-04-01 --end 2024-09-30 --model tiny
        --num-steps 3 --temporal-step 14 --temporal-tolerance 7 --chip-size 32
        --samples 200 --epochs 20 --out demo-out/models/mae
    """
    setup_logging(verbose)
    from terrastill.embeddings import sampling
    from terrastill.embeddings.pretrain import PretrainOptions
    from terrastill.embeddings.pretrain import pretrain as run_pretrain
    from terrastill.errors import BadInputError
    from terrastill.models.registry import get_spec

    spec = get_spec(model)  # an unknown model fails before any read
    band_list = _csv(bands)
    if images is not None:
        if catalog or bbox or aoi:
            raise BadInputError("--images cannot be combined with --catalog/--bbox/--aoi")
        patch = int(spec["encoder"]["patch_size"][1])
        key = sampling.images_key(images, band_list, image_bands, scale)
        windows = sampling.cached_windows(out, key, lambda: sampling.image_windows(
            images, band_list, image_bands, scale, patch))
    else:
        windows = _catalog_windows(out, catalog, bbox, aoi, _date(start, "--start"),
                                   _date(end, "--end"), source, band_list, num_steps,
                                   temporal_step, temporal_tolerance, max_cloud, chip_size,
                                   samples, seed, spec)
    opts = PretrainOptions(model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                           mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
                           augment=augment, seed=seed,
                           workers=workers, resume=resume, weights=weights, device=device,
                           name=name, command=shlex.join(["terrastill", *sys.argv[1:]]))
    result = run_pretrain(windows, out, opts)
    w = result["windows"]
    skipped = sum(w["rejected"].values())
    console.print(f"windows: {w['samples']} kept of {w['attempted']} tried ({skipped} skipped)")
    curve = result["loss_curve"]
    if curve:
        console.print(f"loss: {curve[0]:.4f} → {curve[-1]:.4f} over {result['epochs']} epochs "
                      f"({result['seconds']:.0f} s)")
    console.print(f"[green]model[/] {result['model']}  [green]mae[/] {result['mae']}")


def _catalog_windows(out: Path, catalog: str | None, bbox, aoi, start: dt.date, end: dt.date,
                     source: str, bands: list[str] | None, num_steps: int, temporal_step: int,
                     tolerance: int, max_cloud: float, chip_size: int, samples: int, seed: int,
                     spec: dict):
    from terrastill.data.chips import ReadOptions
    from terrastill.data.temporal import TemporalOptions
    from terrastill.embeddings import sampling
    from terrastill.errors import BadInputError
    from terrastill.inference.aoi import bbox_aoi, file_aois

    if not catalog:
        raise BadInputError("--catalog is required (or pretrain on --images)")
    if bbox is None and not aoi:
        raise BadInputError("no area: pass --bbox or --aoi")
    aois = [bbox_aoi(bbox)] if bbox is not None else []
    for path in aoi or []:
        aois.extend(file_aois(path))
    sampling.check_dates(start, end, num_steps, temporal_step)
    patch = int(spec["encoder"]["patch_size"][1])
    if chip_size % patch:
        raise BadInputError(f"--chip-size {chip_size}: not a multiple of model "
                            f"{spec['name']!r}'s patch size {patch}")
    read = ReadOptions(source=source, bands=tuple(bands or ()),
                       temporal=TemporalOptions(num_steps, temporal_step, tolerance, max_cloud))
    read.resolved_bands()  # unknown band names fail here
    req = sampling.SampleRequest(catalog, tuple(aois), start, end, read, chip_size, samples,
                                 seed)
    return sampling.cached_windows(out, req.key(), lambda: sampling.sample_windows(req))
