"""Shared CLI plumbing: YAML ``--config`` defaults, error → exit-code mapping, rich console."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import typer
import yaml
from rich.console import Console

from terrastill.errors import TerrastillError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _config_error(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] --config {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _load_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Eager callback: read a YAML file and use it as the command's option defaults."""
    if value is None:
        return None
    try:
        data = yaml.safe_load(Path(value).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise _config_error(f"{value}: cannot read YAML ({exc})") from None
    if not isinstance(data, dict):
        raise _config_error(f"{value}: expected a mapping of option names to values")
    defaults = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise _config_error(f"{value}: unknown option {unknown[0]!r}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOption = typer.Option(
    None,
    "--config",
    help="YAML file whose keys are this command's option names (CLI flags win).",
    is_eager=True,
    callback=_load_config,
    exists=False,
)


def handle_errors(fn: F) -> F:
    """Run a command body, turning terrastill errors into one red line and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TerrastillError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: re-run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool) -> None:
    """Library logging to stderr through rich, at INFO with ``-v`` and WARNING otherwise."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
