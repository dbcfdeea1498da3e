"""``terrastill predict`` against a real STAC API server: the same products as from the local
catalogue, clean and through the fault proxy (API faults; asset faults over HTTP)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faultproxy import FaultProxy, Faults
from stac_server import (  # noqa: F401 - pytest fixtures
    fast_retries,
    pgstac,
    serve_catalog,
    static_server_factory,
)

pytestmark = [pytest.mark.pgstac, pytest.mark.slow, pytest.mark.usefixtures("fast_retries")]
NO_TRUNCATE = ("drop", "delay", "429", "500", "503")




def predict(model: Path, world: dict, catalog: str, out: Path) -> tuple[int, str]:
    date = dt.date.fromisoformat(world["tasks"]["flood"]["date"]) + dt.timedelta(days=6)
    env = {**os.environ, "TERRASTILL_PROGRESS": "0", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "terrastill.cli", "predict", str(model), "--catalog", catalog,
         "--out", str(out), "--bbox", *(str(v) for v in world["bbox"]), "--date",
         date.isoformat(), "--overlap", "0.5", "--probabilities", "--precision", "fp32"],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def products(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*.tif"))}


@pytest.fixture(scope="module")
def local_product(flood_model, small_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pred-local")
    code, output = predict(flood_model, small_world, small_world["catalog"], out)
    assert code == 0, output
    assert products(out), "no product written"
    return out


@pytest.fixture(scope="module")
def api_files(pgstac, small_world) -> str:  # noqa: F811
    return serve_catalog(pgstac, small_world["catalog"], "pred_files")


def test_predict_from_server_is_byte_identical(flood_model, small_world, local_product,
                                               api_files, tmp_path) -> None:
    code, output = predict(flood_model, small_world, api_files, tmp_path)
    assert code == 0, output
    assert products(tmp_path) == products(local_product)


def test_predict_through_api_faults_is_byte_identical(flood_model, small_world, local_product,
                                                      api_files, tmp_path) -> None:
    faults = Faults(rate=0.3, seed=3, delay_s=0.02, max_consecutive=3)
    with FaultProxy(api_files, faults) as proxy:
        code, output = predict(flood_model, small_world, proxy.url, tmp_path)
        assert proxy.stats["faulted"] > 0
    assert code == 0, output
    assert products(tmp_path) == products(local_product)


def test_predict_through_asset_faults_is_byte_identical(pgstac, flood_model, small_world,  # noqa: F811
                                                        local_product, static_server_factory,  # noqa: F811
                                                        tmp_path) -> None:
    files = static_server_factory(Path(small_world["catalog"]).parent)
    with FaultProxy(files.url) as proxy:
        url = serve_catalog(pgstac, small_world["catalog"], "pred_http", asset_base=proxy.url)
        proxy.set_faults(Faults(rate=0.3, kinds=NO_TRUNCATE, seed=4, delay_s=0.01,
                                max_consecutive=2))
        code, output = predict(flood_model, small_world, url, tmp_path)
        assert proxy.stats["faulted"] > 0
    assert code == 0, output
    assert products(tmp_path) == products(local_product)


def test_predict_with_api_down_fails_clearly(flood_model, small_world, tmp_path) -> None:
    from stac_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    code, output = predict(flood_model, small_world, url, tmp_path / "o")
    assert code == 1, output
    assert "Traceback" not in output
    assert url in output[output.rindex("error:"):]
    assert not products(tmp_path)
