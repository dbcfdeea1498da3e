"""``terrastill embed-bench``: bytes per embedding vs kNN and linear-probe accuracy per method."""

from __future__ import annotations

from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


@handle_errors
def embed_bench(
    emb: Path = typer.Argument(..., help="Labelled float32 embedding table (.parquet or a "
                                         "folder holding embeddings.parquet)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.csv/.md/.json and "
                                                      "pareto.png."),
    methods: str | None = typer.Option(
        None, "--methods",
        help="Comma-separated methods (float32 is always the reference); add '/hamming' to a "
             "binary method to compare raw codes. Default: float32, int8, int4, int2, binary, "
             "binary/hamming, pca:8/16/32/64/128+int8, rot:int4, rot:int2, rot:binary, "
             "rot:binary/hamming."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed: split, rotation, CV, bootstrap."),
    k: int = typer.Option(5, "--k", min=1, help="Neighbours for the kNN vote (cosine)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0,
                                  help="Bootstrap resamples of the test rows (0: none)."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    config: Path | None = ConfigOption,
) -> None:
    """Compress a labelled table with each method (fitted on train) and score the test split
    by kNN (k=5, cosine on decoded vectors; Hamming on raw codes for '/hamming') and a linear
    probe (C by inner CV), against float32: McNemar p, 95 % bootstrap interval of the
    difference, recall@10 of the float32 neighbours, PCA variance, worst class F1 drop.

    Example:

        terrastill embed-bench demo-out/emb/embeddings.parquet --out demo-out/emb-bench
        --methods float32,int8,int4,binary,binary/hamming,pca:32+int8 --seed 0
    """
    setup_logging(verbose)
    from rich.table import Table

    from terrastill.embeddings.bench import parse_bench_methods, run_bench, write_outputs
    from terrastill.embeddings.bench_report import CONSOLE, HEADERS, cells
    from terrastill.progress import progress_bar

    chosen = parse_bench_methods(methods)
    with progress_bar("methods", console) as prog:
        task = prog.add_task("embed-bench", total=len(chosen))
        summary = run_bench(emb, chosen, seed=seed, k=k, bootstrap=bootstrap,
                            on_method=lambda _name: prog.advance(task))
    paths = write_outputs(summary, out)
    c = summary["counts"]
    table = Table(title=f"{summary['rows']} rows × {summary['dim']} dims, {c['test']} test "
                        f"rows ({summary['split']})", header_style="bold")
    for i in CONSOLE:
        table.add_column(HEADERS[i], justify="left" if HEADERS[i] in ("method", "note")
                         else "right")
    for r in summary["methods"]:
        row = cells(r)
        table.add_row(*(row[i] for i in CONSOLE))
    console.print(table)
    console.print(f"[green]results[/] {paths['md']}, {paths['csv']}, {paths['json']}, "
                  f"{paths['png']} ({summary['elapsed_s']:.1f} s)", highlight=False)
