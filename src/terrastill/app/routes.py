"""The API routes, built once from the settings (TiTiler's factory habit).

Every route lives on one router whose dependencies carry the bearer-token check, so no route can
be added without it. Jobs are addressed by id only (32 hex digits, checked by the path pattern);
the files behind a job are found from the job's own row, never from anything the client sends.
"""

import datetime as dt
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import rasterio.errors
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from shapely import GEOSException
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from titiler.core.models.mapbox import TileJSON

from terrastill import __version__
from terrastill.app import imagery, tiles
from terrastill.app.auth import token_dependency
from terrastill.app.jobs import JOB_ID_PATTERN, STAGES, Job
from terrastill.app.safety import scrub_paths, scrub_value
from terrastill.app.settings import Settings
from terrastill.errors import AssetReadError, BadInputError, NotFoundError
from terrastill.inference.aoi import area_km2, validate_aois

# --- request and response models -----------------------------------------------------------
EARLIEST_DATE = dt.date(1980, 1, 1)  # no earlier imagery is served by any supported source
Coord = Annotated[float, Field(allow_inf_nan=False)]
BBox = Annotated[
    list[Coord], Field(min_length=4, max_length=4, description="minx, miny, maxx, maxy")
]
Position = Annotated[list[Coord], Field(min_length=2, max_length=3)]


class PolygonGeometry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["Polygon"]
    coordinates: list[list[Position]] = Field(min_length=1)


class MultiPolygonGeometry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["MultiPolygon"]
    coordinates: list[list[list[Position]]] = Field(min_length=1)


