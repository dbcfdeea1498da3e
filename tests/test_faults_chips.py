"""``terrastill chips`` against a real STAC API server: same bytes as the local catalogue, with
and without injected faults, after SIGKILLs, and with a corrupt asset.

The demo world (conftest ``small_world``) is served by stac-fastapi-pgstac (tests/stac_server.py)
with asset hrefs either as absolute file paths or as HTTP URLs of a local file server; the fault
proxy (tests/faultproxy.py) sits in front of the API and/or the asset server.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faultproxy import FaultProxy, Faults
from stac_server import (  # noqa: F401 - pytest fixtures
    dataset_fingerprint,
    fast_retries,
    fingerprint_diff,
    pgstac,
    serve_catalog,
    static_server_factory,
)

pytestmark = [pytest.mark.pgstac, pytest.mark.slow, pytest.mark.usefixtures("fast_retries")]
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"

OPTS = ["--classes", "land,water", "--chip-size", "16", "--num-steps", "2", "--temporal-step",
        "9", "--temporal-tolerance", "4", "--max-cloud", "60", "--min-valid", "0.3",
        "--split-block", "1000"]
N_ROWS = 60  # observations used (a subset keeps server runs short)
NO_TRUNCATE = ("drop", "delay", "429", "500", "503")




@pytest.fixture(scope="module")
def obs(small_world, tmp_path_factory) -> Path:
    src = Path(small_world["tasks"]["flood"]["observations"])
    lines = src.read_text().splitlines(keepends=True)
    out = tmp_path_factory.mktemp("obs") / "flood_subset.csv"
    out.write_text("".join(lines[: N_ROWS + 1]))
    return out


def chips(obs: Path, catalog: str, out: Path, *extra: str) -> tuple[int, str]:
    """Run ``terrastill chips`` in a fresh process (no GDAL cache or open datasets shared
    between runs, as for a user); return (exit code, stdout + stderr)."""
    env = {**os.environ, "TERRASTILL_PROGRESS": "0", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "terrastill.cli", "chips", str(obs), "--catalog", catalog,
         "--out", str(out), *OPTS, *extra],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def local_ref(small_world, obs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "chips"
    code, output = chips(obs, small_world["catalog"], out)
    assert code == 0, output
    assert len(list((out / "chips").glob("*.tif"))) >= 5, "reference too small to mean much"
    return out


@pytest.fixture(scope="module")
def world_dir(small_world) -> Path:
    return Path(small_world["catalog"]).parent


@pytest.fixture(scope="module")
def api_files(pgstac, small_world) -> str:  # noqa: F811
    """The world behind a STAC API, asset hrefs = absolute file paths."""
    return serve_catalog(pgstac, small_world["catalog"], "world_files")


@pytest.fixture(scope="module")
def asset_proxy(static_server_factory, world_dir):  # noqa: F811
    """A fault proxy (clean until told otherwise) in front of a file server of the world."""
    files = static_server_factory(world_dir)
    with FaultProxy(files.url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def api_http(pgstac, small_world, asset_proxy) -> str:  # noqa: F811
    """The world behind a STAC API, asset hrefs = HTTP URLs through ``asset_proxy``."""
    return serve_catalog(pgstac, small_world["catalog"], "world_http", asset_base=asset_proxy.url)


def same_as_local(out: Path, local_ref: Path, world_dir: Path, small_world: dict,
                  api: str, asset_base: str | None = None) -> list[str]:
    replace = {api: small_world["catalog"]}
    if asset_base:
        replace[asset_base] = str(world_dir)
    return fingerprint_diff(dataset_fingerprint(out, replace), dataset_fingerprint(local_ref))


def test_server_with_file_hrefs_gives_identical_dataset(obs, api_files, local_ref, world_dir,
                                                        small_world, tmp_path) -> None:
    code, output = chips(obs, api_files, tmp_path / "o")
    assert code == 0, output
    assert same_as_local(tmp_path / "o", local_ref, world_dir, small_world, api_files) == []
    # images and labels are byte-identical without any normalisation
    for sub in ("chips", "labels"):
        for p in sorted((local_ref / sub).glob("*.tif")):
            assert (tmp_path / "o" / sub / p.name).read_bytes() == p.read_bytes()


def test_server_with_http_assets_gives_identical_dataset(obs, api_http, asset_proxy, local_ref,
                                                         world_dir, small_world,
                                                         tmp_path) -> None:
    asset_proxy.set_faults(Faults())
    code, output = chips(obs, api_http, tmp_path / "o")
    assert code == 0, output
    assert asset_proxy.stats["requests"] > 0  # assets really went over HTTP
    diff = same_as_local(tmp_path / "o", local_ref, world_dir, small_world, api_http,
                         asset_proxy.url)
    assert diff == []


@pytest.mark.parametrize("seed", [1, 2])
def test_api_faults_30pct_give_identical_dataset(obs, api_files, local_ref, world_dir,
                                                 small_world, tmp_path, seed) -> None:
    faults = Faults(rate=0.3, seed=seed, delay_s=0.02, max_consecutive=3)  # incl. truncation
    with FaultProxy(api_files, faults) as proxy:
        code, output = chips(obs, proxy.url, tmp_path / "o")
        stats = dict(proxy.stats)
    assert code == 0, output
    assert stats.get("faulted", 0) > 0
    assert same_as_local(tmp_path / "o", local_ref, world_dir, small_world, proxy.url) == []


def test_asset_faults_30pct_give_identical_dataset(obs, api_http, asset_proxy, local_ref,
                                                   world_dir, small_world, tmp_path) -> None:
    asset_proxy.set_faults(Faults(rate=0.3, kinds=NO_TRUNCATE, seed=4, delay_s=0.01,
                                  max_consecutive=2))
    try:
        code, output = chips(obs, api_http, tmp_path / "o")
        stats = dict(asset_proxy.stats)
    finally:
        asset_proxy.set_faults(Faults())
    assert code == 0, output
    assert stats.get("faulted", 0) > 0
    diff = same_as_local(tmp_path / "o", local_ref, world_dir, small_world, api_http,
                         asset_proxy.url)
    assert diff == []


def test_truncated_asset_answers_never_corrupt_chips(obs, api_http, asset_proxy, local_ref,
                                                     tmp_path) -> None:
    """Bodies cut short mid-transfer: whatever happens, no written chip differs from clean."""
    asset_proxy.set_faults(Faults(rate=0.3, kinds=("truncate",), seed=5, max_consecutive=2))
    try:
        code, output = chips(obs, api_http, tmp_path / "o")
    finally:
        asset_proxy.set_faults(Faults())
    for sub in ("chips", "labels"):
        for p in sorted((tmp_path / "o" / sub).glob("*.tif")):
            ref = local_ref / sub / p.name
            assert ref.exists() and ref.read_bytes() == p.read_bytes(), f"corrupt {sub}/{p.name}"
    if code != 0:  # a failure must be one clear error line, not a traceback
        assert "Traceback" not in output and "error:" in output, output


def test_truncated_asset_answers_give_identical_dataset(obs, api_http, asset_proxy, local_ref,
                                                        world_dir, small_world,
                                                        tmp_path) -> None:
    # Truncated answers are retried with GDAL's cache cleared; at 15% every read gets through
    # (at 30%+ some reads exhaust their tries: the run then fails clearly, see the report).
    asset_proxy.set_faults(Faults(rate=0.15, kinds=("truncate",), seed=6, max_consecutive=2))
    try:
        code, output = chips(obs, api_http, tmp_path / "o")
    finally:
        asset_proxy.set_faults(Faults())
    assert code == 0, output
    diff = same_as_local(tmp_path / "o", local_ref, world_dir, small_world, api_http,
                         asset_proxy.url)
    assert diff == []


def test_unreachable_api_fails_clearly_and_writes_nothing(obs, tmp_path) -> None:
    from stac_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "o"
    t0 = time.monotonic()
    code, output = chips(obs, url, out)
    assert code == 1, output
    assert "Traceback" not in output
    final = output[output.rindex("error:"):]  # retry warnings are logged before it
    assert url in final and "attempt" in final
    assert not out.exists() or not any(out.iterdir())
    assert time.monotonic() - t0 < 30


def test_api_failing_mid_run_then_resume_is_identical(obs, api_files, local_ref, world_dir,
                                                      small_world, tmp_path) -> None:
    """The API dies for good part-way (searches fail): clear error, then a clean re-run."""
    out = tmp_path / "o"
    with FaultProxy(api_files) as proxy:
        # let the landing page, conformance and collections through, then fail every search
        proxy.set_faults(Faults(rate=0.0))
        from terrastill.catalog.stac_api import StacApiCatalog

        StacApiCatalog(proxy.url).collection_ids()
        n_setup = proxy.stats["requests"]
        assert n_setup >= 2
        proxy.set_faults(Faults(rate=1.0, kinds=("503",), max_consecutive=None))
        code, output = chips(obs, proxy.url, out)
        assert code == 1 and "error:" in output and "503" in output, output
        assert not (out / "dataset.json").exists()
        proxy.set_faults(Faults())
        code, output = chips(obs, proxy.url, out)
        assert code == 0, output
        assert same_as_local(out, local_ref, world_dir, small_world, proxy.url) == []


def _kill_and_resume(obs: Path, catalog: str, out: Path, rng: random.Random, kills: int) -> int:
    """Start ``terrastill chips`` as a subprocess and SIGKILL it at a random point, repeatedly:
    during start-up/search (a random delay) or after a random number of finished chips;
    return how many kills landed before a run finished."""
    env = {**os.environ, "TERRASTILL_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "terrastill.cli", "chips", str(obs), "--catalog", catalog,
           "--out", str(out), *OPTS]
    landed = 0
    for _ in range(kills):
        before = len(list((out / "records").glob("*.json"))) if (out / "records").exists() else 0
        by_time = rng.random() < 0.3
        wait_s, wait_records = rng.uniform(0.2, 2.0), before + rng.randint(1, 3)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 120:
            if by_time and time.monotonic() - t0 >= wait_s:
                break
            recs = (len(list((out / "records").glob("*.json")))
                    if (out / "records").exists() else 0)
            if not by_time and recs >= wait_records:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait()
        if (out / "dataset.json").exists():
            break
    return landed


@pytest.mark.parametrize("via", ["server", "server+faults"])
def test_sigkill_at_random_points_then_resume_is_identical(obs, api_files, local_ref, world_dir,
                                                           small_world, tmp_path, via) -> None:
    rng = random.Random(f"kill-{via}")
    out = tmp_path / "o"
    faults = Faults(rate=0.2 if via == "server+faults" else 0.0, kinds=NO_TRUNCATE, seed=7)
    with FaultProxy(api_files, faults) as proxy:
        landed = _kill_and_resume(obs, proxy.url, out, rng, kills=4)
        if out.exists():
            for p in out.rglob("*.tif"):  # every image present is complete and readable
                import rasterio

                with rasterio.open(p) as src:
                    src.read()
        code, output = chips(obs, proxy.url, out)
    assert code == 0, output
    assert landed >= 1, "no kill landed before the run finished"
    assert not list(out.rglob(".tmp-*"))
    assert same_as_local(out, local_ref, world_dir, small_world, proxy.url) == []


def _corrupt_catalog(small_world: dict, local_ref: Path, folder: Path, kind: str
                     ) -> tuple[Path, str, str]:
    """A copy of the world catalogue where one used item's red band is broken:
    ``real`` = rasterio's corrupt.tif (wrong dtype too), ``truncated`` = the item's own COG cut
    to 40% of its bytes."""
    rec = next(json.loads(p.read_text()) for p in sorted((local_ref / "records").glob("*.json"))
               if json.loads(p.read_text())["status"] == "ok")
    item_id = rec["steps"][0]["items"][0]
    cat_path = Path(small_world["catalog"])
    data = json.loads(cat_path.read_text())
    hit = 0
    for f in data["features"]:
        for a in f["assets"].values():  # make every href absolute (the copy lives elsewhere)
            if "://" not in a["href"] and not a["href"].startswith("/"):
                a["href"] = str((cat_path.parent / a["href"]).resolve())
        if f["id"] == item_id:
            key = next(k for k in ("B04", "red", "B4") if k in f["assets"])
            bad = folder / ("corrupt.tif" if kind == "real" else "truncated.tif")
            if kind == "real":
                shutil.copy(REAL / "rasterio" / "corrupt.tif", bad)
            else:
                raw = Path(f["assets"][key]["href"]).read_bytes()
                bad.write_bytes(raw[: int(len(raw) * 0.4)])
            f["assets"][key]["href"] = str(bad)
            hit += 1
    assert hit == 1
    shutil.copytree(cat_path.parent / "collections", folder / "collections")
    out = folder / "catalog.json"
    out.write_text(json.dumps(data))
    return out, item_id, rec["id"]


CORRUPT_CASES = [
    pytest.param("truncated", "local", id="truncated-local"),
    pytest.param("truncated", "server", id="truncated-server"),
    # rasterio's corrupt.tif is also uint8 where int16 is due: a wrong asset, not a crash
    pytest.param("real", "local", id="real-corrupt-local"),
    pytest.param("real", "server", id="real-corrupt-server"),
]


@pytest.mark.parametrize(("kind", "backend"), CORRUPT_CASES)
def test_corrupt_asset_rejects_its_group_and_the_rest_completes(pgstac, obs, small_world,  # noqa: F811
                                                                local_ref, tmp_path, kind,
                                                                backend) -> None:
    import pandas as pd

    if kind == "real" and not (REAL / "rasterio" / "corrupt.tif").exists():
        pytest.skip(f"real sample data not found at {REAL}")
    folder = tmp_path / "world"
    folder.mkdir()
    catalog, _item_id, chip_id = _corrupt_catalog(small_world, local_ref, folder, kind)
    cat = (str(catalog) if backend == "local"
           else serve_catalog(pgstac, catalog, f"corrupt_{kind}"))
    out = tmp_path / "o"
    code, output = chips(obs, cat, out)
    assert code == 0, output
    rejected = pd.read_csv(out / "rejected.csv")
    mine = rejected[rejected.chip_id == chip_id]
    assert len(mine) >= 1, f"{chip_id} not rejected"
    assert mine.reason.str.contains(f"{'corrupt' if kind == 'real' else 'truncated'}.tif").all()
    made = {p.name for p in (out / "chips").glob("*.tif")}
    ref = {p.name for p in (local_ref / "chips").glob("*.tif")}
    assert f"{chip_id}.tif" not in made
    assert made <= ref and len(made) >= len(ref) // 2  # the rest completes
    for name in made:  # every chip made (none uses the broken asset) is unchanged
        assert (out / "chips" / name).read_bytes() == (local_ref / "chips" / name).read_bytes()
