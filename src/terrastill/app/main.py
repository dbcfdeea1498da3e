"""``create_app(settings)``: the FastAPI application behind ``terrastill serve``."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from terrastill import __version__
from terrastill.app.coverage import catalog_extent, local_items
from terrastill.app.jobs import JobStore
from terrastill.app.registry import CardReader, ModelRegistry
from terrastill.app.routes import build_router
from terrastill.app.runner import JobRunner, PredictFn
from terrastill.app.safety import clean, scrub_paths
from terrastill.app.settings import Settings
from terrastill.app.tilepool import TilePool
from terrastill.errors import BadInputError, TerrastillError

log = logging.getLogger(__name__)
PACKAGED_STATIC = Path(__file__).parent / "static"

# The web map needs blob: workers and data:/blob: images (MapLibre); nothing from elsewhere.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; worker-src 'self' blob:; "
    "child-src blob:; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass
class Services:
    store: JobStore
    runner: JobRunner
    registry: ModelRegistry
    web_map: bool
    catalog: str | None = None
    _home: list[float] | None = None
    _home_done: bool = False

    def locations(self) -> list[str]:
        """Catalogues the jobs read: the server's, else the models' own."""
        found = [self.catalog] + [m["input_spec"].get("catalog") for m in self.registry.list()]
        return [str(loc) for loc in found if loc]

    def home(self) -> list[float] | None:
        """Lon/lat extent of the imagery (local catalogue: the server's, else the models'),
        so the web map can open where predictions are possible; None when unknown."""
        if not self._home_done:
            self._home = catalog_extent(self.locations())
            self._home_done = True
        return self._home

    def catalog_items(self) -> list[Any]:
        """The items of the first readable local catalogue (none for STAC APIs)."""
        return local_items(self.locations())


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by header or by counting."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0
        too_big = False
        replaced = False

        async def counted() -> Message:
            # Past the limit the app gets an empty, final chunk; its answer is replaced below.
            nonlocal seen, too_big
            if too_big:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_big = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if not too_big:
                await send(message)
            elif not replaced:
                replaced = True
                await self._refuse(scope, receive, send)

        await self.app(scope, counted, guarded_send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body larger than {self.limit} bytes"}, status_code=413
        )
        await response(scope, receive, send)


class SecurityHeaders:
    """nosniff, no referrer, no framing and a same-origin CSP on every response (images may
    also come from the configured basemap's origin)."""

    def __init__(self, app: ASGIApp, image_origin: str | None = None) -> None:
        self.app = app
        self.csp = CSP if not image_origin else CSP.replace(
            "img-src 'self' data: blob:", f"img-src 'self' data: blob: {image_origin}").replace(
            "connect-src 'self'", f"connect-src 'self' {image_origin}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", self.csp.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _lock_data_dir(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / ".serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise BadInputError(
            f"{data_dir}: another terrastill server uses this data folder; give each its own"
        ) from exc
    return fd


def create_app(
    settings: Settings,
    *,
    predict_fn: PredictFn | None = None,
    request_cls: Any = None,
    read_card: CardReader | None = None,
    dask_client: Any = None,
) -> FastAPI:
    """The service. The keyword arguments replace real parts in tests only."""
    static_dir = settings.static_dir or PACKAGED_STATIC
    web_map = (static_dir / "vendor" / "maplibre-gl.js").is_file()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lock = _lock_data_dir(settings.data_dir)
        store = JobStore(settings.db_path)
        runner = JobRunner(settings, store, predict_fn, request_cls, client=dask_client)
        app.state.services = Services(
            store=store,
            runner=runner,
            registry=ModelRegistry(settings.models_dir, read_card),
            web_map=web_map,
            catalog=settings.catalog,
        )
        app.state.tile_pool = TilePool(settings.tile_workers, settings.tile_queue,
                                       settings.tile_timeout_s)
        runner.start()
        try:
            yield
        finally:
            app.state.tile_pool.shutdown()
            runner.stop()
            store.close()
            os.close(lock)

    # no /docs or /redoc: their pages load Swagger UI / ReDoc from a CDN, which an offline
    # server cannot reach; the schema itself stays at /openapi.json
    app = FastAPI(
        title="terrastill",
        version=__version__,
        description="Prediction jobs over areas of interest, their tiles, and a web map.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(TerrastillError)
    async def terrastill_error(_request: Request, exc: TerrastillError) -> JSONResponse:
        return JSONResponse({"detail": clean(scrub_paths(str(exc)))},
                            status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # the default handler echoes the input back, and NaN, ±Infinity or a lone surrogate
        # in it cannot be written as JSON (a 500): report where and what, not the value
        detail = [
            {"loc": clean(list(e.get("loc", ()))), "msg": clean(e.get("msg", "")),
             "type": clean(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    app.include_router(build_router(settings))
    if settings.indexes_dir is not None:
        from terrastill.app.search import build_search_router

        app.include_router(build_search_router(settings))
    if settings.changes_dir is not None:
        from terrastill.app.change import build_change_router

        app.include_router(build_change_router(settings))
    if static_dir.is_dir():
        app.mount("/", StaticFiles(directory=static_dir, html=True), name="web")
    if not web_map:
        log.warning(
            "the web map's MapLibre files are missing from %s/vendor; build them with "
            "`npm ci --prefix web && npm run --prefix web build`",
            static_dir,
        )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders, image_origin=_origin(settings.basemap))
    if "*" not in settings.allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    return app
