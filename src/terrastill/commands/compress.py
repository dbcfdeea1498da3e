"""``terrastill compress`` / ``decompress``: quantise, reduce or rotate embedding products."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging

RASTER_SUFFIXES = (".tif", ".tiff")


def _is_raster(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES


def _report(verb: str, info: dict[str, Any]) -> None:
    extra = ""
    if info.get("bytes_per_embedding"):
        extra = (f", {info['bytes_per_embedding']} B/embedding ({info['ratio']:.1f}× smaller "
                 "than float32)")
    if info.get("explained_variance") is not None:
        extra += f", PCA keeps {100 * info['explained_variance']:.1f} % of the variance"
    if info.get("fit"):
        extra += f"; fitted on {info['fit']}"
    console.print(f"[green]{verb}[/] {info['path']} ({info['method']}{extra})", highlight=False)


@handle_errors
def compress(
    emb: Path = typer.Argument(..., help="Embedding table (.parquet or a folder holding "
                                         "embeddings.parquet) or embedding raster (.tif)."),
    method: str | None = typer.Option(
        None, "--method", "-m",
        help="Q or pca:K+Q, Q one of float32, int8, int4, int2, binary, binary:sign, rot:int8, "
             "rot:int4, rot:int2, rot:binary (e.g. int8, pca:64+int8, rot:int4); pca:K alone "
             "keeps K float32 values. Rasters: int8, pca:K, pca:K+int8."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Output .parquet / .tif, or a folder to write it into."),
    params: Path | None = typer.Option(
        None, "--params", help="Reuse the fitted parameters of this compressed product "
                               "instead of fitting (same codes for both products)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the rotation and PCA sample."),
    sample: int = typer.Option(200_000, "--sample", min=100,
                               help="Rasters: pixels sampled to fit PCA."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Compress embeddings. Every parameter is fitted on the table's train split (all rows when
    there is no split column; all valid pixels for a raster) and stored in the output, so
    `terrastill decompress` needs nothing else.

    Example:

        terrastill compress demo-out/emb/embeddings.parquet --method pca:64+int8
        --out demo-out/emb-pca64

        terrastill compress demo-out/emb-aoi/embeddings_32633.tif --method int8
        --out demo-out/emb-int8.tif
    """
    setup_logging(verbose)
    from terrastill.embeddings.compress import parse_method
    from terrastill.embeddings.compress_table import compress_table, reference_codec

    if method is not None:
        parse_method(method)  # a typo fails before any file is read
    ref = reference_codec(params) if params is not None else None
    if _is_raster(emb):
        from terrastill.embeddings.compress_raster import compress_raster

        info = compress_raster(emb, out, method, seed=seed, sample=sample, params=ref)
    else:
        info = compress_table(emb, out, method, seed=seed, params=ref)
    _report("compressed", info)


@handle_errors
def decompress(
    src: Path = typer.Argument(..., help="Compressed table (.parquet / folder) or raster (.tif)."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Output .parquet / .tif, or a folder to write it into."),
    reduced: bool = typer.Option(False, "--reduced",
                                 help="Tables: keep the K PCA scores instead of the input dims."),
    params: Path | None = typer.Option(
        None, "--params", help="Decode with this product's parameters (its method must match)."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Decode a compressed embedding product back to float32 vectors (or bands).

    Example:

        terrastill decompress demo-out/emb-pca64/embeddings.parquet
        --out demo-out/emb-restored
    """
    setup_logging(verbose)
    from terrastill.embeddings.compress_table import decompress_table, reference_codec

    ref = reference_codec(params) if params is not None else None
    if _is_raster(src):
        from terrastill.embeddings.compress_raster import decompress_raster
        from terrastill.errors import BadInputError

        if reduced:
            raise BadInputError("--reduced: a compressed raster already stores the PCA scores")
        info = decompress_raster(src, out, params=ref)
    else:
        info = decompress_table(src, out, reduced=reduced, params=ref)
    _report("decoded", info)
