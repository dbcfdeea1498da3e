"""A real STAC API on loopback for tests: stac-fastapi-pgstac over a throwaway PostgreSQL.

- :class:`PgCluster`: ``initdb`` + ``pg_ctl start`` in a temporary folder on a free loopback
  port (as the ``postgres`` user when the tests run as root), torn down at the end.
- :class:`PgStacService`: one cluster, one ``pgstac`` template database migrated once with
  pypgstac; :meth:`PgStacService.serve` copies the template into a fresh database (fast),
  loads collections and items with pypgstac and starts stac-fastapi-pgstac under uvicorn in a
  subprocess, returning its URL. Different item sets (file hrefs, HTTP hrefs) and different
  enabled extensions (CQL2 filter only, query only) each get their own database/server.
- :class:`StaticFileServer`: a threaded HTTP file server with ``Range`` support, so assets can
  be read by GDAL over ``/vsicurl/`` (and through :class:`faultproxy.FaultProxy`).

Pytest fixtures (import them into a test module: ``from stac_server import pgstac, ...``):

- ``pgstac`` (session): a started :class:`PgStacService`; skips with a reason when PostgreSQL's
  binaries are not installed (``/usr/lib/postgresql/*/bin/pg_ctl``).
- ``static_server_factory`` (session): ``factory(folder) -> StaticFileServer`` (started).

Environment: ``TERRASTILL_PG_BIN`` overrides the PostgreSQL bin folder.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger(__name__)
PG_USER = "postgres"
PG_PASSWORD = "terrastill"  # trust auth on loopback; stac-fastapi insists on a value


# --------------------------------------------------------------------------------------------
# PostgreSQL


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding ``pg_ctl`` (or $TERRASTILL_PG_BIN)."""
    env = os.environ.get("TERRASTILL_PG_BIN")
    if env:
        return Path(env) if (Path(env) / "pg_ctl").exists() else None
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def postgis_available(pg_bin: Path) -> bool:
    version = pg_bin.parent.name
    return bool(glob.glob(f"/usr/share/postgresql/{version}/extension/postgis.control"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """A throwaway PostgreSQL cluster (trust auth, loopback only, no fsync)."""

    def __init__(self, pg_bin: Path, root: Path | None = None):
        self.pg_bin = pg_bin
        self.root = Path(root or tempfile.mkdtemp(prefix="terrastill-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self._started = False

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.pg_bin / args[0]), *args[1:]]
        if self.as_root:  # PostgreSQL refuses to run as root
            runuser = shutil.which("runuser")
            if runuser:
                return [runuser, "-u", PG_USER, "--", *cmd]
            return ["su", PG_USER, "-s", "/bin/sh", "-c", " ".join(cmd)]
        return cmd

    def _run(self, *args: str) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr or proc.stdout}"
            )

    @classmethod
    def reap_orphans(cls, pg_bin: Path) -> int:
        """Stop clusters of earlier test runs that died without tearing down (SIGKILL,
        timeout): those whose ``owner.pid`` names a process that no longer exists."""
        n = 0
        for owner in glob.glob(os.path.join(tempfile.gettempdir(), "terrastill-pg-*/owner.pid")):
            root = Path(owner).parent
            try:
                pid = int(Path(owner).read_text())
                os.kill(pid, 0)
                continue  # its owner is alive
            except ProcessLookupError:
                pass
            except (ValueError, OSError):
                continue
            orphan = cls(pg_bin, root)
            orphan._started = (root / "data" / "postmaster.pid").exists()
            orphan.stop()
            n += 1
        return n

    def start(self) -> PgCluster:
        (self.root / "owner.pid").write_text(str(os.getpid()))
        if self.as_root:
            shutil.chown(self.root, PG_USER)
            self.root.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        )
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "postgres.log"),
            "-w",
            "-t",
            "60",
            "-o",
            opts,
            "start",
        )
        self._started = True
        return self

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def stop(self) -> None:
        if self._started:
            with contextlib.suppress(RuntimeError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# stac-fastapi-pgstac


class StacApiServer:
    """stac-fastapi-pgstac under uvicorn in a subprocess, for one database."""

    def __init__(self, cluster: PgCluster, dbname: str, extensions: Iterable[str] | None = None):
        self.cluster = cluster
        self.dbname = dbname
        self.extensions = list(extensions) if extensions is not None else None
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> StacApiServer:
        env = {
            **os.environ,
            "PGUSER": PG_USER,
            "PGPASSWORD": PG_PASSWORD,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.cluster.port),
            "PGDATABASE": self.dbname,
            "POSTGRES_USER": PG_USER,
            "POSTGRES_PASS": PG_PASSWORD,
            "POSTGRES_HOST_READER": "127.0.0.1",
            "POSTGRES_HOST_WRITER": "127.0.0.1",
            "POSTGRES_PORT": str(self.cluster.port),
            "POSTGRES_DBNAME": self.dbname,
            "DB_MIN_CONN_SIZE": "1",
            "DB_MAX_CONN_SIZE": "4",
        }
        if self.extensions is not None:
            env["ENABLED_EXTENSIONS"] = ",".join(self.extensions)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "stac_fastapi.pgstac.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),  # no stray .env file is read
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stac-fastapi-pgstac exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_mgmt/ping", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"stac-fastapi-pgstac did not answer within {timeout}s")

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._log.close()


