"""The service with the real pipeline: demo world → chips → a tiny trained model → a job through
``terrastill.inference.predict`` on a uvicorn server → tiles whose colours are the model card's
class colours where the product says so, and mostly where the world's truth says so."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer

from app_support import hex_rgb, running_server
from terrastill.app.main import create_app
from terrastill.app.settings import Settings

pytestmark = pytest.mark.slow
TMS = morecantile.tms.get("WebMercatorQuad")
# across the UTM 32/33 boundary (12°E) of the small world: two products, mosaicked in tiles
AOI = [11.990, 45.294, 12.012, 45.306]


@pytest.fixture(scope="module")
def flood_model(small_world, tmp_path_factory) -> Path:
    """A tiny segmentation model trained for a few epochs on the small world's flood chips."""
    from terrastill.data.build import ChipJob, make_chips
    from terrastill.data.chips import ReadOptions
    from terrastill.data.observations import ObservationOptions
    from terrastill.data.temporal import TemporalOptions
    from terrastill.training.train import fit

    root = tmp_path_factory.mktemp("app-e2e")
    t = TemporalOptions(num_steps=2, temporal_step=9, temporal_tolerance=4, max_cloud=60)
    job = ChipJob(
        read=ReadOptions(source="hls", temporal=t), chip_size=16, min_valid=0.3, split_block=1000
    )
    make_chips(
        small_world["tasks"]["flood"]["observations"],
        root / "chips",
        small_world["catalog"],
        job,
        ObservationOptions(classes=["land", "water"]),
        command="test",
    )
    model = fit(root / "chips", root / "train", {"epochs": 4, "progress": False, "seed": 0})
    models = root / "models"
    models.mkdir()
    model.rename(models / "flood.pt")
    return models


def _sample(path: str, lon: float, lat: float, cache: dict) -> int | None:
    if path not in cache:
        src = rasterio.open(path)
        cache[path] = (src, src.read(1), Transformer.from_crs(4326, src.crs, always_xy=True))
    src, arr, tr = cache[path]
    x, y = tr.transform(lon, lat)
    row, col = src.index(x, y)
    if not (0 <= row < arr.shape[0] and 0 <= col < arr.shape[1]):
        return None
    v = int(arr[row, col])
    return None if src.nodata is not None and v == src.nodata else v


