"""The jobs API end to end with a stand-in predict that writes real COGs (see app_support).

TestClient for the request/response contract, and a real uvicorn server on loopback for the
same flow over HTTP. Tiles are decoded and their pixels compared with the stand-in's truth.
"""

from __future__ import annotations

import io
import time

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from PIL import Image

from app_support import (
    CLASS_COLORS,
    PredictRequest,
    fake_card,
    fake_predict,
    hex_rgb,
    local_client,
    make_models,
    running_server,
)
from terrastill.app.main import create_app
from terrastill.app.settings import Settings

AOI = [10.00, 45.00, 10.06, 45.04]
TMS = morecantile.tms.get("WebMercatorQuad")


def _predict(delay: float = 0.0, fail: str | None = None):
    def fn(request, progress=None, cancel=None):
        return fake_predict(request, progress, cancel, delay=delay, fail=fail)

    return fn


def make_app(tmp_path, predict=None, **settings):
    s = Settings(
        models_dir=make_models(tmp_path / "models"), data_dir=tmp_path / "data", **settings
    )
    return create_app(
        s, predict_fn=predict or _predict(), request_cls=PredictRequest, read_card=fake_card
    )


def wait_done(client, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = client.get(f"/api/jobs/{job_id}").json()
        if st["status"] not in ("queued", "running"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.05)


def png_rgba(content: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(content))
    assert img.format == "PNG"
    return np.array(img.convert("RGBA"))


def check_class_tile(get, job_id: str) -> None:
    """The tile over the AOI centre: west half class 0's colour, east half class 1's."""
    z = 14
    for lon, cls in ((AOI[0] + 0.01, 0), (AOI[2] - 0.01, 1)):
        t = TMS.tile(lon, (AOI[1] + AOI[3]) / 2, z)
        r = get(f"/api/jobs/{job_id}/tiles/{z}/{t.x}/{t.y}.png?layer=classes")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        px = png_rgba(r.content)
        # the pixel at the tile position of (lon, lat)
        b = TMS.xy_bounds(t)
        x, y = TMS.xy(lon, (AOI[1] + AOI[3]) / 2)
        col = int((x - b.left) / (b.right - b.left) * 256)
        row = int((b.top - y) / (b.top - b.bottom) * 256)
        assert tuple(px[row, col]) == (*hex_rgb(CLASS_COLORS[cls]), 255)


def test_models_and_health(tmp_path):
    with local_client(make_app(tmp_path)) as c:
        h = c.get("/api/health").json()
        assert h["status"] == "ok" and h["models"] == 2 and h["auth"] is False
        models = {m["name"]: m for m in c.get("/api/models").json()}
        assert set(models) == {"student", "teacher"}
        s = models["student"]
        assert s["role"] == "student" and s["teacher"] == {"name": "teacher"}
        assert s["classes"] == [
            {"id": 0, "name": "dry", "color": CLASS_COLORS[0]},
            {"id": 1, "name": "flooded", "color": CLASS_COLORS[1]},
        ]
        assert models["teacher"]["role"] == "teacher" and models["teacher"]["depth"] == 6


def test_submit_progress_done_tiles_download(tmp_path):
    with local_client(make_app(tmp_path, predict=_predict(delay=0.05))) as c:
        r = c.post("/api/jobs", json={"aois": [AOI], "date": "2024-06-01", "model": "student"})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        assert r.headers["location"] == f"/api/jobs/{job_id}"
        seen = []
        while True:
            st = c.get(f"/api/jobs/{job_id}").json()
            seen.append((st["status"], st["progress"], st["stage"]))
            if st["status"] not in ("queued", "running"):
                break
            time.sleep(0.02)
        assert st["status"] == "done", st
        running = [p for s, p, _ in seen if s == "running"]
        assert running == sorted(running)  # progress never goes back
        assert any(0 < p < 100 for p in running), seen
        assert {stage for _, _, stage in seen} >= {"fetch imagery", "predict"}
        assert st["progress"] == 100 and [s["state"] for s in st["stages"]] == ["done"] * 3
        assert st["layers"] == ["classes", "truecolor"] and "total" in st["timings"]
        assert st["bounds"] == AOI

        tj = c.get(st["links"]["tilejson"]["classes"]).json()
        assert tj["tiles"][0].endswith(
            f"/api/jobs/{job_id}/tiles/{{z}}/{{x}}/{{y}}.png?layer=classes"
        )
        assert tj["bounds"][0] == pytest.approx(AOI[0], abs=0.01)
        assert 0 <= tj["minzoom"] <= tj["maxzoom"] <= 24
        check_class_tile(c.get, job_id)

        # true colour: west dark red, east green; outside the product transparent
        t = TMS.tile(AOI[2] - 0.01, (AOI[1] + AOI[3]) / 2, 14)
        px = png_rgba(c.get(f"/api/jobs/{job_id}/tiles/14/{t.x}/{t.y}.png?layer=truecolor").content)
        opaque = px[px[..., 3] == 255]
        assert len(opaque) and (opaque[:, 1] > opaque[:, 0]).any()
        far = TMS.tile(-60.0, -20.0, 14)
        empty = png_rgba(c.get(f"/api/jobs/{job_id}/tiles/14/{far.x}/{far.y}.png").content)
        assert empty.shape == (256, 256, 4) and (empty[..., 3] == 0).all()

        d = c.get(st["links"]["download"]["classes"][0])
        assert d.status_code == 200 and d.headers["content-type"] == "image/tiff"
        assert "attachment" in d.headers["content-disposition"]
        path = tmp_path / "dl.tif"
        path.write_bytes(d.content)
        with rasterio.open(path) as src:
            assert src.dtypes[0] == "uint8" and src.nodata == 255

        jobs = c.get("/api/jobs").json()
        assert [j["id"] for j in jobs] == [job_id]


def test_multiple_boxes_and_geojson(tmp_path):
    with local_client(make_app(tmp_path)) as c:
        two = [AOI, [10.1, 45.0, 10.12, 45.02]]
        r = c.post("/api/jobs", json={"aois": two, "date": "2024-06-01", "model": "teacher"})
        assert r.status_code == 201, r.text
        st = wait_done(c, r.json()["id"])
        assert st["status"] == "done" and len(st["aois"]) == 2
        poly = {
            "type": "Polygon",
            "coordinates": [[[10.0, 45.0], [10.05, 45.0], [10.02, 45.04], [10.0, 45.0]]],
        }
        r = c.post(
            "/api/jobs",
            json={
                "aois": poly,
                "date": "2024-06-01",
                "model": "teacher",
                "max_cloud": 20,
                "tolerance": 5,
            },
        )
        assert r.status_code == 201, r.text
        st = wait_done(c, r.json()["id"])
        assert st["status"] == "done" and st["max_cloud"] == 20 and st["tolerance"] == 5


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"aois": [AOI], "date": "2024-06-01", "model": "nope"}, 422, "unknown model 'nope'"),
        ({"aois": [AOI], "date": "01/06/2024", "model": "student"}, 422, "YYYY-MM-DD"),
        ({"aois": [AOI], "date": "2024-02-30", "model": "student"}, 422, "date"),
        ({"aois": [[10, 45, 9, 46]], "date": "2024-06-01", "model": "student"}, 422, "inverted"),
        ({"aois": [[0, 0, 5, 5]], "date": "2024-06-01", "model": "student"}, 422, "km²"),
        ({"aois": [[190, 0, 191, 1]], "date": "2024-06-01", "model": "student"}, 422, "outside"),
        ({"aois": [], "date": "2024-06-01", "model": "student"}, 422, "at least one"),
        ({"aois": [AOI], "date": "2024-06-01"}, 422, "model"),
        ({"aois": [AOI], "date": "2024-06-01", "model": "student", "max_cloud": 101}, 422, "100"),
        ({"aois": [AOI], "date": "2024-06-01", "model": "student", "extra": 1}, 422, "extra"),
        (
            {
                "aois": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]],
                },
                "date": "2024-06-01",
                "model": "student",
            },
            422,
            "invalid",
        ),
    ],
)
def test_bad_requests_say_why(tmp_path, body, status, words):
    with local_client(make_app(tmp_path)) as c:
        r = c.post("/api/jobs", json=body)
        assert r.status_code == status, r.text
        assert words in r.text
        assert c.get("/api/jobs").json() == []