class PgStacService:
    """A PostgreSQL cluster with a migrated pgstac template and any number of STAC APIs."""

    TEMPLATE = "pgstac_template"

    def __init__(self, pg_bin: Path):
        self.cluster = PgCluster(pg_bin)
        self.servers: dict[str, StacApiServer] = {}
        self.timings: dict[str, float] = {}

    def start(self) -> PgStacService:
        t0 = time.monotonic()
        PgCluster.reap_orphans(self.cluster.pg_bin)
        self.cluster.start()
        self.timings["cluster"] = time.monotonic() - t0
        t1 = time.monotonic()
        self.cluster.execute(f"CREATE DATABASE {self.TEMPLATE}")
        self.cluster.execute(
            "CREATE EXTENSION IF NOT EXISTS postgis; CREATE EXTENSION IF NOT EXISTS btree_gist;",
            self.TEMPLATE,
        )
        from pypgstac.db import PgstacDB
        from pypgstac.migrate import Migrate

        with PgstacDB(dsn=self.cluster.dsn(self.TEMPLATE)) as db:
            Migrate(db).run_migration()
        self.timings["migrate"] = time.monotonic() - t1
        return self

    def serve(
        self,
        name: str,
        collections: list[dict[str, Any]],
        items: list[dict[str, Any]],
        *,
        extensions: Iterable[str] | None = None,
    ) -> str:
        """Load ``collections`` + ``items`` into database ``name``; start an API; its URL.

        Calling again with the same ``name`` returns the running server's URL (the data must
        then be the same). ``extensions``: stac-fastapi's ENABLED_EXTENSIONS (None = all).
        """
        if name in self.servers:
            return self.servers[name].url
        t0 = time.monotonic()
        db = f"stac_{name}".lower().replace("-", "_")
        self.cluster.execute(f"CREATE DATABASE {db} TEMPLATE {self.TEMPLATE}")
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods

        with PgstacDB(dsn=self.cluster.dsn(db)) as pg:
            loader = Loader(pg)
            loader.load_collections(iter(collections), Methods.insert)
            if items:
                loader.load_items(iter(items), Methods.insert)
        server = StacApiServer(self.cluster, db, extensions).start()
        self.servers[name] = server
        self.timings[f"serve:{name}"] = time.monotonic() - t0
        return server.url

    def stop(self) -> None:
        for s in self.servers.values():  # signal all first, then wait: stops in parallel
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()  # test servers: no graceful wait for keep-alive clients
        for s in self.servers.values():
            s.stop()
        self.servers.clear()
        self.cluster.stop()