def test_real_prediction_job_and_tiles(small_world, flood_model, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    settings = Settings(
        models_dir=flood_model, data_dir=tmp_path / "serve", catalog=small_world["catalog"]
    )
    app = create_app(settings)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        home = http.get("/api/health").json()["home"]
        assert home == pytest.approx(small_world["bbox"], abs=0.01)  # where the map opens
        model = http.get("/api/models").json()[0]
        assert model["name"] == "flood" and [c["name"] for c in model["classes"]] == [
            "land",
            "water",
        ]
        r = http.post(
            "/api/jobs", json={"aois": [AOI], "date": small_world["flood_date"], "model": "flood"}
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        seen, deadline = [], time.monotonic() + 300
        while (st := http.get(f"/api/jobs/{job_id}").json())["status"] in ("queued", "running"):
            seen.append(st["progress"])
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        assert st["status"] == "done", st
        assert any(0 < p < 100 for p in seen), seen
        assert {"read", "inference", "total"} <= set(st["timings"])
        assert len(st["links"]["download"]["classes"]) == 2  # one product per UTM zone
        for link in st["links"]["download"]["classes"]:
            d = http.get(link)
            assert d.status_code == 200
            cog = tmp_path / "dl.tif"
            cog.write_bytes(d.content)
            assert cog_validate(str(cog))[0]

        colors = {c["id"]: hex_rgb(c["color"]) for c in st["classes"]}
        job_dir = tmp_path / "serve" / "jobs" / job_id
        products = sorted(str(p) for p in job_dir.rglob("*_classes.tif"))
        truth = small_world["tasks"]["flood"]["truth"]
        tj = http.get(st["links"]["tilejson"]["classes"]).json()
        z = tj["maxzoom"] + 2  # over-zoomed a little: many tile pixels per AOI
        cache: dict = {}
        same_as_product = agree_truth = n = 0
        for t in TMS.tiles(*AOI, zooms=[z]):
            r = http.get(f"/api/jobs/{job_id}/tiles/{z}/{t.x}/{t.y}.png?layer=classes")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            px = np.array(Image.open(io.BytesIO(r.content)).convert("RGBA"))
            b = TMS.xy_bounds(t)
            for row in range(4, 256, 8):
                for col in range(4, 256, 8):
                    lon, lat = TMS.lnglat(
                        b.left + (col + 0.5) * (b.right - b.left) / 256,
                        b.top - (row + 0.5) * (b.top - b.bottom) / 256,
                    )
                    if not (
                        AOI[0] + 0.001 < lon < AOI[2] - 0.001
                        and AOI[1] + 0.001 < lat < AOI[3] - 0.001
                    ):
                        continue
                    cls = next(
                        (v for p in products if (v := _sample(p, lon, lat, cache)) is not None),
                        None,
                    )
                    if cls is None:
                        continue
                    n += 1
                    assert px[row, col, 3] == 255, (lon, lat)
                    same_as_product += tuple(px[row, col, :3]) == colors[cls]
                    true = next(
                        (
                            v
                            for p in truth.values()
                            if (v := _sample(p, lon, lat, cache)) is not None
                        ),
                        None,
                    )
                    agree_truth += true is not None and tuple(px[row, col, :3]) == colors[true]
        for src, _, _ in cache.values():
            src.close()
        assert n >= 200, n
        print(
            f"samples {n}: tile = product {same_as_product / n:.3f}, "
            f"tile = truth {agree_truth / n:.3f}, job timings {st['timings']}"
        )
        # tiles show the product's class colours (nearest resampling; a few border pixels differ)
        assert same_as_product / n >= 0.97, same_as_product / n
        # and mostly the truth: a few epochs of a tiny model on a tiny world
        assert agree_truth / n >= 0.85, agree_truth / n


def test_real_job_on_a_dask_scheduler(small_world, flood_model, tmp_path):
    """--scheduler: the same job, its predict call submitted to a Dask scheduler."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        settings = Settings(
            models_dir=flood_model,
            data_dir=tmp_path / "serve",
            catalog=small_world["catalog"],
            scheduler=cluster.scheduler_address,
        )
        app = create_app(settings, dask_client=client)
        with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/api/health").json()["runner"].startswith("dask")
            small = [11.992, 45.296, 11.998, 45.300]
            body = {"aois": [small], "date": small_world["flood_date"], "model": "flood"}
            job_id = http.post("/api/jobs", json=body).json()["id"]
            deadline = time.monotonic() + 300
            while (st := http.get(f"/api/jobs/{job_id}").json())["status"] in (
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline, st
                time.sleep(0.1)
            assert st["status"] == "done", st
            t = TMS.tile((small[0] + small[2]) / 2, (small[1] + small[3]) / 2, 15)
            r = http.get(f"/api/jobs/{job_id}/tiles/15/{t.x}/{t.y}.png?layer=classes")
            px = np.array(Image.open(io.BytesIO(r.content)).convert("RGBA"))
            assert (px[..., 3] == 255).mean() > 0.05  # the AOI covers part of the tile
            # a date without imagery fails with the predict step's own message
            body["date"] = "2023-01-01"
            job_id = http.post("/api/jobs", json=body).json()["id"]
            while (st := http.get(f"/api/jobs/{job_id}").json())["status"] in (
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline, st
                time.sleep(0.1)
            assert st["status"] == "failed" and "no HLS item" in st["error"], st
    finally:
        client.close()
        cluster.close()


def test_job_survives_a_killed_server(small_world, flood_model, tmp_path):
    """`terrastill serve` killed (SIGKILL) mid-job: after a restart the job runs again and ends
    done — it is never lost."""
    import os
    import signal
    import subprocess
    import sys

    from app_support import free_port

    def start(port: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "terrastill.cli", "serve", "--models", str(flood_model),
               "--data", str(tmp_path / "serve"), "--catalog", small_world["catalog"],
               "--port", str(port)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.2)

    port = free_port()
    proc = start(port)
    url = f"http://127.0.0.1:{port}"
    try:
        body = {"aois": [AOI], "date": small_world["flood_date"], "model": "flood"}
        job_id = httpx.post(f"{url}/api/jobs", json=body).json()["id"]
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/api/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc = start(port)
        deadline = time.monotonic() + 300
        while (st := httpx.get(f"{url}/api/jobs/{job_id}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        assert st["status"] == "done", st
        assert "restarted" in st["note"]
        assert httpx.get(f"{url}{st['links']['download']['classes'][0]}").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
