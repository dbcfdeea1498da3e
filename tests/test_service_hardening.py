"""The service from a newcomer's and an attacker's side: auth that cannot be off by accident,
allowed hosts, strict JSON, sane dates, no server paths in answers, no CDN, broken products."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from app_support import (
    AOI_DEFAULT,
    fake_app,
    fake_predict,
    local_client,
    make_models,
)
from terrastill.app.safety import scrub_paths
from terrastill.app.settings import Settings
from terrastill.cli import app as cli

BODY = {"aois": [AOI_DEFAULT], "date": "2024-06-01", "model": "student"}
runner = CliRunner()


_app = fake_app


def _wait(c: Any, job_id: str, want: tuple[str, ...] = ("done", "failed")) -> dict:
    deadline = time.monotonic() + 20
    while (job := c.get(f"/api/jobs/{job_id}").json())["status"] not in want:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


@pytest.fixture
def served(monkeypatch):
    """``terrastill serve`` up to the point where uvicorn would start."""
    import uvicorn

    seen: dict[str, Any] = {}

    def fake_run(app: Any, **kw: Any) -> None:
        seen.update(kw, app=app)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return seen


def test_a_blank_token_is_an_error(tmp_path, served):
    with pytest.raises(ValidationError, match="blank"):
        Settings(models_dir=tmp_path, data_dir=tmp_path / "d", token="  ")
    make_models(tmp_path / "m")
    res = runner.invoke(cli, ["serve", "--models", str(tmp_path / "m"), "--token", " "])
    assert res.exit_code == 2 and "--token is blank" in res.output, res.output
    assert "app" not in served


def test_no_token_beyond_loopback_needs_no_auth(tmp_path, served):
    make_models(tmp_path / "m")
    args = ["serve", "--models", str(tmp_path / "m"), "--data", str(tmp_path / "d"),
            "--host", "0.0.0.0"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 2 and "refusing to serve beyond this machine" in res.output
    assert "app" not in served
    res = runner.invoke(cli, [*args, "--no-auth"])
    assert res.exit_code == 0, res.output
    assert "without authentication" in res.output and served["host"] == "0.0.0.0"
    res = runner.invoke(cli, [*args, "--token", "t0k3n", "--allowed-host", "maps.example"])
    assert res.exit_code == 0, res.output


def test_an_empty_models_folder_is_warned_about(tmp_path, served):
    (tmp_path / "none").mkdir()
    res = runner.invoke(cli, ["serve", "--models", str(tmp_path / "none"), "--data",
                              str(tmp_path / "d")])
    assert res.exit_code == 0 and "holds no model files" in res.output, res.output


def test_only_allowed_host_headers_are_served(tmp_path):
    with local_client(_app(tmp_path)) as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"Host": "evil.example"}).status_code == 400
    with local_client(_app(tmp_path / "b", allowed_hosts=("maps.example",))) as c:
        assert c.get("/api/health", headers={"Host": "maps.example"}).status_code == 200
        assert c.get("/api/health").status_code == 400


@pytest.mark.parametrize("raw", [
    '{"aois": [[NaN, 45.0, 10.06, 45.04]], "date": "2024-06-01", "model": "student"}',
    '{"aois": [[Infinity, 45.0, 10.06, 45.04]], "date": "2024-06-01", "model": "student"}',
    '{"aois": [[-Infinity, 45.0, 10.06, 45.04]], "date": "2024-06-01", "model": "student"}',
    '{"aois": [[1e309, 45.0, 10.06, 45.04]], "date": "2024-06-01", "model": "student"}',
    '{"aois": [[10.0, 45.0, 10.06, 45.04]], "date": "2024-06-01", "model": "st\\ud800"}',
    '{"aois": [[10.0, 45.0, 10.06, 45.04]], "date": "2024-06-01", "model": "student", '
    '"\\udc00": 1}',
    '{"aois": {"type": "Polygon", "coordinates": [[[10, 45], [NaN, 45], [10, 46], [10, 45]]]},'
    ' "date": "2024-06-01", "model": "student"}',
])
def test_non_finite_numbers_and_lone_surrogates_are_422(tmp_path, raw):
    with local_client(_app(tmp_path), raise_server_exceptions=False) as c:
        r = c.post("/api/jobs", content=raw.encode(), headers={"Content-Type":
                                                                "application/json"})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert isinstance(detail, list) and detail and "loc" in detail[0]
        assert len(r.text) < 2000  # a short answer, no traceback


@pytest.mark.parametrize("date", ["1979-12-31", "2999-01-01"])
def test_dates_out_of_range_are_refused(tmp_path, date):
    with local_client(_app(tmp_path)) as c:
        r = c.post("/api/jobs", json={**BODY, "date": date})
        assert r.status_code == 422 and "between 1980-01-01" in r.text, r.text


def test_no_answer_names_a_server_path(tmp_path):
    def failing(request: Any, **_kw: Any) -> Any:
        from terrastill.errors import AssetReadError

        raise AssetReadError(f"{Path(request.out_dir).resolve()}/scene/B04.tif: cannot read")

    secret = str(tmp_path)
    with local_client(_app(tmp_path, predict=failing)) as c:
        models = c.get("/api/models")
        assert models.status_code == 200 and secret not in models.text
        job = c.post("/api/jobs", json=BODY).json()
        failed = _wait(c, job["id"])
        assert failed["status"] == "failed" and "B04.tif" in failed["error"]
        assert secret not in json.dumps(failed) and "/scene/" not in failed["error"]
        assert secret not in c.get("/api/jobs").text


def test_scrub_keeps_urls_and_file_names():
    text = "cannot read /srv/x/jobs/abc/out/classes.tif via https://h.example/a/b.tif"
    assert scrub_paths(text) == "cannot read classes.tif via https://h.example/a/b.tif"


def test_tilejson_links_use_the_public_url(tmp_path):
    with local_client(_app(tmp_path, public_url="https://maps.example/terra/")) as c:
        job = _wait(c, c.post("/api/jobs", json=BODY).json()["id"])
        tj = c.get(job["links"]["tilejson"]["classes"]).json()
        assert tj["tiles"][0].startswith("https://maps.example/terra/api/jobs/")


def test_docs_need_no_cdn(tmp_path):
    with local_client(_app(tmp_path)) as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200


def test_a_corrupt_product_is_a_502_not_its_bytes(tmp_path):
    with local_client(_app(tmp_path)) as c:
        job = _wait(c, c.post("/api/jobs", json=BODY).json()["id"])
        cog = next((tmp_path / "data" / "jobs").rglob("classes.tif"))
        cog.write_bytes(cog.read_bytes()[:600])  # truncated: the header opens, tiles do not
        r = c.get(job["links"]["download"]["classes"][0])
        assert r.status_code == 502, r.status_code
        assert str(tmp_path) not in r.text and "classes" in r.text


def test_no_imagery_names_the_catalogues_dates_and_temps_are_removed(tmp_path, small_world):
    def no_imagery(request: Any, **_kw: Any) -> Any:
        out = Path(request.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / ".tmp-prediction_32632_classes.tif").write_bytes(b"half")
        return fake_predict(request, fail="noimagery")

    app = _app(tmp_path, predict=no_imagery, catalog=small_world["catalog"])
    inside = {**BODY, "aois": [small_world["bbox"]]}
    with local_client(app) as c:
        job = _wait(c, c.post("/api/jobs", json=inside).json()["id"])
    assert job["status"] == "failed"
    first, last = job["error"].split("the catalogue has imagery from ")[1].split(" to ")
    assert small_world["start"] <= first <= last <= small_world["end"]
    assert not list((tmp_path / "data" / "jobs").rglob(".tmp-*"))


def test_tiles_below_the_minzoom_are_refused_at_once(tmp_path):
    import morecantile

    with local_client(_app(tmp_path)) as c:
        job = _wait(c, c.post("/api/jobs", json=BODY).json()["id"])
        tj = c.get(job["links"]["tilejson"]["truecolor"]).json()
        lon, lat = (tj["bounds"][0] + tj["bounds"][2]) / 2, (tj["bounds"][1] + tj["bounds"][3]) / 2
        tms = morecantile.tms.get("WebMercatorQuad")
        for z in (0, tj["minzoom"] - 1):
            t = tms.tile(lon, lat, z)
            t0 = time.perf_counter()
            r = c.get(f"/api/jobs/{job['id']}/tiles/{z}/{t.x}/{t.y}.png?layer=truecolor")
            assert r.status_code == 404 and "below" in r.text and time.perf_counter() - t0 < 1
        t = tms.tile(lon, lat, tj["minzoom"])
        r = c.get(f"/api/jobs/{job['id']}/tiles/{tj['minzoom']}/{t.x}/{t.y}.png?layer=truecolor")
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_the_tile_pool_is_bounded_in_time_and_size():
    import asyncio
    import threading

    from fastapi import HTTPException

    from terrastill.app.tilepool import TilePool

    class Client:  # stands in for a request whose client stays or leaves
        def __init__(self, gone: bool = False) -> None:
            self.gone = gone

        async def is_disconnected(self) -> bool:
            return self.gone

    release = threading.Event()

    def slow() -> bytes:
        release.wait(5)
        return b"png"

    async def scenario() -> list[Any]:
        pool = TilePool(workers=1, queue=2, timeout_s=0.3)
        out: list[Any] = []
        try:
            await pool.render(Client(), slow)
        except HTTPException as exc:
            out.append(exc.status_code)  # over its time budget
        first = asyncio.ensure_future(pool.render(Client(), slow))
        await asyncio.sleep(0.05)
        try:
            await pool.render(Client(), lambda: b"x")  # the queue holds two: full
        except HTTPException as exc:
            out.append(exc.status_code)
        first.cancel()
        release.set()
        pool.shutdown()
        other = TilePool(workers=1, queue=4, timeout_s=5)
        try:  # the client left: nobody waits for the tile
            await other.render(Client(gone=True), lambda: time.sleep(0.5) or b"y")
        except HTTPException as exc:
            out.append(exc.status_code)
        other.shutdown()
        return out

    timed_out, full, gone = asyncio.run(scenario())
    assert (timed_out, full, gone) == (503, 503, 499)


def test_catalogue_info_imagery_layer_and_coverage(tmp_path, small_world):
    app = _app(tmp_path, catalog=small_world["catalog"],
               basemap="https://tiles.example/{z}/{x}/{y}.png")
    with local_client(app) as c:
        info = c.get("/api/catalog").json()
        assert info["extent"][0] <= small_world["bbox"][0] and info["dates"]
        assert info["start"] == info["dates"][0] and info["end"] == info["dates"][-1]
        assert info["basemap"].startswith("https://tiles.example/")
        assert "https://tiles.example" in c.get("/").headers["content-security-policy"]
        # a box outside the catalogue is refused before a job exists
        r = c.post("/api/jobs", json=BODY)
        assert r.status_code == 422 and "outside the catalogue's coverage" in r.text
        assert c.get("/api/jobs").json() == []
        day = info["dates"][len(info["dates"]) // 2]
        tj = c.get("/api/imagery/tilejson.json", params={"date": day}).json()
        assert tj["name"] == f"imagery {day}" and tj["minzoom"] <= tj["maxzoom"]
        import morecantile

        lon = (small_world["bbox"][0] + small_world["bbox"][2]) / 2
        lat = (small_world["bbox"][1] + small_world["bbox"][3]) / 2
        t = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, tj["maxzoom"])
        r = c.get(tj["tiles"][0].split("localhost")[1].format(z=tj["maxzoom"], x=t.x, y=t.y))
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
        from io import BytesIO

        from PIL import Image

        rgba = np.asarray(Image.open(BytesIO(r.content)).convert("RGBA"))
        assert (rgba[..., 3] > 0).mean() > 0.1  # scenes of that date cover part of the tile
        assert rgba[..., :3][rgba[..., 3] > 0].std() > 1  # an image, not a flat fill
        far = c.get("/api/imagery/tilejson.json", params={"date": "2020-01-01"})
        assert far.status_code == 404 and "within 30 days" in far.text


def test_job_tiles_are_clipped_to_the_aoi_and_report_the_valid_share(tmp_path):
    from io import BytesIO

    import morecantile
    from PIL import Image

    small = [10.01, 45.01, 10.03, 45.02]
    with local_client(_app(tmp_path)) as c:
        job = _wait(c, c.post("/api/jobs", json={**BODY, "aois": [small]}).json()["id"])
        assert job["valid_share"] == 1.0
        tms = morecantile.tms.get("WebMercatorQuad")
        z = 13
        tiles_ = list(tms.tiles(*small, zooms=[z]))
        inside = outside = 0
        for t in tiles_:
            png = c.get(f"/api/jobs/{job['id']}/tiles/{z}/{t.x}/{t.y}.png").content
            alpha = np.asarray(Image.open(BytesIO(png)).convert("RGBA"))[..., 3]
            b = tms.xy_bounds(t)
            xs = b.left + (np.arange(256) + 0.5) * (b.right - b.left) / 256
            ys = b.top - (np.arange(256) + 0.5) * (b.top - b.bottom) / 256
            lon = np.degrees(xs / 6378137.0)
            lat = np.degrees(2 * np.arctan(np.exp(ys / 6378137.0)) - np.pi / 2)
            in_lon = (lon > small[0] + 1e-4) & (lon < small[2] - 1e-4)
            in_lat = (lat > small[1] + 1e-4) & (lat < small[3] - 1e-4)
            aoi = in_lat[:, None] & in_lon[None, :]
            far = ~((lat > small[1] - 1e-4) & (lat < small[3] + 1e-4))[:, None] | \
                ~((lon > small[0] - 1e-4) & (lon < small[2] + 1e-4))[None, :]
            inside += int((alpha[aoi] > 0).sum())
            outside += int((alpha[far] > 0).sum())
        assert inside > 0 and outside == 0


def test_products_get_overviews_down_to_a_tile(tmp_path):
    import rasterio
    from affine import Affine

    from terrastill.inference.cog import publish_cog

    raw = tmp_path / "raw.tif"
    with rasterio.open(raw, "w", driver="GTiff", width=1500, height=1100, count=1,
                       dtype="uint8", crs="EPSG:32632", nodata=255, tiled=True,
                       transform=Affine(30, 0, 700000, 0, -30, 5030000)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 3, (1, 1100, 1500), dtype="uint8"))
    cog = publish_cog(raw, tmp_path / "classes.tif")
    with rasterio.open(cog) as src:
        factors = src.overviews(1)
        assert factors and max(src.width, src.height) / factors[-1] <= 256
