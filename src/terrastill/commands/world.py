"""``terrastill world``: build the offline synthetic demo world (imagery, catalogue, truth)."""

from __future__ import annotations

import time
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging
from terrastill.errors import BadInputError


class Source(StrEnum):
    hls = "hls"
    s2 = "s2"
    s1 = "s1"


def _date(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise BadInputError(f"--{name}: {value!r} is not a date like 2024-07-31") from None


@handle_errors
def world(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="Folder to write the world into (world.json inside)."),
    source: Source = typer.Option(Source.hls, "--source", help="Imagery to simulate."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (same seed, same bytes)."),
    tiles_x: int = typer.Option(2, "--tiles-x", min=1, max=16, help="Tiles per zone, east-west."),
    tiles_y: int = typer.Option(2, "--tiles-y", min=1, max=16, help="Tiles per zone, north-south."),
    tile_size: int = typer.Option(256, "--tile-size", min=16, max=4096,
                                  help="Tile width/height in pixels (native resolution)."),
    overlap: int | None = typer.Option(None, "--overlap", min=0,
                                       help="Pixels shared by neighbouring tiles [tile-size/16]."),
    zones: int = typer.Option(2, "--zones", min=1, max=2,
                              help="1, or 2 to straddle a UTM zone boundary."),
    center_lon: float = typer.Option(12.0, "--center-lon", help="Region centre longitude."),
    center_lat: float = typer.Option(45.3, "--center-lat", help="Region centre latitude."),
    start: str = typer.Option("2024-04-01", "--start", help="First acquisition date."),
    end: str = typer.Option("2024-09-30", "--end", help="Last acquisition date."),
    revisit: int = typer.Option(6, "--revisit", min=1, max=60,
                                help="Mean days between acquisitions (jittered)."),
    flood_date: str | None = typer.Option(None, "--flood-date",
                                          help="Date of the flood [2/3 into the season]."),
    flood_end: str | None = typer.Option(None, "--flood-end",
                                         help="Recession date (default: water stays)."),
    observations: int = typer.Option(200, "--observations", min=0,
                                     help="Field observations per task."),
    bad_rows: bool = typer.Option(False, "--bad-rows",
                                  help="Also write observations/<task>_with_bad_rows.csv."),
    workers: int = typer.Option(0, "--workers", min=0, max=64,
                                help="Processes writing scenes (0: auto, 1: none)."),
    fine_factor: int = typer.Option(1, "--fine-factor", min=1, max=8,
                                    help="s2: render scenes from a truth this many times finer "
                                         "(e.g. 4: 2.5 m), saved under truth/fine/."),
    fine_psf: float = typer.Option(3.0, "--fine-psf",
                                   help="Gaussian PSF sigma (m) of a --fine-factor world."),
    fine_shift: float = typer.Option(2.0, "--fine-shift",
                                     help="Std (m) of the per-acquisition sub-pixel shifts."),
    preset_name: str | None = typer.Option(
        None, "--preset",
        help="A named configuration: demo, or hls-production (one 3,660 px HLS-granule-sized "
             "tile, 512 px internal tiles, for read/predict benchmarks). Options given on the "
             "command line override it."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log progress details."),
    config: Path | None = ConfigOption,
) -> None:
    """Build the offline synthetic demo world: tiles in two UTM zones, a time series of COG
    scenes with clouds, a STAC catalogue, truth rasters and field observations.

    Example: terrastill world demo-out/world --source hls --seed 0

    Example: terrastill world demo-out/world-hls-production --preset hls-production
    """
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from terrastill.world.build import WorldConfig, build_world

    setup_logging(verbose)
    fields: dict[str, Any] = dict(
        source=source.value, seed=seed, tiles_x=tiles_x, tiles_y=tiles_y, tile_size=tile_size,
        overlap=overlap, zones=zones, center_lon=center_lon, center_lat=center_lat,
        start=_date(start, "start"), end=_date(end, "end"), revisit=revisit,
        flood_date=_date(flood_date, "flood-date"), flood_end=_date(flood_end, "flood-end"),
        observations=observations, bad_rows=bad_rows, workers=workers,
        fine_factor=fine_factor, fine_psf=fine_psf, fine_shift=fine_shift,
    )
    if preset_name is not None:
        from terrastill.world.presets import preset

        for key, value in preset(preset_name).items():
            given = ctx.get_parameter_source(key)  # None: not an option of this command
            if given is None or given.name == "DEFAULT":
                fields[key] = value
    try:
        cfg = WorldConfig(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise BadInputError(f"{where + ': ' if where else ''}{msg}") from None
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]world[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True, auto_refresh=False) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)
            bar.refresh()  # no refresh thread: scene writing forks worker processes

        manifest = build_world(out, cfg, progress=progress)
    console.print(
        f"[green]world[/] {out}/world.json: {manifest['items']} items "
        f"({manifest['acquisitions']} acquisitions x {len(manifest['tiles'])} tiles, "
        f"EPSG {', '.join(map(str, manifest['epsg']))}) in {time.perf_counter() - t0:.1f}s",
        highlight=False,
    )
