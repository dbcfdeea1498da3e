"""Shared pieces of the app tests: a stand-in predict that writes real COGs, cards, servers.

The stand-in's "truth" is simple and known: class 0 west of the AOI's centre meridian, class 1
east of it; true colour is dark red in the west and bright green in the east.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
from shapely.ops import unary_union

from terrastill.app.tiles import hex_to_rgba
from terrastill.data.grid import utm_epsg
from terrastill.errors import NoImageryError, TerrastillError
from terrastill.inference.predict import PredictRequest, PredictResult

__all__ = ["PredictRequest", "PredictResult"]  # re-exported for the app tests

STAGES = ("fetch imagery", "predict", "write COG")
CLASS_COLORS = ["#e8e3c8", "#1f78b4"]
CLASS_NAMES = ["dry", "flooded"]
AOI_DEFAULT = [10.00, 45.00, 10.06, 45.04]


class FakeCancelled(TerrastillError):
    pass


def fake_card(path: Path) -> dict[str, Any]:
    """What a model card says, without torch: the file's text names the model's size."""
    depth = 2 if "student" in path.stem else 6
    return {
        "name": path.stem,
        "task": "segmentation",
        "class_names": CLASS_NAMES,
        "class_colors": CLASS_COLORS,
        "input_spec": {"source": "hls", "bands": ["red", "green", "blue"], "num_steps": 2},
        "metrics": {"miou": 0.81 if depth == 6 else 0.78},
        "params": 1_000_000 * depth,
        "macs": 5_000_000 * depth,
        "teacher": {"name": "teacher"} if depth == 2 else None,
        "depth": depth,
    }


def make_models(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("teacher", "student"):
        (folder / f"{name}.pt").write_bytes(b"fake model " + name.encode())
    return folder


def _write_cog(path: Path, data: np.ndarray, crs: int, transform: Any, nodata: float) -> None:
    profile = {
        "driver": "COG",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": str(data.dtype),
        "crs": f"EPSG:{crs}",
        "transform": transform,
        "nodata": nodata,
        "blocksize": 256,
        "overview_resampling": "nearest",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def fake_predict(
    request: Any,
    progress: Any = None,
    cancel: threading.Event | None = None,
    delay: float = 0.0,
    fail: str | None = None,
) -> PredictResult:
    """Reports the three stages, honours ``cancel``, writes classes + true-colour COGs."""
    t0 = time.perf_counter()
    if fail == "noimagery":
        raise NoImageryError("no acquisition within 10 days of 2024-06-01; nearest: 2024-07-02")
    if fail == "crash":
        raise RuntimeError("boom")
    for stage in STAGES:
        for k in range(4):
            if cancel is not None and cancel.is_set():
                raise FakeCancelled("cancelled")
            if progress is not None:
                progress(stage, (k + 1) / 4)
            time.sleep(delay)
    union = unary_union(request.aois)
    cx, cy = union.centroid.x, union.centroid.y
    epsg = utm_epsg(cx, cy)
    left, bottom, right, top = transform_bounds("EPSG:4326", f"EPSG:{epsg}", *union.bounds)
    res = 20.0
    left, top = np.floor(left / res) * res, np.ceil(top / res) * res
    width = int(np.ceil((right - left) / res))
    height = int(np.ceil((top - bottom) / res))
    transform = Affine(res, 0.0, left, 0.0, -res, top)
    xs = left + (np.arange(width) + 0.5) * res
    mid_x = transform_bounds("EPSG:4326", f"EPSG:{epsg}", cx, cy, cx, cy)[0]
    east = np.broadcast_to(xs >= mid_x, (height, width))
    classes = np.where(east, 1, 0).astype("uint8")[None]
    rgb = np.empty((3, height, width), dtype="float32")
    rgb[0] = np.where(east, 0.02, 0.15)
    rgb[1] = np.where(east, 0.25, 0.02)
    rgb[2] = 0.02
    out = Path(request.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpath, tpath = out / "classes.tif", out / "truecolor.tif"
    _write_cog(cpath, classes, epsg, transform, 255)
    _write_cog(tpath, rgb, epsg, transform, float("nan"))
    sidecar = out / "prediction.json"
    sidecar.write_text('{"model": "fake"}')
    return PredictResult(
        classes=[cpath],
        truecolor=[tpath],
        sidecar=sidecar,
        timings={"predict": round(time.perf_counter() - t0, 3)},
    )


def fake_app(tmp_path: Path, predict: Any = fake_predict, **settings: Any) -> Any:
    """The service over the stand-in models and predict, its data below ``tmp_path``."""
    from terrastill.app.main import create_app
    from terrastill.app.settings import Settings

    s = Settings(models_dir=make_models(tmp_path / "models"), data_dir=tmp_path / "data",
                 **settings)
    return create_app(s, predict_fn=predict, request_cls=PredictRequest, read_card=fake_card)


def local_client(app: Any, **kw: Any) -> Any:
    """A TestClient whose requests name ``localhost`` (the server's default allowed host)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://localhost", **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def hex_rgb(color: str) -> tuple[int, int, int]:
    return hex_to_rgba(color)[:3]