def test_aoi_limit_is_configurable(tmp_path):
    with local_client(make_app(tmp_path, max_aoi_km2=1.0)) as c:
        r = c.post("/api/jobs", json={"aois": [AOI], "date": "2024-06-01", "model": "student"})
        assert r.status_code == 422 and "1.0 km²" in r.json()["detail"]


def test_failed_jobs_carry_the_message(tmp_path):
    with local_client(make_app(tmp_path, predict=_predict(fail="noimagery"))) as c:
        r = c.post("/api/jobs", json={"aois": [AOI], "date": "2024-06-01", "model": "student"})
        st = wait_done(c, r.json()["id"])
        assert st["status"] == "failed" and "nearest: 2024-07-02" in st["error"]
        assert c.get(f"/api/jobs/{st['id']}/tiles/1/0/0.png").status_code == 409
    with local_client(make_app(tmp_path / "b", predict=_predict(fail="crash"))) as c:
        r = c.post("/api/jobs", json={"aois": [AOI], "date": "2024-06-01", "model": "student"})
        st = wait_done(c, r.json()["id"])
        assert st["status"] == "failed" and st["error"] == "internal error: RuntimeError: boom"


def test_cancel_running_job_removes_files(tmp_path):
    with local_client(make_app(tmp_path, predict=_predict(delay=0.2))) as c:
        job_id = c.post(
            "/api/jobs", json={"aois": [AOI], "date": "2024-06-01", "model": "student"}
        ).json()["id"]
        job_dir = tmp_path / "data" / "jobs" / job_id
        deadline = time.monotonic() + 10
        while c.get(f"/api/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = c.delete(f"/api/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        time.sleep(0.6)  # the worker notices within a progress step
        st = c.get(f"/api/jobs/{job_id}").json()
        assert st["status"] == "cancelled" and st["error"] == "cancelled by request"
        assert not job_dir.exists()
        # a queued job behind a running one is cancelled before it starts
        a = c.post("/api/jobs", json={"aois": [AOI], "date": "2024-06-01", "model": "student"})
        b = c.post("/api/jobs", json={"aois": [AOI], "date": "2024-06-01", "model": "student"})
        assert c.delete(f"/api/jobs/{b.json()['id']}").json()["status"] == "cancelled"
        assert wait_done(c, a.json()["id"])["status"] == "done"
        assert c.get(f"/api/jobs/{b.json()['id']}").json()["started"] is None
        # deleting a finished job removes it and its files
        a_id = a.json()["id"]
        assert (tmp_path / "data" / "jobs" / a_id).exists()
        assert c.delete(f"/api/jobs/{a_id}").status_code == 200
        assert c.get(f"/api/jobs/{a_id}").status_code == 404
        assert not (tmp_path / "data" / "jobs" / a_id).exists()


def test_over_real_http(tmp_path):
    """The same flow through uvicorn on loopback, as a browser or script would see it."""
    app = make_app(tmp_path, predict=_predict(delay=0.02))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/").status_code == 200
        assert "terrastill" in http.get("/").text
        r = http.post("/api/jobs", json={"aois": [AOI], "date": "2024-06-01", "model": "student"})
        assert r.status_code == 201
        st = wait_done(http, r.json()["id"])
        assert st["status"] == "done"
        tj = http.get(st["links"]["tilejson"]["classes"]).json()
        assert tj["tiles"][0].startswith(url)
        check_class_tile(http.get, st["id"])


def test_bench_tiles_script(tmp_path):
    """scripts/bench_tiles.py against a live server: bounded, loopback, zero errors."""
    import argparse
    import asyncio
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_tiles.py"
    spec = importlib.util.spec_from_file_location("bench_tiles", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit, match="loopback"):
        bench.loopback_only("http://192.0.2.1:8000")
    app = make_app(tmp_path)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/api/jobs", json={"aois": [AOI], "date": "2024-06-01", "model": "student"})
        job_id = wait_done(http, r.json()["id"])["id"]
        args = argparse.Namespace(
            url=url,
            job=job_id,
            token=None,
            layers=["classes", "truecolor"],
            requests=120,
            concurrency=8,
            max_seconds=30,
            zooms=bench.zoom_range("0-16"),
        )
        report = asyncio.run(bench.run(args))
    assert report["requests"] > 17 and report["errors"] == 0, report
    assert report["tiles_per_s"] > 0 and report["p95_ms"] >= report["p50_ms"] > 0
    # every zoom from 0 to 16 answered: the low ones refused quickly, below the minzoom
    assert sorted(report["max_ms_by_zoom"]) == list(range(17))
    assert report["statuses"].get("404", 0) > 0 and report["statuses"].get("200", 0) > 0