# --------------------------------------------------------------------------------------------
# Static files with Range support (GDAL /vsicurl/ needs byte ranges)


class _RangeHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        try:
            unit, spec = rng.split("=", 1)
            first, _, last = spec.split(",")[0].strip().partition("-")
            if unit.strip() != "bytes":
                raise ValueError(unit)
            if first == "":
                start, end = max(0, size - int(last)), size - 1
            else:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
        except ValueError:
            self.send_error(HTTPStatus.BAD_REQUEST, "bad Range header")
            return None
        if start >= size or start > end:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f = path.open("rb")
        f.seek(start)
        data = f.read(end - start + 1)
        f.close()
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        import io

        return io.BytesIO(data)

    def end_headers(self) -> None:
        if self.headers.get("Range") is None:
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


class StaticFileServer:
    """Serve ``folder`` on ``http://127.0.0.1:<port>/`` with Range support."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder).resolve()
        folder_s = str(self.folder)

        class Handler(_RangeHandler):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, directory=folder_s, **kw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def href(self, path: str | os.PathLike[str]) -> str:
        rel = Path(path).resolve().relative_to(self.folder)
        return f"{self.url}/{rel.as_posix()}"

    def start(self) -> StaticFileServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------------------------
# Item helpers


def load_item_collection(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Features of an ItemCollection file with asset hrefs made absolute file paths."""
    path = Path(path).resolve()
    data = json.loads(path.read_text())
    feats = data["features"] if data.get("type") == "FeatureCollection" else [data]
    out = []
    for f in feats:
        f = json.loads(json.dumps(f))
        for a in f.get("assets", {}).values():
            href = a["href"]
            if "://" not in href and not href.startswith("/"):
                a["href"] = str((path.parent / href).resolve())
        out.append(f)
    return out


def rehref(items: list[dict[str, Any]], mapper: Any) -> list[dict[str, Any]]:
    """Copies of ``items`` with every asset href replaced by ``mapper(href)``."""
    out = []
    for f in items:
        g = json.loads(json.dumps(f))
        for a in g.get("assets", {}).values():
            a["href"] = mapper(a["href"])
        out.append(g)
    return out


