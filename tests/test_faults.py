"""Fault injection between terrastill and a real STAC API / asset server.

The fault proxy (tests/faultproxy.py) drops connections, truncates bodies, delays, and answers
429/500/503 for a seeded fraction of requests. Searches through it must return exactly what a
clean search returns, or fail with one clear CatalogError naming the URL after bounded retries.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from faultproxy import FAULT_KINDS, FaultProxy, Faults
from stac_server import (  # noqa: F401 - pytest fixtures
    collection_for,
    load_item_collection,
    make_tiny_catalog,
    pgstac,
    static_server_factory,
    strip_links,
)
from terrastill.catalog import Search
from terrastill.catalog.stac_api import StacApiCatalog
from terrastill.data.read import read_whole
from terrastill.errors import AssetReadError, CatalogError
from terrastill.retry import RetryPolicy

pytestmark = pytest.mark.pgstac

COLLECTIONS = ("tiny-hls", "tiny-s2")
SEARCH = Search(
    COLLECTIONS,
    (14.0, 48.0, 16.0, 49.5),
    datetime(2024, 5, 1, tzinfo=UTC),
    datetime(2024, 5, 31, tzinfo=UTC),
    max_cloud=70,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_catalog(tmp_path_factory.mktemp("tiny-faults"))


@pytest.fixture(scope="module")
def api_url(pgstac, tiny: Path) -> str:  # noqa: F811
    items = strip_links(load_item_collection(tiny))
    return pgstac.serve("faults", [collection_for(items, c) for c in COLLECTIONS], items)


@pytest.fixture(scope="module")
def clean_ids(api_url: str) -> list[str]:
    return [it.id for it in StacApiCatalog(api_url, page_limit=3).search(SEARCH)]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "kinds", [("drop", "truncate", "delay", "429", "500", "503"), ("truncate",), ("drop",)]
)
def test_search_through_30pct_faults_is_identical(api_url, clean_ids, seed, kinds) -> None:
    faults = Faults(rate=0.3, kinds=kinds, seed=seed, delay_s=0.02, max_consecutive=3)
    with FaultProxy(api_url, faults) as proxy:
        api = StacApiCatalog(proxy.url, page_limit=3, retry=RetryPolicy.fast(5), timeout=5)
        got = [it.id for it in api.search(SEARCH)]
        stats = dict(proxy.stats)
    assert got == clean_ids
    assert stats["requests"] > 10  # many pages went through the proxy
    assert stats.get("faulted", 0) > 0, stats


def test_search_through_60pct_faults_with_enough_retries(api_url, clean_ids) -> None:
    faults = Faults(rate=0.6, seed=11, delay_s=0.01, max_consecutive=4)
    with FaultProxy(api_url, faults) as proxy:
        api = StacApiCatalog(proxy.url, page_limit=2, retry=RetryPolicy.fast(6), timeout=5)
        assert [it.id for it in api.search(SEARCH)] == clean_ids
        assert proxy.stats["faulted"] > proxy.stats["passed"] * 0.5


@pytest.mark.parametrize("kind", ["drop", "503", "429", "500", "truncate"])
def test_total_failure_is_clear_and_bounded(api_url, kind) -> None:
    faults = Faults(rate=1.0, kinds=(kind,), max_consecutive=None)
    with FaultProxy(api_url, faults) as proxy:
        t0 = time.monotonic()
        with pytest.raises(CatalogError) as ei:
            StacApiCatalog(proxy.url, retry=RetryPolicy.fast(4), timeout=5)
        elapsed = time.monotonic() - t0
        assert proxy.stats["requests"] == 4  # exactly `attempts` tries, then give up
    msg = str(ei.value)
    assert proxy.url in msg and "after 4 attempt(s)" in msg
    if kind in ("503", "429", "500"):
        assert f"HTTP {kind}" in msg
    assert elapsed < 5


def test_failure_mid_paging_names_the_page(api_url) -> None:
    with FaultProxy(api_url) as proxy:
        api = StacApiCatalog(proxy.url, page_limit=2, retry=RetryPolicy.fast(3), timeout=5)
        api.collection_ids()
        proxy.set_faults(Faults(rate=1.0, kinds=("503",), max_consecutive=None))
        with pytest.raises(CatalogError, match=r"POST .*/search.*after 3 attempt\(s\).*HTTP 503"):
            api.search(SEARCH)


def test_non_transient_errors_are_not_retried(api_url) -> None:
    """A 4xx (here: an unknown collection's page) fails at once, naming the URL."""
    with FaultProxy(api_url) as proxy:
        api = StacApiCatalog(proxy.url, retry=RetryPolicy.fast(5))
        n0 = proxy.stats["requests"]
        with pytest.raises(
            CatalogError,
            match=r"/collections/nope: STAC API refused the "
            r"request \(HTTP 404",
        ):
            api._io.request(f"{proxy.url}/collections/nope")
        assert proxy.stats["requests"] - n0 == 1


def test_retry_waits_grow_with_jitter() -> None:
    from terrastill.retry import retry_call

    waits: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 5:
            raise ConnectionError("boom")
        return "ok"

    policy = RetryPolicy(attempts=5, base_delay=0.1, max_delay=0.5, jitter=0.5, seed=1)
    assert (
        retry_call(flaky, what="x", is_transient=lambda e: True, policy=policy, sleep=waits.append)
        == "ok"
    )
    assert len(waits) == 4
    caps = [0.1, 0.2, 0.4, 0.5]
    for w, cap in zip(waits, caps, strict=True):
        assert cap * 0.5 <= w <= cap
    assert policy.total_budget() == pytest.approx(sum(caps))


# -- asset reads over HTTP through the proxy ---------------------------------------------------


@pytest.fixture(scope="module")
def files(static_server_factory, tiny: Path):  # noqa: F811
    return static_server_factory(tiny.parent)


@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "delay"] + ["delay"])
def test_asset_reads_survive_each_fault_kind(files, tiny: Path, kind: str) -> None:
    names = sorted(p.name for p in (tiny.parent / "assets").glob("*_red.tif"))[:4]
    faults = Faults(rate=0.5, kinds=(kind,), seed=5, max_consecutive=2, delay_s=0.02)
    with FaultProxy(files.url, faults) as proxy:
        for name in names:
            got = read_whole(f"{proxy.url}/assets/{name}", policy=RetryPolicy.fast(4))
            want = read_whole(str(tiny.parent / "assets" / name))
            np.testing.assert_array_equal(got, want)
        assert proxy.stats["faulted"] > 0


