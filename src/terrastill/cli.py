"""The ``terrastill`` command line: one thin sub-command per pipeline stage."""

from __future__ import annotations

import importlib

import typer

from terrastill import __version__

app = typer.Typer(
    name="terrastill",
    help="From geolocated field observations to a deployed, compute-efficient map model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (command name, module under terrastill.commands, function): modules keep heavy imports
# (torch, rasterio) inside the function bodies so `terrastill --help` stays fast.
COMMANDS = [
    ("world", "world", "world"),
    ("chips", "chips", "chips"),
    ("split", "chips", "split"),
    ("train", "train", "train"),
    ("evaluate", "train", "evaluate"),
    ("distill", "distill", "distill"),
    ("predict", "predict", "predict"),
    ("serve", "serve", "serve"),
    ("bench", "bench", "bench"),
    ("demo", "demo", "demo"),
    ("pretrain", "pretrain", "pretrain"),
    ("embed", "embed", "embed"),
    ("compress", "compress", "compress"),
    ("decompress", "compress", "decompress"),
    ("embed-bench", "embed_bench", "embed_bench"),
    ("index", "search", "index"),
    ("search", "search", "search"),
    ("change", "change", "change"),
    ("change-fit", "change", "change_fit"),
    ("change-map", "change", "change_map"),
    ("zonal", "zonal", "zonal"),
    ("probe", "zonal", "probe"),
    ("spectral-distill", "sattxt", "spectral_distill"),
    ("align", "sattxt", "align"),
    ("zeroshot", "sattxt", "zeroshot"),
    ("retrieve", "sattxt", "retrieve"),
    ("superres", "superres", "superres"),
    ("diagnose", "diagnose", "diagnose"),
]

for _name, _module, _func in COMMANDS:
    try:
        _mod = importlib.import_module(f"terrastill.commands.{_module}")
    except ModuleNotFoundError as _exc:  # a stage not built yet in this checkout
        if _exc.name != f"terrastill.commands.{_module}":
            raise
        continue
    app.command(_name)(getattr(_mod, _func))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"terrastill {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """terrastill: chips → teacher → student → prediction → service."""


if __name__ == "__main__":
    app()