def strip_links(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items without links (pgstac/stac-fastapi write their own)."""
    out = []
    for f in items:
        g = dict(f)
        g["links"] = []
        out.append(g)
    return out


def collection_for(items: list[dict[str, Any]], cid: str) -> dict[str, Any]:
    """A minimal valid STAC Collection covering ``items`` of collection ``cid``."""
    import shapely.geometry

    mine = [f for f in items if f.get("collection") == cid]
    geoms = [shapely.geometry.shape(f["geometry"]) for f in mine]
    bounds = shapely.union_all(geoms).bounds if geoms else (-180, -90, 180, 90)
    times = sorted(f["properties"].get("datetime") for f in mine if f["properties"].get("datetime"))
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": cid,
        "description": f"{cid} (test collection)",
        "license": "proprietary",
        "links": [],
        "extent": {
            "spatial": {"bbox": [list(bounds)]},
            "temporal": {"interval": [[times[0] if times else None, times[-1] if times else None]]},
        },
    }


# --------------------------------------------------------------------------------------------
# pytest fixtures


_SHARED: dict[str, Any] = {"service": None, "users": 0}


@pytest.fixture(scope="session")
def pgstac() -> Iterator[PgStacService]:
    """The session's PgStacService (one cluster, shared by every test module importing this
    fixture: pytest makes one session fixture per importing module, so they share a
    refcounted instance)."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        pytest.skip(
            "PostgreSQL not installed (no /usr/lib/postgresql/*/bin/pg_ctl): run "
            "scripts/setup_pgstac.sh (apt-get install postgresql postgresql-postgis)"
        )
    if not postgis_available(pg_bin):
        pytest.skip(f"PostGIS not installed for {pg_bin}: run scripts/setup_pgstac.sh")
    if _SHARED["service"] is None:
        t0 = time.monotonic()
        service = PgStacService(pg_bin)
        try:
            service.start()
        except Exception:
            service.stop()
            raise
        service.timings["total_start"] = time.monotonic() - t0
        log.info("pgstac service started in %.1fs (%s)", time.monotonic() - t0, service.timings)
        _SHARED["service"] = service
    _SHARED["users"] += 1
    try:
        yield _SHARED["service"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _SHARED["service"].stop()
            _SHARED["service"] = None


@pytest.fixture(scope="session")
def static_server_factory() -> Iterator[Any]:
    servers: dict[Path, StaticFileServer] = {}

    def factory(folder: str | os.PathLike[str]) -> StaticFileServer:
        key = Path(folder).resolve()
        if key not in servers:
            servers[key] = StaticFileServer(key).start()
        return servers[key]

    try:
        yield factory
    finally:
        for s in servers.values():
            s.stop()


# --------------------------------------------------------------------------------------------
# A tiny synthetic catalogue (until/besides the demo world): two collections, two tiles,
# items over a month with varied cloud cover (one without eo:cloud_cover), two COG assets each.

TINY_EPSG = 32633
TINY_TILES = {"33UXP": (500000.0, 5400000.0), "33UYP": (500960.0, 5400000.0)}


def make_tiny_catalog(folder: str | os.PathLike[str], size: int = 32) -> Path:
    """Write ``folder/catalog.json`` (ItemCollection, relative hrefs) + COGs; return its path."""
    import numpy as np
    import pystac
    import rasterio
    from affine import Affine
    from pyproj import Transformer

    folder = Path(folder)
    (folder / "assets").mkdir(parents=True, exist_ok=True)
    to_ll = Transformer.from_crs(TINY_EPSG, 4326, always_xy=True)
    rng = np.random.default_rng(7)
    items: list[pystac.Item] = []
    res = 30.0
    k = 0
    for cid, days in (("tiny-hls", range(1, 29, 3)), ("tiny-s2", range(2, 29, 5))):
        for tile, (x0, y0) in TINY_TILES.items():
            transform = Affine(res, 0.0, x0, 0.0, -res, y0)
            xs = [x0, x0 + size * res, x0 + size * res, x0, x0]
            ys = [y0, y0, y0 - size * res, y0 - size * res, y0]
            lon, lat = to_ll.transform(xs, ys)
            geom = {
                "type": "Polygon",
                "coordinates": [[list(p) for p in zip(lon, lat, strict=True)]],
            }
            bbox = [min(lon), min(lat), max(lon), max(lat)]
            for d in days:
                k += 1
                iid = f"{cid}_{tile}_202405{d:02d}"
                props: dict[str, Any] = {
                    "platform": "synthetic",
                    "proj:epsg": TINY_EPSG,
                    "proj:shape": [size, size],
                    "proj:transform": list(transform)[:6],
                    "mgrs:tile": tile,
                }
                if k % 7 != 0:  # every 7th item has no recorded cloud cover
                    props["eo:cloud_cover"] = float((k * 37) % 100)
                dt = datetime_utc(2024, 5, d, 10, 30)
                item = pystac.Item(iid, geom, bbox, dt, props, collection=cid)
                for key, dtype in (("red", "int16"), ("qa", "uint8")):
                    rel = f"assets/{iid}_{key}.tif"
                    arr = rng.integers(0, 3000 if key == "red" else 255, (size, size))
                    with rasterio.open(
                        folder / rel,
                        "w",
                        driver="COG",
                        width=size,
                        height=size,
                        count=1,
                        dtype=dtype,
                        crs=f"EPSG:{TINY_EPSG}",
                        transform=transform,
                        blocksize=16,
                        compress="deflate",
                    ) as dst:
                        dst.write(arr.astype(dtype)[None])
                    item.add_asset(
                        key, pystac.Asset(rel, media_type=pystac.MediaType.COG, roles=["data"])
                    )
                items.append(item)
    fc = {
        "type": "FeatureCollection",
        "features": [it.to_dict(transform_hrefs=False) for it in items],
    }
    for f in fc["features"]:
        f["links"] = []
    out = folder / "catalog.json"
    out.write_text(json.dumps(fc, indent=1))
    return out


def datetime_utc(*args: int) -> Any:
    from datetime import UTC, datetime

    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Demo-world helpers (terrastill.world.build output) and dataset comparison


def world_collections(world_dir: str | os.PathLike[str], items: list[dict[str, Any]]) -> list[dict]:
    """The world's ``collections/*.json`` (links stripped), plus minimal ones for any other."""
    folder = Path(world_dir) / "collections"
    found: dict[str, dict] = {}
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            c = json.loads(p.read_text())
            c["links"] = []
            found[c["id"]] = c
    for cid in sorted({f.get("collection") for f in items if f.get("collection")}):
        found.setdefault(cid, collection_for(items, cid))
    return list(found.values())


def serve_catalog(
    service: PgStacService,
    catalog: str | os.PathLike[str],
    name: str,
    asset_base: str | None = None,
    extensions: Iterable[str] | None = None,
) -> str:
    """Serve an ItemCollection file (e.g. WORLD/catalog.json) through a real STAC API.

    ``asset_base``: an ``http://`` URL serving the catalogue's folder; asset hrefs below that
    folder are rewritten onto it (assets then read over HTTP / through a fault proxy).
    """
    catalog = Path(catalog).resolve()
    items = strip_links(load_item_collection(catalog))
    if asset_base is not None:
        root = str(catalog.parent)
        base = asset_base.rstrip("/")
        items = rehref(items, lambda h: base + h[len(root):] if h.startswith(root + "/") else h)
    return service.serve(name, world_collections(catalog.parent, items), items,
                         extensions=extensions)


def dataset_fingerprint(
    folder: str | os.PathLike[str], replace: dict[str, str] | None = None
) -> dict[str, str]:
    """{relative path: sha256} of a chip dataset folder, insensitive to where it came from.

    Images (chips/, labels/) are hashed as bytes. Text and tables (json, csv, parquet) are
    hashed after replacing each key of ``replace`` by its value (e.g. a STAC API URL by the
    local catalogue path, an asset server URL by the world folder), so a dataset made from a
    server and one made from the local file compare equal exactly when they hold the same
    data. ``dataset.json``'s ``command`` is ignored (it names the catalogue as typed).
    """
    import hashlib

    folder = Path(folder)
    replace = dict(replace or {})

    def norm(text: str) -> str:
        for a, b in sorted(replace.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(a, b)
        return text

    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        if p.suffix == ".parquet":
            import pandas as pd

            df = pd.read_parquet(p)
            cells = [[v.hex() if isinstance(v, bytes) else repr(v) for v in row]
                     for row in df.astype(object).itertuples(index=False)]
            data = norm(json.dumps({"columns": [str(c) for c in df.columns], "data": cells}))
        elif p.suffix in (".json", ".csv", ".txt"):
            text = p.read_text()
            if rel == "dataset.json":
                d = json.loads(text)
                d.pop("command", None)
                text = json.dumps(d, sort_keys=True)
            data = norm(text)
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            continue
        out[rel] = hashlib.sha256(data.encode()).hexdigest()
    return out


def fingerprint_diff(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


@pytest.fixture(scope="module")
def fast_retries() -> Iterator[None]:
    """Millisecond backoff for every RetryPolicy() and GDAL retry (also in subprocesses)."""
    keys = {"TERRASTILL_RETRY_BASE_DELAY": "0.005", "TERRASTILL_RETRY_MAX_DELAY": "0.05"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