def test_asset_total_failure_is_clear(files) -> None:
    with FaultProxy(files.url, Faults(rate=1.0, kinds=("503",), max_consecutive=None)) as proxy:
        href = f"{proxy.url}/assets/x.tif"
        with pytest.raises(AssetReadError, match=r"x.tif: unreachable after retries.*503") as ei:
            read_whole(href, policy=RetryPolicy.fast(3))
        assert getattr(ei.value, "transient", None) is True


def test_corrupt_remote_asset_is_rejected_not_retried_forever(files, tiny: Path,
                                                              real_data: Path) -> None:
    import shutil

    shutil.copy(real_data / "rasterio" / "corrupt.tif", tiny.parent / "corrupt.tif")
    with FaultProxy(files.url) as proxy:
        with pytest.raises(AssetReadError, match=r"corrupt\.tif: cannot read asset") as ei:
            read_whole(f"{proxy.url}/corrupt.tif", policy=RetryPolicy.fast(3))
        assert getattr(ei.value, "transient", None) is False
        assert proxy.stats["requests"] <= 3 * 15  # bounded: 3 tries of a few range reads


def test_missing_remote_asset_is_not_retried(files) -> None:
    with FaultProxy(files.url) as proxy:
        with pytest.raises(AssetReadError, match="404"):
            read_whole(f"{proxy.url}/nope.tif", policy=RetryPolicy.fast(5))
        assert proxy.stats["requests"] <= 2