class JobRequest(BaseModel):
    """A prediction job: where (lon/lat, EPSG:4326), when, and with which model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"aois": [[10.0, 45.0, 10.05, 45.05]], "date": "2024-06-01", "model": "student"}
            ]
        },
    )
    aois: list[BBox] | PolygonGeometry | MultiPolygonGeometry = Field(
        description="One or more bboxes [minx, miny, maxx, maxy], or a GeoJSON (Multi)Polygon."
    )
    date: dt.date = Field(description="ISO date YYYY-MM-DD.")
    model: str = Field(min_length=1, max_length=200, description="A name from GET /api/models.")
    max_cloud: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = Field(
        None, description="Cloud-cover limit in percent; default: the model's."
    )
    tolerance: Annotated[int, Field(ge=0, le=366)] | None = Field(
        None, description="Days either side of the date; default: the model's."
    )

    @field_validator("date", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> Any:
        if not isinstance(v, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            raise ValueError("date must be an ISO date string YYYY-MM-DD, e.g. 2024-06-01")
        return v

    @field_validator("date")
    @classmethod
    def _sane_date(cls, v: dt.date) -> dt.date:
        last = dt.date.today() + dt.timedelta(days=366)
        if not EARLIEST_DATE <= v <= last:
            raise ValueError(f"date must be between {EARLIEST_DATE} and {last} (one year from "
                             "today)")
        return v

    @field_validator("model")
    @classmethod
    def _plain_text(cls, v: str) -> str:
        if any(0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x20 for c in v):
            raise ValueError("model must be plain text (no control characters or lone "
                             "surrogates)")
        return v


class ClassInfo(BaseModel):
    id: int
    name: str
    color: str


class ModelInfo(BaseModel):
    name: str = Field(description="What POST /api/jobs takes as `model` (the file stem).")
    file: str
    title: str
    task: str
    role: Literal["teacher", "student"]
    classes: list[ClassInfo]
    input_spec: dict[str, Any]
    metrics: dict[str, Any]
    params: int | None
    macs: Any = None
    depth: Any = None
    teacher: Any = None
    size_mb: float


class StageStatus(BaseModel):
    name: str
    state: Literal["pending", "running", "done"]
    progress: float = Field(ge=0, le=100)


class JobLinks(BaseModel):
    self: str
    tilejson: dict[str, str] = Field(description="layer → TileJSON URL (when done).")
    download: dict[str, list[str]] = Field(description="layer → COG URLs, one per part.")


class JobStatus(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    model: str
    date: str
    aois: list[dict[str, Any]] = Field(description="GeoJSON geometries (EPSG:4326).")
    bounds: list[float] = Field(description="Lon/lat bounds of all AOIs.")
    max_cloud: float | None
    tolerance: int | None
    created: dt.datetime
    started: dt.datetime | None
    finished: dt.datetime | None
    progress: float = Field(ge=0, le=100)
    stage: str | None
    stages: list[StageStatus]
    timings: dict[str, float]
    error: str | None
    note: str | None
    valid_share: float | None = Field(
        None, description="Share of the AOI that got a prediction (the rest: no usable "
                          "imagery, e.g. cloud)")
    classes: list[ClassInfo]
    layers: list[str]
    links: JobLinks


class CatalogInfo(BaseModel):
    extent: list[float] | None = Field(description="Lon/lat extent of the imagery.")
    dates: list[str] = Field(description="Acquisition dates with true-colour imagery.")
    start: str | None
    end: str | None
    suggested: str | None = Field(
        None, description="The latest date whose time steps are clear by the scenes' cloud "
                          "cover, for the model: the map's default date.")
    basemap: str | None = Field(None, description="External basemap XYZ URL template.")


class JobCreated(BaseModel):
    id: str
    status: str
    url: str


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    models: int
    jobs: dict[str, int]
    runner: str
    web_map: bool
    auth: bool
    home: list[float] | None = Field(
        None, description="Lon/lat extent of the imagery, where the map opens."
    )


class ErrorMessage(BaseModel):
    detail: Any


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "Missing or wrong bearer token",
        404: "No such job (or layer)",
        409: "The job has no products (yet)",
        413: "Request body too large",
        422: "Invalid input",
        429: "Too many jobs pending",
        503: "Too many tiles rendering, or the tile took too long (retry)",
        502: "A product file could not be read",
    }
    return {c: {"model": ErrorMessage, "description": text[c]} for c in codes}


# --- AOI checks ------------------------------------------------------------------------------
def parse_aois(aois: Any, settings: Settings) -> list[BaseGeometry]:
    """The request's AOIs as valid shapely geometries within this server's limits."""
    geoms: list[BaseGeometry] = []
    if isinstance(aois, list):
        if not aois:
            raise BadInputError("aois: give at least one bbox")
        for i, (minx, miny, maxx, maxy) in enumerate(aois):
            if not (minx < maxx and miny < maxy):
                raise BadInputError(
                    f"aois[{i}]: bbox {[minx, miny, maxx, maxy]} is empty or inverted "
                    "(want minx < maxx and miny < maxy)"
                )
            geoms.append(box(minx, miny, maxx, maxy))
    else:
        coords = [aois.coordinates] if aois.type == "Polygon" else aois.coordinates
        n_vertices = sum(len(ring) for poly in coords for ring in poly)
        if n_vertices > settings.max_vertices:
            raise BadInputError(f"aois: {n_vertices} vertices, at most {settings.max_vertices}")
        try:
            geom = shape(aois.model_dump())
        except (ValueError, TypeError, IndexError, GEOSException) as exc:
            raise BadInputError(f"aois: not a valid GeoJSON {aois.type} ({exc})") from exc
        geoms.extend(getattr(geom, "geoms", [geom]))
    if len(geoms) > settings.max_aois:
        raise BadInputError(f"aois: {len(geoms)} areas, at most {settings.max_aois} per job")
    geoms = validate_aois(geoms, math.inf)  # validity and lon/lat range
    total = area_km2(unary_union(geoms))
    if not math.isfinite(total) or total > settings.max_aoi_km2:
        raise BadInputError(
            f"aois: total area {total:,.1f} km² is larger than this server's limit of "
            f"{settings.max_aoi_km2:,.1f} km²"
        )
    return geoms


# --- the factory ------------------------------------------------------------------------------
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="32 hex digits.")]
Layer = Literal["classes", "truecolor"]
DownloadLayer = Literal["classes", "truecolor", "probabilities"]


def build_router(settings: Settings) -> APIRouter:
    """All /api routes; the token check (when configured) is a dependency of the router."""
    require_token = token_dependency(settings)

    router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=_errors(401))

    def services(request: Request) -> Any:
        return request.app.state.services

    def get_job(request: Request, job_id: str) -> Job:
        job = services(request).store.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}")
        return job

    def product_paths(request: Request, job: Job, layer: str) -> list[Path]:
        if job.status != "done" or not job.result:
            raise HTTPException(409, f"job {job.id} is {job.status}: it has no products yet")
        root = services(request).runner.job_dir(job.id).resolve()
        paths = []
        for rel in job.result.get(layer) or []:
            p = (root / rel).resolve()
            if not p.is_relative_to(root) or not p.is_file():
                raise NotFoundError(f"job {job.id}: the {layer} product file is missing")
            paths.append(p)
        if not paths:
            raise NotFoundError(f"job {job.id} has no {layer} layer")
        return paths

    def status_of(request: Request, job: Job) -> JobStatus:
        r = job.request
        base = f"{request.scope.get('root_path', '')}/api/jobs/{job.id}"
        layers = []
        download: dict[str, list[str]] = {}
        if job.status == "done" and job.result:
            for layer in ("classes", "truecolor", "probabilities"):
                n = len(job.result.get(layer) or [])
                if n:
                    download[layer] = [f"{base}/download?layer={layer}&part={i}" for i in range(n)]
                    if layer in tiles.LAYERS:
                        layers.append(layer)
        current = job.stage

        def stage_state(s: str) -> str:
            frac = job.stages.get(s, 0.0)
            if frac >= 1.0 or job.status == "done":
                return "done"
            return "running" if s == current else "pending"

        def ts(v: float | None) -> dt.datetime | None:
            return dt.datetime.fromtimestamp(v, dt.UTC) if v is not None else None

        return JobStatus(
            id=job.id,
            status=job.status,  # type: ignore[arg-type]
            model=r["model"],
            date=r["date"],
            aois=r["aois"],
            bounds=r["bounds"],
            max_cloud=r.get("max_cloud"),
            tolerance=r.get("tolerance"),
            created=ts(job.created),  # type: ignore[arg-type]
            started=ts(job.started),
            finished=ts(job.finished),
            progress=job.progress,
            stage=current,
            stages=[
                StageStatus(
                    name=s,
                    state=stage_state(s),  # type: ignore[arg-type]
                    progress=100.0
                    if job.status == "done"
                    else round(100 * job.stages.get(s, 0.0), 1),
                )
                for s in STAGES
            ],
            timings=job.timings,
            error=scrub_paths(job.error) if job.error else None,
            note=job.note,
            valid_share=(job.result or {}).get("valid_share"),
            classes=[ClassInfo(**c) for c in r.get("classes", [])],
            layers=layers,
            links=JobLinks(
                self=base,
                tilejson={layer: f"{base}/tilejson.json?layer={layer}" for layer in layers},
                download=download,
            ),
        )

    @router.get("/health", response_model=Health, summary="Service health")
    def health(request: Request) -> Health:
        svc = services(request)
        return Health(
            status="ok",
            version=__version__,
            models=len(svc.registry.list()),
            jobs={
                "queued": len(svc.store.ids_with_status("queued")),
                "running": len(svc.store.ids_with_status("running")),
            },
            runner=svc.runner.scheduler,
            web_map=svc.web_map,
            auth=settings.token is not None,
            home=svc.home(),
        )

    @router.get("/models", response_model=list[ModelInfo], summary="Models this server offers")
    def list_models(request: Request) -> list[dict[str, Any]]:
        return scrub_value(services(request).registry.list())

    @router.post(
        "/jobs",
        response_model=JobCreated,
        status_code=201,
        summary="Submit a prediction job",
        responses=_errors(413, 422, 429),
    )
    def submit_job(request: Request, body: JobRequest, response: Response) -> JobCreated:
        svc = services(request)
        geoms = parse_aois(body.aois, settings)
        model = svc.registry.get(body.model)
        extent = svc.home()
        if extent is not None and not unary_union(geoms).intersects(box(*extent)):
            raise BadInputError(
                "aois: outside the catalogue's coverage (its imagery spans lon "
                f"{extent[0]:.4f} to {extent[2]:.4f}, lat {extent[1]:.4f} to {extent[3]:.4f})")
        if svc.store.count_active() >= settings.max_pending_jobs:
            raise HTTPException(429, f"{settings.max_pending_jobs} jobs are pending; try later")
        minx, miny, maxx, maxy = unary_union(geoms).bounds
        job = svc.store.create(
            {
                "aois": [mapping(g) for g in geoms],
                "bounds": [minx, miny, maxx, maxy],
                "date": body.date.isoformat(),
                "model": model["name"],
                "model_file": model["file"],
                "max_cloud": body.max_cloud,
                "tolerance": body.tolerance,
                "classes": model["classes"],
            }
        )
        svc.runner.submit(job.id)
        url = f"{request.scope.get('root_path', '')}/api/jobs/{job.id}"
        response.headers["Location"] = url
        return JobCreated(id=job.id, status=job.status, url=url)

    @router.get("/jobs", response_model=list[JobStatus], summary="Jobs, newest first")
    def list_jobs(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[JobStatus]:
        return [status_of(request, j) for j in services(request).store.list(limit, offset)]

    @router.get(
        "/jobs/{job_id}", response_model=JobStatus, summary="A job's status", responses=_errors(404)
    )
    def job_status(request: Request, job_id: JobId) -> JobStatus:
        return status_of(request, get_job(request, job_id))

    @router.delete(
        "/jobs/{job_id}",
        response_model=JobStatus,
        summary="Cancel a job and remove its files",
        description="A queued or running job is cancelled (it stays listed as cancelled); a "
        "finished job is removed. Either way its files are deleted.",
        responses=_errors(404),
    )
    def delete_job(request: Request, job_id: JobId) -> JobStatus:
        svc = services(request)
        job = get_job(request, job_id)
        if job.status in ("queued", "running"):
            svc.runner.cancel(job_id)
            job = get_job(request, job_id)
        else:
            svc.runner.remove_files(job_id)
            svc.store.delete(job_id)
        return status_of(request, job)

    @router.get(
        "/jobs/{job_id}/tilejson.json",
        response_model=TileJSON,
        response_model_exclude_none=True,
        summary="TileJSON of a job's layer (WebMercatorQuad)",
        responses=_errors(404, 409, 502),
    )
    def tilejson(request: Request, job_id: JobId, layer: Layer = "classes") -> TileJSON:
        job = get_job(request, job_id)
        paths = product_paths(request, job, layer)
        try:
            bounds, minzoom, maxzoom = tiles.products_info(paths)
        except rasterio.errors.RasterioError as exc:
            raise AssetReadError(f"job {job_id}: cannot read the {layer} product ({exc})") from exc
        base = settings.public_url or str(request.base_url).rstrip("/")
        return TileJSON(
            name=f"{job_id} {layer}",
            tiles=[f"{base}/api/jobs/{job_id}/tiles/{{z}}/{{x}}/{{y}}.png?layer={layer}"],
            minzoom=minzoom,
            maxzoom=maxzoom,
            bounds=bounds,
            attribution="terrastill",
        )

    @router.get(
        "/jobs/{job_id}/tiles/{z}/{x}/{y}.png",
        response_class=Response,
        summary="A PNG tile of a job's layer",
        responses={200: {"content": {"image/png": {}}, "description": "PNG tile"}}
        | _errors(404, 409, 502, 503),
    )
    async def tile(
        request: Request,
        job_id: JobId,
        z: Annotated[int, PathParam(ge=0, le=24)],
        x: Annotated[int, PathParam(ge=0)],
        y: Annotated[int, PathParam(ge=0)],
        layer: Layer = "classes",
    ) -> Response:
        if x >= 2**z or y >= 2**z:
            raise NotFoundError(f"tile {z}/{x}/{y} is outside the WebMercatorQuad grid")
        job = get_job(request, job_id)
        paths = product_paths(request, job, layer)
        try:
            _bounds, minzoom, _maxzoom = tiles.products_info(paths)
        except rasterio.errors.RasterioError as exc:
            raise AssetReadError(f"job {job_id}: cannot read the {layer} product ({exc})") from exc
        if z < minzoom:
            # a tile far larger than the product would warp a huge virtual raster for a few
            # pixels: below the TileJSON minzoom there is nothing worth drawing
            raise NotFoundError(f"zoom {z} is below the {layer} layer's minzoom {minzoom}: "
                                "the product is too small to show at this scale")
        aoi = job.request.get("aois")
        if layer == "classes":
            cmap = tiles.class_colormap([c["color"] for c in job.request.get("classes", [])])
            fn, args = tiles.render_classes, (paths, z, x, y, cmap, aoi)
        else:
            fn, args = tiles.render_truecolor, (paths, z, x, y, settings.truecolor_max, aoi)
        try:
            content = await request.app.state.tile_pool.render(request, fn, *args)
        except rasterio.errors.RasterioError as exc:
            raise AssetReadError(f"job {job_id}: cannot read the {layer} product ({exc})") from exc
        return Response(
            content, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    @router.get("/catalog", response_model=CatalogInfo, summary="Where and when there is imagery")
    def catalog_info(
        request: Request,
        model: Annotated[str | None, Query(max_length=200, description=(
            "Suggest a date for this model's time steps (default: the first model)"))] = None,
    ) -> CatalogInfo:
        svc = services(request)
        items = svc.catalog_items()
        dates = imagery.dates_of(items)
        models = svc.registry.list()
        spec = (svc.registry.get(model) if model else models[0] if models else {}).get(
            "input_spec")
        return CatalogInfo(extent=svc.home(), dates=dates, start=dates[0] if dates else None,
                           end=dates[-1] if dates else None,
                           suggested=imagery.suggested_date(items, spec),
                           basemap=settings.basemap)

    def imagery_of(request: Request, day: dt.date) -> tuple[str, list[Any]]:
        items = services(request).catalog_items()
        chosen = imagery.nearest_date(imagery.dates_of(items), day)
        if chosen is None:
            raise NotFoundError(f"no true-colour imagery in the catalogue within "
                                f"{imagery.MAX_DAYS} days of {day}")
        return chosen, imagery.items_on(items, chosen)

    @router.get(
        "/imagery/tilejson.json",
        response_model=TileJSON,
        response_model_exclude_none=True,
        summary="TileJSON of the catalogue's true-colour imagery on the date nearest `date`",
        responses=_errors(404, 502),
    )
    def imagery_tilejson(request: Request, date: dt.date) -> TileJSON:
        chosen, items = imagery_of(request, date)
        try:
            bounds, minzoom, maxzoom = imagery.layer_info(items)
        except rasterio.errors.RasterioError as exc:
            raise AssetReadError(f"imagery of {chosen}: cannot read ({exc})") from exc
        base = settings.public_url or str(request.base_url).rstrip("/")
        return TileJSON(name=f"imagery {chosen}", bounds=bounds, minzoom=minzoom,
                        maxzoom=maxzoom, attribution="catalogue imagery",
                        tiles=[f"{base}/api/imagery/tiles/{{z}}/{{x}}/{{y}}.png?date={chosen}"])

    @router.get(
        "/imagery/tiles/{z}/{x}/{y}.png",
        response_class=Response,
        summary="A true-colour PNG tile of the catalogue's imagery on the date nearest `date`",
        responses={200: {"content": {"image/png": {}}, "description": "PNG tile"}}
        | _errors(404, 502, 503),
    )
    async def imagery_tile(
        request: Request,
        z: Annotated[int, PathParam(ge=0, le=24)],
        x: Annotated[int, PathParam(ge=0)],
        y: Annotated[int, PathParam(ge=0)],
        date: dt.date,
    ) -> Response:
        if x >= 2**z or y >= 2**z:
            raise NotFoundError(f"tile {z}/{x}/{y} is outside the WebMercatorQuad grid")
        chosen, items = imagery_of(request, date)
        try:
            _bounds, minzoom, _maxzoom = imagery.layer_info(items)
            if z < minzoom:
                raise NotFoundError(f"zoom {z} is below the imagery's minzoom {minzoom}")
            content = await request.app.state.tile_pool.render(
                request, imagery.render_imagery, items, z, x, y, settings.truecolor_max)
        except rasterio.errors.RasterioError as exc:
            raise AssetReadError(f"imagery of {chosen}: cannot read ({exc})") from exc
        return Response(content, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @router.get(
        "/jobs/{job_id}/download",
        response_class=FileResponse,
        summary="Download a job's product COG",
        responses={200: {"content": {"image/tiff": {}}, "description": "Cloud-Optimized GeoTIFF"}}
        | _errors(404, 409, 502),
    )
    def download(
        request: Request,
        job_id: JobId,
        layer: DownloadLayer = "classes",
        part: Annotated[int, Query(ge=0, le=999, description="Product part (UTM zone)")] = 0,
    ) -> FileResponse:
        job = get_job(request, job_id)
        paths = product_paths(request, job, layer)
        if part >= len(paths):
            raise NotFoundError(f"job {job_id}: the {layer} layer has {len(paths)} part(s)")
        suffix = f"-{part}" if len(paths) > 1 else ""
        try:  # a product that does not open is not sent: its bytes would be as broken
            with rasterio.open(paths[part]) as src:
                src.read(1, window=((0, min(1, src.height)), (0, min(1, src.width))))
        except rasterio.errors.RasterioError as exc:
            raise AssetReadError(f"job {job_id}: the {layer} product cannot be read "
                                 f"({exc})") from exc
        return FileResponse(
            paths[part],
            media_type="image/tiff",
            filename=f"terrastill-{job_id}-{layer}{suffix}.tif",
        )

    return router
