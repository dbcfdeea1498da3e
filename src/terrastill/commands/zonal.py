"""``terrastill zonal`` / ``probe``: per-polygon embedding statistics and linear probes."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


@handle_errors
def zonal(
    emb: Path = typer.Argument(..., help="Embedding raster (.tif) or a folder of "
                                         "embeddings_<epsg>.tif (one per UTM zone)."),
    zones: Path = typer.Argument(..., help="Polygons: GeoParquet, GeoPackage or GeoJSON."),
    out: Path = typer.Option(..., "--out", "-o", help="Statistics GeoParquet to write."),
    id_col: str | None = typer.Option(None, "--id-col", help="Unique id column (default: row "
                                                               "number)."),
    stats: str = typer.Option("mean,std,count", "--stats", help="Comma list of mean, std, "
                                                                 "count."),
    max_area: float | None = typer.Option(None, "--max-area", help="Reject zones larger than "
                                                                   "this many km²."),
    pca_rgb: Path | None = typer.Option(None, "--pca-rgb", help="Also write a PCA-3 RGB COG "
                                                                "of the zone features."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Exact, coverage-weighted per-polygon statistics of every embedding dimension (mean and
    standard deviation over valid pixels, by exactextract). Zones that are empty, invalid,
    oversized or without valid pixels go to OUT's .rejected.csv with the reason.

    Example:

        terrastill zonal demo-out/emb-aoi demo-out/world/zones.parquet
        --out demo-out/zone-stats.parquet --id-col zone_id --max-area 25
    """
    setup_logging(verbose)
    from terrastill.embeddings.zonal import zonal_stats
    from terrastill.errors import BadInputError
    from terrastill.progress import progress_bar

    if out.suffix.lower() != ".parquet":
        raise BadInputError(f"--out {out}: expected a .parquet path")
    wanted = [s.strip() for s in stats.split(",") if s.strip()]
    with progress_bar("chunks", console) as bar:
        task = bar.add_task("zones", total=None)
        res = zonal_stats(emb, zones, out, id_col, wanted, max_area, pca_rgb,
                          lambda d, t: bar.update(task, completed=d, total=t))
    console.print(f"[green]zone statistics[/] {res.path}: {res.kept} zones; "
                  f"{len(res.rejected_rows)} rejected ({res.rejected})", highlight=False)
    for p in res.pca_rgb:
        console.print(f"PCA-3 RGB {p}", highlight=False)


@handle_errors
def probe(
    stats: Path = typer.Argument(..., help="Zone statistics GeoParquet (zonal's output)."),
    target: str = typer.Option(..., "--target", help="Column to predict."),
    kind: str | None = typer.Option(None, "--kind", help="regression or classification "
                                                         "(default: from the column type)."),
    cv: str = typer.Option("spatial", "--cv", help="spatial (block folds) or random; the "
                                                   "other is reported beside it."),
    folds: int = typer.Option(5, "--folds", min=2),
    block_km: float | None = typer.Option(None, "--block-km", help="Spatial block side "
                                                                   "(default: 1/6 of extent)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the result as JSON."),
    seed: int = typer.Option(0, "--seed", min=0),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Linear probe of zone statistics: ridge R² (regression) or logistic-regression accuracy
    (classification) with 5-fold cross-validation, spatial block folds by default and random
    folds beside them.

    Example:

        terrastill probe demo-out/zone-stats.parquet --target water_share
    """
    setup_logging(verbose)
    from terrastill.atomic import write_text_atomic
    from terrastill.embeddings.probe import probe as run

    res = run(stats, target, kind, cv, folds, block_km, seed)
    m = res["metric"]
    for scheme in (res["primary"], "random" if res["primary"] == "spatial" else "spatial"):
        r = res[scheme]
        if "error" in r:
            console.print(f"{scheme} CV: {r['error']}", highlight=False)
        else:
            console.print(f"{target} ({res['kind']}, {res['n']} zones): {scheme} {r['folds']}-"
                          f"fold {m} {r['mean']:.3f} ± {r['std']:.3f}", highlight=False)
    extra = f"; majority class {res['majority']:.3f}" if "majority" in res else ""
    console.print(f"in-sample {m} {res['in_sample']:.3f}{extra}", highlight=False)
    if out is not None:
        write_text_atomic(out, json.dumps(res, indent=1) + "\n")
