"""``terrastill index`` / ``search``: geohash-sharded code indexes and search by example."""

from __future__ import annotations

from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging
from terrastill.errors import BadInputError


def parse_point(text: str, flag: str) -> tuple[float, float]:
    """``LON,LAT`` → floats (BadInputError naming the flag otherwise)."""
    parts = str(text).replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise BadInputError(f"{flag} {text!r}: expected LON,LAT (e.g. 11.97,45.30)") from None


@handle_errors
def index(
    emb: list[Path] = typer.Argument(..., help="Embedding tables (.parquet or folders holding "
                                               "embeddings.parquet) and/or rasters (.tif)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder (created, or appended "
                                                      "to when it holds a manifest)."),
    code: str | None = typer.Option(
        None, "--code", help="binary (1 bit/dim, Hamming), rot-binary (1 bit/dim of "
                             "unit-length, centred, rotated vectors; Hamming), int4 or "
                             "rot-int4 (4 bits/dim, cosine on decoded values). Default: "
                             "rot-binary; appends keep the index's.", show_default=False),
    rerank: str | None = typer.Option(
        None, "--rerank", help="int8: also store int8 codes for re-ranking; none: do not. "
                               "Default: int8.", show_default=False),
    precision: int | None = typer.Option(
        None, "--geohash-precision", help="Geohash characters of a shard (default 4, cells of "
                                          "about 39 × 20 km).", show_default=False),
    seed: int = typer.Option(0, "--seed", min=0,
                             help="Seed of the rot-binary / rot-int4 rotation."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Index embedding products for search: one GeoParquet shard per geohash cell of the
    patch centres plus manifest.json. Running it again on the same --out appends.

    Example:

        terrastill index demo-out/emb/embeddings.parquet --out demo-out/index

        terrastill index demo-out/emb-aoi/embeddings_32633.tif --out demo-out/index-aoi
        --code rot-int4 --geohash-precision 5
    """
    setup_logging(verbose)
    from terrastill.embeddings.index import build_index
    from terrastill.progress import progress_bar

    with progress_bar("shards") as bar:
        task = bar.add_task("index", total=None)
        info = build_index(emb, out, code=code, rerank=rerank, precision=precision, seed=seed,
                           progress=lambda d, t: bar.update(task, completed=d, total=t))
    verb = "appended" if info["appended"] else "indexed"
    console.print(f"[green]{verb}[/] {info['added']} rows → {info['path']} ({info['rows']} rows "
                  f"in {info['shards']} shards; {info['method']} codes of {info['bytes']} B"
                  f"{' + int8 re-rank' if info['rerank'] else ''})", highlight=False)


@handle_errors
def search(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="Index folder (terrastill "
                                                                "index)."),
    near: list[str] = typer.Option([], "--near", help="Exemplar LON,LAT (repeatable): the "
                                                      "patch there, in any shard."),
    negative: list[str] = typer.Option([], "--not", help="Negative exemplar LON,LAT "
                                                         "(repeatable)."),
    query: Path | None = typer.Option(
        None, "--query", help="Embedding table whose rows are further positive exemplars "
                              "(same model and dimension as the index)."),
    invert: bool = typer.Option(False, "--invert", help="Search for the opposite (bitwise "
                                                        "NOT of the query)."),
    combine: str = typer.Option("mean", "--combine", help="Several positives: mean distance, "
                                                          "or and/or of binary codes."),
    bbox: tuple[float, float, float, float] | None = typer.Option(
        None, "--bbox", help="Search area: minx miny maxx maxy in lon/lat.", show_default=False),
    aoi: Path | None = typer.Option(None, "--aoi", help="Search area: GeoJSON/GeoParquet "
                                                        "file."),
    k: int = typer.Option(100, "--k", help="Results to return."),
    rerank: bool = typer.Option(False, "--rerank", help="Re-rank the best candidates by the "
                                                        "int8 codes."),
    depth: int | None = typer.Option(None, "--rerank-depth", help="Candidates re-ranked "
                                                                  "(default max(100, 4k)).",
                                     show_default=False),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Skip (and name) "
                                       "missing or corrupt shards instead of failing."),
    out: Path = typer.Option(..., "--out", "-o", help="Result GeoParquet (.parquet) or a "
                                                      "folder for results.parquet."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Find the patches most like the exemplars inside a search area: only shards whose box
    meets the area are read, rows are filtered by the exact area, and every candidate is
    scored by its exact code distance (Hamming for binary codes).

    Example:

        terrastill search demo-out/index --near 11.97,45.30 --not 12.05,45.33
        --bbox 11.9 45.25 12.1 45.36 --k 20 --rerank --out demo-out/search/results.parquet
    """
    setup_logging(verbose)
    from shapely.ops import unary_union

    from terrastill.embeddings.index import open_index
    from terrastill.embeddings.search import Query, run_search, write_result
    from terrastill.inference.aoi import bbox_aoi, file_aois

    if bbox is not None and aoi is not None:
        raise BadInputError("give --bbox or --aoi, not both")
    if bbox is None and aoi is None:
        raise BadInputError("give a search area: --bbox minx miny maxx maxy or --aoi FILE")
    area = bbox_aoi(bbox) if bbox is not None else unary_union(file_aois(aoi))
    idx = open_index(index_dir)
    vectors = model = None
    if query is not None:
        from terrastill.embeddings.compress_table import float_vectors
        from terrastill.embeddings.index import model_id
        from terrastill.embeddings.table import read_table

        t = read_table(query)
        vectors, model = float_vectors(t, str(query)), model_id(t.meta.get("model"))
    q = Query(near=[parse_point(p, "--near") for p in near],
              negatives=[parse_point(p, "--not") for p in negative], area=area, k=k,
              combine=combine.lower(), invert=invert, rerank=rerank, depth=depth,
              allow_partial=allow_partial, vectors=vectors, vector_model=model)
    res = run_search(idx, q)
    path = write_result(idx, res, out)
    skipped = f"; skipped {len(res.skipped)} bad shard(s)" if res.skipped else ""
    console.print(f"[green]searched[/] {res.candidates} patches in {res.shards_searched} of "
                  f"{len(idx.shards)} shards → top {len(res.distance)} in {path} (best "
                  f"{res.rows.frame['id'].iloc[0]}, distance {res.distance[0]:.4g}){skipped}",
                  highlight=False)
