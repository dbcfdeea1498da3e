"""``terrastill chips`` and ``terrastill split``: observations → chip dataset folder."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


@handle_errors
def chips(
    observations: Path = typer.Argument(
        ..., help="Observations (CSV, GeoParquet, GeoJSON) or a label raster (GeoTIFF + --date)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder."),
    catalog: str = typer.Option(..., "--catalog", help="STAC API URL or local catalogue file."),
    source: str = typer.Option("hls", help="Sensor profile: hls, s2, s1, landsat."),
    bands: str | None = typer.Option(None, help="Comma-separated bands (default: the first 6)."),
    classes: str | None = typer.Option(
        None, help="Comma-separated class names in id order (default: from the labels)."),
    num_steps: int = typer.Option(3, "--num-steps", help="T: acquisitions per chip."),
    temporal_step: int = typer.Option(30, "--temporal-step", help="Days between steps."),
    temporal_tolerance: int = typer.Option(5, "--temporal-tolerance",
                                           help="± days around each step's date."),
    max_cloud: float = typer.Option(50.0, "--max-cloud",
                                    help="Max % of the chip masked (cloud, shadow, nodata)."),
    max_scene_cloud: float | None = typer.Option(
        None, "--max-scene-cloud", help="Optional eo:cloud_cover limit in the item search."),
    mask: str | None = typer.Option(None, help="QA classes to mask (default: the profile's)."),
    indices: str | None = typer.Option(
        None, "--indices", help="Derived index channels, e.g. ndwi,mndwi,ndvi,ndbi (also ndmi, "
                                "nbr): recorded with their statistics; models compute them."),
    chip_size: int = typer.Option(32, "--chip-size", help="Chip size in pixels."),
    min_count: int = typer.Option(1, "--min-count", help="Min observations per chip."),
    min_valid: float = typer.Option(0.5, "--min-valid", help="Min share of valid pixels."),
    label_window: int = typer.Option(1, "--label-window", help="Odd square burnt per point."),
    lon_col: str = typer.Option("lon", "--lon-col", help="Column of x / longitude."),
    lat_col: str = typer.Option("lat", "--lat-col", help="Column of y / latitude."),
    date_col: str = typer.Option("date", "--date-col", help="Column of the date."),
    label_col: str = typer.Option("label", "--label-col", help="Column of the label."),
    crs: str = typer.Option("EPSG:4326", "--crs", help="CRS of the coordinates."),
    date: str | None = typer.Option(None, "--date", help="One date for all rows."),
    date_format: str | None = typer.Option(
        None, "--date-format",
        help="strptime format of the date column when it is not ISO 8601 (e.g. %d/%m/%Y)."),
    strict: bool = typer.Option(
        False, "--strict",
        help="Any rejected row (bad row, conflict, no imagery, cloud) is an error: exit 2, "
             "nothing written."),
    workers: int = typer.Option(0, "--workers", help="Local Dask worker processes (0: none)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Existing Dask scheduler."),
    split_block: float = typer.Option(3000.0, "--split-block", help="Split block size (m)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in a used --out."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Make cloud-masked multi-temporal chips around observations.

    Example:

        terrastill chips demo-out/world/observations/flood.csv
        --catalog demo-out/world/catalog.json --classes land,water --num-steps 3
        --temporal-step 14 --temporal-tolerance 7 --max-cloud 60 --out demo-out/chips/flood2
    """
    setup_logging(verbose)
    from terrastill.data.build import ChipJob, make_chips
    from terrastill.data.chips import ReadOptions
    from terrastill.data.observations import ObservationOptions
    from terrastill.data.temporal import TemporalOptions
    from terrastill.progress import progress_bar

    read = ReadOptions(
        source=source, bands=_csv(bands) or (),
        temporal=TemporalOptions(num_steps, temporal_step, temporal_tolerance, max_cloud),
        mask_classes=_csv(mask))
    job = ChipJob(read=read, chip_size=chip_size, min_count=min_count, min_valid=min_valid,
                  label_window=label_window, max_scene_cloud=max_scene_cloud,
                  split_block=split_block, seed=seed)
    obs_opts = ObservationOptions(lon_col, lat_col, date_col, label_col, crs, _csv(classes), date,
                                  date_format)
    command = shlex.join(["terrastill", *sys.argv[1:]]) if sys.argv else ""
    with progress_bar("chips", console) as bar:
        task = bar.add_task("chips", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        res = make_chips(observations, out, catalog, job, obs_opts, strict=strict,
                         workers=workers, scheduler=scheduler, overwrite=overwrite,
                         command=command, progress=progress, indices=_csv(indices) or ())
    c = res.dataset["counts"]
    console.print(
        f"[green]✓[/] {res.chips} chips in {res.out} (train {c['train']}, val {c['val']}, "
        f"test {c['test']}); {res.rejected_rows} rejected rows → {res.out / 'rejected.csv'}"
        + (f"; {res.skipped} already done" if res.skipped else ""))


@handle_errors
def split(
    dataset: Path = typer.Argument(..., help="Chip dataset folder."),
    block_size: float = typer.Option(3000.0, "--block-size", help="Spatial block size (m)."),
    ratios: str = typer.Option("0.7,0.15,0.15", help="train,val,test shares."),
    seed: int = typer.Option(0, help="Seed for shuffling blocks."),
    config: Path | None = ConfigOption,
) -> None:
    """Assign train/val/test by spatial blocks and recompute train statistics.

    Example:

        terrastill split demo-out/chips/flood --block-size 5000 --ratios 0.6,0.2,0.2
    """
    from terrastill.data.build import resplit
    from terrastill.errors import BadInputError

    try:
        parts = tuple(float(v) for v in ratios.split(","))
    except ValueError:
        raise BadInputError(f"--ratios {ratios!r}: expected three numbers like 0.7,0.15,0.15")\
            from None
    if block_size <= 0:
        raise BadInputError(f"--block-size {block_size}: expected a positive size in metres")
    ds = resplit(dataset, block_size, parts, seed, shlex.join(["terrastill", *sys.argv[1:]]))
    c = ds["counts"]
    console.print(f"[green]✓[/] {dataset}: train {c['train']}, val {c['val']}, test {c['test']}")
