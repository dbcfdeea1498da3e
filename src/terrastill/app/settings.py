"""Everything the service can be told at start-up, in one validated object."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Settings(BaseModel):
    """Options of ``terrastill serve``; the routes, limits and runner are built from these."""

    model_config = ConfigDict(frozen=True)

    models_dir: Path = Field(description="Folder whose *.pt model files are offered.")
    data_dir: Path = Field(description="Job store (SQLite) and job outputs live here.")
    catalog: str | None = Field(None, description="Catalogue URL or path; None: model default.")
    token: str | None = Field(None, description="Bearer token required on every /api route.")
    cors_origins: tuple[str, ...] = Field((), description="Allowed CORS origins; none: closed.")
    workers: int = Field(1, ge=1, le=64, description="Jobs run at once (in-process pool).")
    scheduler: str | None = Field(None, description="Dask scheduler address for the jobs.")
    max_aoi_km2: float = Field(2500.0, gt=0, description="Largest total AOI area of one job.")
    max_aois: int = Field(16, ge=1, description="Most AOIs (boxes/polygons) in one job.")
    max_vertices: int = Field(10_000, ge=4, description="Most polygon vertices in one job.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body.")
    max_pending_jobs: int = Field(100, ge=1, description="Queued+running jobs before 429.")
    max_attempts: int = Field(2, ge=1, description="Runs of a job interrupted by restarts.")
    truecolor_max: float = Field(0.3, gt=0, description="Reflectance shown as full brightness.")
    static_dir: Path | None = Field(None, description="Web map folder; None: the packaged one.")
    allowed_hosts: tuple[str, ...] = Field(
        LOCAL_HOSTS, description="Host header values served (TrustedHostMiddleware); '*': any.")
    tile_workers: int = Field(4, ge=1, le=64, description="Threads rendering tiles.")
    tile_queue: int = Field(64, ge=1, description="Tiles rendering or waiting before 503.")
    tile_timeout_s: float = Field(10.0, gt=0, description="Time budget of one tile (503 past).")
    basemap: str | None = Field(
        None, description="XYZ tile URL template of an external basemap ({z}/{x}/{y}).")
    public_url: str | None = Field(
        None, description="Base URL clients reach the server at (TileJSON links); None: the "
                          "request's own.")
    indexes_dir: Path | None = Field(
        None, description="Search indexes (a folder holding index folders, or one index); "
                          "None: no search routes.")
    vlm_files: list[Path] = Field(
        default_factory=list,
        description="Text-aligned models (`terrastill align`): an index of a VLM student's "
                    "embeddings can then be searched by text.")
    changes_dir: Path | None = Field(
        None, description="Change products (a folder of `terrastill change` outputs, or one); "
                          "None: no change routes.")

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("the token is blank: give a real token, or none for a local "
                             "server without authentication")
        return v

    @field_validator("basemap")
    @classmethod
    def _basemap(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v.startswith(("http://", "https://")) or not all(
                k in v for k in ("{z}", "{x}", "{y}")):
            raise ValueError(f"basemap {v!r} must be an http(s) URL template with {{z}}, {{x}} "
                             "and {y}")
        return v

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"public URL {v!r} must start with http:// or https://")
        return v.rstrip("/")

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite"
