"""``terrastill change`` / ``change-fit`` / ``change-map``: change from embedding differences."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


@handle_errors
def change(
    before: Path = typer.Argument(..., help="Embedding raster of the earlier date (embed --bbox)."),
    after: Path = typer.Argument(..., help="Embedding raster of the later date, same grid/model."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder of the change product."),
    pca: int = typer.Option(8, "--pca", min=1, help="PCA components kept (int8 bands)."),
    sample_every: int = typer.Option(1000, "--sample-every", min=1,
                                     help="Fit the PCA on every N-th valid pixel."),
    tiles: bool = typer.Option(True, "--tiles/--no-tiles", help="Write the XYZ tile pyramid."),
    seed: int = typer.Option(0, "--seed", min=0),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Difference two embedding rasters (after − before), fit a PCA on a subsample and write
    an int8 change product: change.tif (COG, per-band scale/offset), preview.tif (PCA-3 RGB),
    tiles/{z}/{x}/{y}.tif (web-mercator GeoTIFF tiles; lower zooms are 2×2 means) and
    change.json with every parameter.

    Example:

        terrastill change demo-out/emb-before/embeddings_32633.tif
        demo-out/emb-after/embeddings_32633.tif --out demo-out/change --pca 8
    """
    setup_logging(verbose)
    from terrastill.embeddings.change import make_change

    meta = make_change(before, after, out, k=pca, every=sample_every, seed=seed, tiles=tiles,
                       progress=lambda s: console.print(f"[dim]{s}…[/]", highlight=False))
    p = meta["pca"]
    console.print(
        f"[green]change product[/] {out} (id {meta['id']}): PCA-{p['k']} keeps "
        f"{100 * p['explained_variance']:.1f} % of the difference variance "
        f"(PC1 {100 * p['explained_variance_ratio'][0]:.1f} %; 50 % at "
        f"{p['components_for_50pct']}, 90 % at {p['components_for_90pct']} components), "
        f"fitted on {meta['sample']['pixels']} of {meta['sample']['valid_pixels']} valid "
        f"pixels; {p['k']} B/pixel", highlight=False)
    if "tiles" in meta:
        t = meta["tiles"]
        console.print(f"tiles: zoom {t['min_zoom']}–{t['max_zoom']}, "
                      f"{sum(t['tiles_per_zoom'].values())} tiles", highlight=False)


def _table(rows: dict[str, dict]) -> str:
    head = "| Feature set | Accuracy | F1 | Precision | Recall |\n|---|---|---|---|---|\n"
    body = ""
    for name, r in rows.items():
        cells = " | ".join(f"{r[m]['mean']:.2f} ± {r[m]['std']:.2f}"
                           for m in ("accuracy", "f1", "precision", "recall"))
        body += f"| {name} | {cells} |\n"
    return head + body


@handle_errors
def change_fit(
    product: Path = typer.Argument(..., help="Change product folder (the change command's --out)."),
    labels: Path = typer.Option(..., "--labels", help="Click points (GeoJSON, EPSG:4326) with "
                                                       "an integer property change: 1 or 0."),
    out: Path = typer.Option(..., "--out", "-o", help="Model JSON to write."),
    report: bool = typer.Option(False, "--report", help="Also run nested cross-validation for "
                                                         "PCA-3, PCA-K and the full difference."),
    folds: int = typer.Option(10, "--folds", min=2, help="Outer folds of --report (at most)."),
    seed: int = typer.Option(0, "--seed", min=0),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Fit a logistic regression on the clicked pixels' change-product values (C chosen by
    inner cross-validation on F1) and save it as JSON (weights over real values and over the
    int8 codes, for the web map).

    Example:

        terrastill change-fit demo-out/change --labels demo-out/clicks.geojson
        --out demo-out/change-model.json --report
    """
    setup_logging(verbose)
    from terrastill.atomic import write_text_atomic
    from terrastill.embeddings.change_fit import fit_model, label_features
    from terrastill.embeddings.change_fit import report as run_report

    feats = label_features(product, labels, full=report)
    model = fit_model(feats["int8"], feats["y"], feats["meta"], seed)
    if report:
        rows = run_report(feats, seed, folds)
        model["report"] = rows
        console.print(_table(rows), highlight=False)
    write_text_atomic(out, json.dumps(model, indent=1) + "\n")
    lab = model["labels"]
    console.print(f"[green]model[/] {out}: {lab['n']} clicks ({lab['change']} change), "
                  f"C={model['C']:g}, inner-CV F1 {model['inner_cv_f1']:.2f}", highlight=False)


@handle_errors
def change_map(
    product: Path = typer.Argument(..., help="Change product folder."),
    model: Path = typer.Argument(..., help="Model JSON from change-fit (or the web map)."),
    out: Path = typer.Option(..., "--out", "-o", help="Probability COG (.tif) to write."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Score every pixel of a change product with a change model: a float32 change-probability
    COG on the product's grid.

    Example:

        terrastill change-map demo-out/change demo-out/change-model.json
        --out demo-out/change-prob.tif
    """
    setup_logging(verbose)
    from terrastill.embeddings.change_fit import change_map as run
    from terrastill.errors import BadInputError
    from terrastill.progress import progress_bar

    if out.suffix.lower() not in (".tif", ".tiff"):
        raise BadInputError(f"--out {out}: expected a .tif path")
    with progress_bar("strips", console) as bar:
        task = bar.add_task("scoring", total=None)
        run(product, model, out, lambda d, t: bar.update(task, completed=d, total=t))
    console.print(f"[green]probability map[/] {out}", highlight=False)
