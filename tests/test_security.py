"""Attacks on the service: tokens, path traversal and URL injection on every job route, oversized
AOIs and bodies, CORS. No response may carry a file the job does not own."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from app_support import (
    AOI_DEFAULT,
    fake_app,
    local_client,
    make_models,
)

TOKEN = "s3cret-token-for-tests"
BODY = {"aois": [AOI_DEFAULT], "date": "2024-06-01", "model": "student"}
TILE = "14/8648/5892"  # over AOI_DEFAULT


def _app(tmp_path, **kw):
    return fake_app(tmp_path, **kw)


def _done_job(c: Any, headers: dict | None = None) -> str:
    r = c.post("/api/jobs", json=BODY, headers=headers or {})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 20
    while c.get(f"/api/jobs/{job_id}", headers=headers or {}).json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job_id


def _job_routes(job_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", "/api/health"),
        ("GET", "/api/models"),
        ("GET", "/api/jobs"),
        ("POST", "/api/jobs"),
        ("GET", f"/api/jobs/{job_id}"),
        ("GET", f"/api/jobs/{job_id}/tilejson.json?layer=classes"),
        ("GET", f"/api/jobs/{job_id}/tiles/{TILE}.png?layer=classes"),
        ("GET", f"/api/jobs/{job_id}/tiles/{TILE}.png?layer=truecolor"),
        ("GET", f"/api/jobs/{job_id}/download?layer=classes"),
        ("GET", "/api/catalog"),
        ("GET", "/api/imagery/tilejson.json?date=2024-06-01"),
        ("GET", f"/api/imagery/tiles/{TILE}.png?date=2024-06-01"),
        ("DELETE", f"/api/jobs/{job_id}"),
    ]


def test_every_api_route_needs_the_token(tmp_path):
    app = _app(tmp_path, token=TOKEN)
    api_routes = {
        (method.upper(), path)
        for path, ops in app.openapi()["paths"].items()
        for method in ops
        if path.startswith("/api")
    }
    good = {"Authorization": f"Bearer {TOKEN}"}
    with local_client(app) as c:
        job_id = _done_job(c, good)
        routes = _job_routes(job_id)
        # the list above covers every /api route the app has
        covered = {
            (m, p.split("?")[0].replace(job_id, "{job_id}").replace(TILE, "{z}/{x}/{y}"))
            for m, p in routes
        }
        assert covered == api_routes
        for bad in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            for method, path in routes:
                r = c.request(method, path, headers=bad, json=BODY if method == "POST" else None)
                assert r.status_code == 401, (method, path, bad, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
        for method, path in routes:
            r = c.request(method, path, headers=good, json=BODY if method == "POST" else None)
            # this server has no catalogue: its imagery layer is "not found", not refused
            want = (200, 201, 404) if path.startswith("/api/imagery") else (200, 201)
            assert r.status_code in want, (method, path, r.status_code, r.text)
        # the page itself loads without a token and asks for one
        page = c.get("/")
        assert page.status_code == 200 and "token-box" in page.text


def test_token_from_environment(tmp_path, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from terrastill.cli import app as cli

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("TERRASTILL_TOKEN", TOKEN)
    models = make_models(tmp_path / "models")
    res = CliRunner().invoke(cli, ["serve", "--models", str(models), "--data", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.1"
    with local_client(seen["app"]) as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


TRAVERSAL_IDS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "....//....//etc//passwd",
    "..",
    "%2e%2e",
    "0123456789ABCDEF0123456789ABCDEF",
    "0123456789abcdef0123456789abcdef0",
    "0123456789abcdef0123456789abcde%00",
    "0123456789abcdef0123456789abcdef%2F..%2F..",
    "%2Fetc%2Fpasswd",
    "file:%2F%2F%2Fetc%2Fpasswd",
    "http:%2F%2F127.0.0.1:1%2F",
]


@pytest.mark.parametrize("bad_id", TRAVERSAL_IDS)
def test_path_traversal_in_job_ids(tmp_path, bad_id):
    with local_client(_app(tmp_path)) as c:
        _done_job(c)
        for method, path in [(m, p) for m, p in _job_routes(bad_id) if bad_id in p]:
            r = c.request(method, path)
            assert r.status_code in (404, 405, 422), (method, path, r.status_code)
            assert b"root:" not in r.content and r.headers["content-type"] != "image/tiff"


def test_url_and_path_injection_in_parameters(tmp_path):
    with local_client(_app(tmp_path)) as c:
        job_id = _done_job(c)
        base = f"/api/jobs/{job_id}"
        real_tile = c.get(f"{base}/tiles/{TILE}.png").content
        for value in (
            "../../../../etc/passwd",
            "/etc/passwd",
            "file:///etc/passwd",
            "http://169.254.169.254/latest/meta-data/",
            "classes/../../x",
            "classes%00",
            "CLASSES",
            "",
        ):
            for path in (f"{base}/tiles/{TILE}.png", f"{base}/tilejson.json", f"{base}/download"):
                r = c.get(path, params={"layer": value})
                assert r.status_code == 422, (path, value, r.status_code)
        # parameters the API does not know are ignored: the job's own data comes back
        for extra in (
            {"url": "file:///etc/passwd"},
            {"url": "http://169.254.169.254/"},
            {"path": "/etc/passwd"},
            {"expression": "b1*0"},
            {"tms": "../../x"},
        ):
            r = c.get(f"{base}/tiles/{TILE}.png", params=extra)
            assert r.status_code == 200 and r.content == real_tile
            d = c.get(f"{base}/download", params={**extra, "layer": "classes"})
            assert d.status_code == 200 and b"root:" not in d.content
        for z, x, y in ((25, 0, 0), (3, 8, 0), (3, 0, 8), (-1, 0, 0)):
            r = c.get(f"{base}/tiles/{z}/{x}/{y}.png")
            assert r.status_code in (404, 422)
        for part in ("-1", "1", "999", "1000", "../x"):
            assert c.get(f"{base}/download", params={"part": part}).status_code in (404, 422)
        # encoded slashes in the tile path do not leave the route
        for path in (
            f"{base}/tiles/..%2F..%2F..%2Fetc/passwd.png",
            f"{base}/tiles/14/..%2F..%2F/1.png",
            f"/api/jobs/{job_id}%2F..%2F..%2F..%2Fetc%2Fpasswd/download",
        ):
            r = c.get(path)
            assert r.status_code in (404, 422) and b"root:" not in r.content


def test_tampered_result_paths_never_leave_the_job_folder(tmp_path):
    app = _app(tmp_path)
    with local_client(app) as c:
        job_id = _done_job(c)
        store = app.state.services.store
        for evil in (
            "../../../../../../etc/passwd",
            "/etc/passwd",
            "out/../../../models/student.pt",
        ):
            with store._tx() as db:
                db.execute(
                    "UPDATE jobs SET result = ? WHERE id = ?",
                    (json.dumps({"classes": [evil], "truecolor": [evil]}), job_id),
                )
            for path in (
                f"/api/jobs/{job_id}/download",
                f"/api/jobs/{job_id}/tiles/{TILE}.png",
                f"/api/jobs/{job_id}/tilejson.json",
            ):
                r = c.get(path)
                assert r.status_code == 404, (evil, path, r.status_code)
                assert b"root:" not in r.content and b"fake model" not in r.content


def test_oversized_aois_and_bodies(tmp_path):
    with local_client(
        _app(tmp_path, max_aoi_km2=100, max_aois=4, max_vertices=100, max_body_bytes=20_000)
    ) as c:
        r = c.post("/api/jobs", json={**BODY, "aois": [[9, 44, 11, 46]]})
        assert r.status_code == 422 and "larger than this server's limit" in r.json()["detail"]
        many = [[10 + i * 0.01, 45, 10.005 + i * 0.01, 45.005] for i in range(5)]
        r = c.post("/api/jobs", json={**BODY, "aois": many})
        assert r.status_code == 422 and "at most 4" in r.json()["detail"]
        ring = [[10 + 0.001 * i, 45 + 0.0001 * (i % 2)] for i in range(150)] + [[10, 45]]
        r = c.post("/api/jobs", json={**BODY, "aois": {"type": "Polygon", "coordinates": [ring]}})
        assert r.status_code == 422 and "vertices" in r.json()["detail"]
        # huge bodies: refused by Content-Length, and when streamed without one
        huge = json.dumps({**BODY, "pad": "x" * 50_000}).encode()
        r = c.post("/api/jobs", content=huge, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        r = c.post(
            "/api/jobs",
            content=iter([huge[i : i + 4096] for i in range(0, len(huge), 4096)]),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 413
        assert c.get("/api/jobs").json() == []


def test_cors_closed_by_default_and_configurable(tmp_path):
    with local_client(_app(tmp_path)) as c:
        r = c.get("/api/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        pre = c.options(
            "/api/jobs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in pre.headers
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in r.headers["content-security-policy"]
    with local_client(_app(tmp_path / "b", cors_origins=("https://maps.example",))) as c:
        ok = c.get("/api/health", headers={"Origin": "https://maps.example"})
        assert ok.headers["access-control-allow-origin"] == "https://maps.example"
        other = c.get("/api/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
