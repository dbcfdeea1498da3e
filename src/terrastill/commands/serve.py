"""``terrastill serve``: the jobs API, tiles and the web map in one process."""

from __future__ import annotations

from pathlib import Path

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging
from terrastill.errors import BadInputError


@handle_errors
def serve(
    models: Path = typer.Option(
        ..., "--models", help="Folder of model files (*.pt) to offer.", file_okay=False
    ),
    data: Path = typer.Option(
        Path("terrastill-serve"), "--data", help="Job store and job outputs.", file_okay=False
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="TERRASTILL_TOKEN",
        help="Bearer token every /api route requires (env TERRASTILL_TOKEN). Default: none.",
        show_default=False,
    ),
    catalog: str | None = typer.Option(
        None, "--catalog", help="Catalogue URL or path for predictions (default: the model's)."
    ),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Jobs run at once."),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        help="Run jobs on this Dask scheduler (e.g. tcp://10.0.0.5:8786); the workers must "
        "see --data at the same path.",
    ),
    cors_origin: list[str] = typer.Option(
        [], "--cors-origin", help="Allow this browser origin (repeatable). Default: none."
    ),
    max_aoi_km2: float = typer.Option(
        2500.0, "--max-aoi-km2", min=0.001, help="Largest total AOI area of one job."
    ),
    max_body_bytes: int = typer.Option(
        1_000_000, "--max-body-bytes", min=1024, help="Largest request body."
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth",
        help="Serve without a token on a non-loopback address (anyone who reaches it can run "
             "jobs). Without it such a server refuses to start."),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host",
        help="Host header value to serve (repeatable; '*' for any). Default: localhost names, "
             "plus --host when it is a specific address."),
    basemap: str | None = typer.Option(
        None, "--basemap",
        help="XYZ tile URL template of an external basemap under the map "
             "(e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png); default: none, offline."),
    public_url: str | None = typer.Option(
        None, "--public-url",
        help="Base URL clients reach this server at, for TileJSON links (behind a proxy)."),
    indexes: Path | None = typer.Option(
        None, "--indexes", file_okay=False,
        help="Folder of search indexes (terrastill index) to offer for search by example."),
    vlm: list[Path] = typer.Option(
        [], "--vlm",
        help="A text-aligned model (terrastill align; repeatable): indexes of its student's "
             "embeddings become searchable by text in the map's Search panel."),
    changes: Path | None = typer.Option(
        None, "--changes", file_okay=False,
        help="Folder of change products (terrastill change) for the map's Change mode."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log requests and jobs."),
    config: Path | None = ConfigOption,
) -> None:
    """Serve the jobs API, tiles and the web map.

    Example: terrastill serve --models demo-out/serve-models --data demo-out/serve --port 8000
    then open http://127.0.0.1:8000/ in a browser.
    """
    import uvicorn
    from pydantic import ValidationError

    from terrastill.app.main import create_app
    from terrastill.app.settings import LOCAL_HOSTS, LOOPBACK, Settings

    setup_logging(verbose)
    if not models.is_dir():
        raise BadInputError(f"--models {models}: no such folder")
    if indexes is not None and not indexes.is_dir():
        raise BadInputError(f"--indexes {indexes}: no such folder")
    if changes is not None and not changes.is_dir():
        raise BadInputError(f"--changes {changes}: no such folder")
    if vlm:
        if indexes is None:
            raise BadInputError("--vlm searches indexes by text: give --indexes too")
        from terrastill.embeddings.vlm import load_vlm

        for path in vlm:
            load_vlm(path)  # a wrong file fails now, in one line, not at the first search
    if token is not None and not token.strip():
        raise BadInputError("--token is blank (or TERRASTILL_TOKEN is set but empty): give a "
                            "real token, or none for a local server")
    loopback = host in LOOPBACK or host.startswith("127.")
    if not loopback and token is None:
        if not no_auth:
            raise BadInputError(f"--host {host}: refusing to serve beyond this machine without "
                                "a --token (pass --no-auth to do so knowingly)")
        console.print(f"[yellow]warning:[/] serving on {host} without authentication: anyone "
                      "who reaches it can run jobs", highlight=False)
    hosts = list(allowed_host) or [*LOCAL_HOSTS, *([host] if host not in
                                                   ("0.0.0.0", "::", *LOCAL_HOSTS) else [])]
    try:
        settings = Settings(
            models_dir=models,
            data_dir=data,
            catalog=catalog,
            token=token,
            cors_origins=tuple(cors_origin),
            workers=workers,
            scheduler=scheduler,
            max_aoi_km2=max_aoi_km2,
            max_body_bytes=max_body_bytes,
            allowed_hosts=tuple(hosts),
            public_url=public_url,
            basemap=basemap,
            indexes_dir=indexes,
            changes_dir=changes,
            vlm_files=list(vlm),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadInputError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") \
            from None
    app = create_app(settings)
    n = len(list(models.glob("*.pt")))
    if n == 0:
        console.print(f"[yellow]warning:[/] {models} holds no model files (*.pt): the map will "
                      "offer no model (the demo's are in demo-out/serve-models)", highlight=False)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    console.print(
        f"serving {n} model file(s) from {models} at [bold]http://{shown}:{port}/[/]"
        + (" (token required)" if settings.token else ""),
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning")
