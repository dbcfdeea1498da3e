"""The STAC-API catalogue backend against a real stac-fastapi-pgstac server on loopback."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from faultproxy import FaultProxy, Faults
from stac_server import (  # noqa: F401 - pytest fixtures
    collection_for,
    load_item_collection,
    make_tiny_catalog,
    pgstac,
    static_server_factory,
    strip_links,
)
from terrastill.catalog import LocalCatalog, Search, open_catalog
from terrastill.catalog.stac_api import StacApiCatalog, cloud_filter_cql2
from terrastill.data.read import read_whole
from terrastill.errors import AssetReadError, BadInputError, CatalogError, NotFoundError
from terrastill.io_http import gdal_env
from terrastill.retry import RetryPolicy

pytestmark = pytest.mark.pgstac

COLLECTIONS = ("tiny-hls", "tiny-s2")
FAST = RetryPolicy.fast(4)
BBOX_ALL = (14.0, 48.0, 16.0, 49.5)


def _dt(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, tzinfo=UTC)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_catalog(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_items(tiny: Path) -> list[dict]:
    return strip_links(load_item_collection(tiny))


@pytest.fixture(scope="session")
def tiny_collections(tiny_items: list[dict]) -> list[dict]:
    return [collection_for(tiny_items, c) for c in COLLECTIONS]


@pytest.fixture(scope="session")
def api_url(pgstac, tiny_items, tiny_collections) -> str:  # noqa: F811
    return pgstac.serve("tiny", tiny_collections, tiny_items)


@pytest.fixture(scope="session")
def local(tiny: Path) -> LocalCatalog:
    return LocalCatalog(tiny)


SEARCHES = [
    Search(COLLECTIONS, BBOX_ALL, _dt(1), _dt(31)),
    Search(COLLECTIONS, BBOX_ALL, _dt(1), _dt(31), max_cloud=40),
    Search(("tiny-hls",), BBOX_ALL, _dt(5), _dt(20), max_cloud=80),
    Search(("tiny-s2",), BBOX_ALL, _dt(7, 10), _dt(17, 11), max_cloud=0),
    # a bbox touching only the western tile
    Search(COLLECTIONS, (15.0013, 48.7503, 15.0040, 48.7521), _dt(1), _dt(31), max_cloud=60),
    # a window with no items
    Search(
        COLLECTIONS, BBOX_ALL, datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC)
    ),
    # naive datetimes are UTC
    Search(("tiny-hls",), BBOX_ALL, datetime(2024, 5, 4), datetime(2024, 5, 10, 10, 30)),
]


def _ids(items) -> list[str]:
    return [f"{it.collection_id}/{it.id}" for it in items]


@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: f"{s.collections}-{s.max_cloud}")
def test_same_items_as_local(api_url: str, local: LocalCatalog, search: Search) -> None:
    api = StacApiCatalog(api_url, retry=FAST)
    got, want = api.search(search), local.search(search)
    assert _ids(got) == _ids(want)
    # asset hrefs are the same absolute paths as the local catalogue's
    assert [it.assets["red"].href for it in got] == [it.assets["red"].href for it in want]


def test_searches_are_not_trivial(local: LocalCatalog) -> None:
    """Guard: the searches above distinguish filters (different, non-empty answers)."""
    counts = [len(local.search(s)) for s in SEARCHES]
    assert counts[0] == 32 and 0 < counts[1] < counts[0] and counts[5] == 0
    assert 0 < counts[4] < counts[0]


@pytest.mark.parametrize("limit", [1, 2, 5, 1000])
def test_paging_small_limits(api_url: str, local: LocalCatalog, limit: int) -> None:
    search = SEARCHES[0]
    with FaultProxy(api_url) as proxy:  # rate 0: just counts requests
        api = StacApiCatalog(proxy.url, page_limit=limit, retry=FAST)
        before = proxy.stats["requests"]
        got = api.search(search)
        pages = proxy.stats["requests"] - before
    assert _ids(got) == _ids(local.search(search))
    assert len(got) == 32
    if limit < 32:
        assert pages >= 32 // limit, f"expected paging, saw {pages} request(s)"


@pytest.fixture(scope="session")
def api_variants(pgstac, tiny_items, tiny_collections, api_url) -> dict[str, str]:  # noqa: F811
    """The same items behind servers with different search extensions enabled."""
    return {
        "filter": api_url,
        "query": pgstac.serve(
            "tiny_q", tiny_collections, tiny_items, extensions=["query", "pagination"]
        ),
        "client": pgstac.serve(
            "tiny_none", tiny_collections, tiny_items, extensions=["pagination"]
        ),
    }


@pytest.mark.parametrize("mode", ["filter", "query", "client"])
@pytest.mark.parametrize("max_cloud", [0, 25, 50, 99])
def test_cloud_filter_modes(
    api_variants: dict[str, str], local: LocalCatalog, mode: str, max_cloud: float
) -> None:
    api = StacApiCatalog(api_variants[mode], retry=FAST, page_limit=4)
    assert api.filter_mode == mode  # chosen from the server's conformance classes
    search = Search(COLLECTIONS, BBOX_ALL, _dt(1), _dt(31), max_cloud=max_cloud)
    got = api.search(search)
    want = local.search(search)
    if mode == "query":
        # The query extension cannot say "or not recorded": items without eo:cloud_cover are
        # dropped server-side (LocalCatalog and the CQL2 path keep them). Everything else is
        # identical.
        want = [it for it in want if it.properties.get("eo:cloud_cover") is not None]
    assert _ids(got) == _ids(want)
    for it in got:
        cc = it.properties.get("eo:cloud_cover")
        assert cc is None or cc <= max_cloud


def test_server_side_filters_really_filter(api_variants: dict[str, str]) -> None:
    """The CQL2 and query paths are applied by the server, not only client-side."""
    import requests

    body = {"collections": list(COLLECTIONS), "limit": 100}
    cql = {**body, "filter": cloud_filter_cql2(25), "filter-lang": "cql2-json"}
    q = {**body, "query": {"eo:cloud_cover": {"lte": 25}}}
    n_all = len(
        requests.post(f"{api_variants['filter']}/search", json=body, timeout=10).json()["features"]
    )
    n_cql = len(
        requests.post(f"{api_variants['filter']}/search", json=cql, timeout=10).json()["features"]
    )
    n_q = len(
        requests.post(f"{api_variants['query']}/search", json=q, timeout=10).json()["features"]
    )
    assert n_all == 32
    assert 0 < n_cql < n_all
    # the query extension has no isNull: items without cloud cover drop out server-side
    assert 0 < n_q <= n_cql


def test_forced_filter_mode(api_variants: dict[str, str], local: LocalCatalog) -> None:
    search = SEARCHES[1]
    for mode in ("filter", "client"):
        api = StacApiCatalog(api_variants["filter"], retry=FAST, filter_mode=mode)
        assert _ids(api.search(search)) == _ids(local.search(search))
    api = StacApiCatalog(api_variants["filter"], retry=FAST, filter_mode="query")
    want = [it for it in local.search(search) if "eo:cloud_cover" in it.properties]
    assert _ids(api.search(search)) == _ids(want)


def test_collection_ids(api_url: str) -> None:
    assert StacApiCatalog(api_url, retry=FAST).collection_ids() == sorted(COLLECTIONS)


def test_missing_collection_is_clear(api_url: str) -> None:
    api = StacApiCatalog(api_url, retry=FAST)
    with pytest.raises(NotFoundError, match=r"collection\(s\) not found: no-such-thing") as ei:
        api.search(Search(("tiny-hls", "no-such-thing"), BBOX_ALL, _dt(1), _dt(31)))
    assert api_url in str(ei.value)
    assert "tiny-hls" in str(ei.value)  # lists what is available
    assert ei.value.exit_code == 2


def test_open_catalog_dispatch(api_url: str, tiny: Path) -> None:
    assert isinstance(open_catalog(api_url), StacApiCatalog)
    assert isinstance(open_catalog(str(tiny)), LocalCatalog)


def test_items_with_missing_assets(pgstac, tiny_items, tiny_collections, tmp_path, local) -> None:  # noqa: F811
    """Items whose asset files are gone: the search still works; reading names the asset."""
    items = [dict(f) for f in tiny_items[:3]]
    gone = str(tmp_path / "gone.tif")
    items[1] = {
        **items[1],
        "assets": {**items[1]["assets"], "red": {**items[1]["assets"]["red"], "href": gone}},
    }
    url = pgstac.serve("missing_assets", tiny_collections, items)
    api = StacApiCatalog(url, retry=FAST)
    got = api.search(Search(COLLECTIONS, BBOX_ALL, _dt(1), _dt(31)))
    assert len(got) == 3
    broken = next(it for it in got if it.id == items[1]["id"])
    assert broken.assets["red"].href == gone
    with pytest.raises(AssetReadError, match=r"gone\.tif"):
        read_whole(broken.assets["red"].href, policy=FAST)
    ok = next(it for it in got if it.id == items[0]["id"])
    assert read_whole(ok.assets["red"].href, policy=FAST).shape == (32, 32)


def test_http_assets_through_fault_proxy(
    pgstac,  # noqa: F811
    tiny,
    tiny_items,
    tiny_collections,
    static_server_factory,  # noqa: F811
    local,
) -> None:
    """Assets served over HTTP (GDAL /vsicurl/) behind the fault proxy read back identical."""
    import numpy as np

    files = static_server_factory(tiny.parent)
    with FaultProxy(files.url, Faults(rate=0.4, seed=3, max_consecutive=2)) as proxy:
        root = str(tiny.parent)
        http_items = []
        for f in tiny_items:
            g = {
                **f,
                "assets": {
                    k: {**a, "href": proxy.url + a["href"][len(root) :]}
                    for k, a in f["assets"].items()
                },
            }
            http_items.append(g)
        url = pgstac.serve(f"http_assets_{proxy.port}", tiny_collections, http_items)
        api = StacApiCatalog(url, retry=FAST)
        search = SEARCHES[2]
        got = api.search(search)
        want = local.search(search)
        assert _ids(got) == _ids(want)
        for a, b in zip(got, want, strict=True):
            assert a.assets["red"].href.startswith("http://127.0.0.1")
            arr = read_whole(a.assets["red"].href, policy=RetryPolicy.fast(4))
            ref = read_whole(b.assets["red"].href)
            np.testing.assert_array_equal(arr, ref)
        assert proxy.stats["faulted"] > 0


def test_planetary_computer_signing_needs_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # as if not installed
    with pytest.raises(BadInputError, match="pip install planetary-computer"):
        StacApiCatalog("https://planetarycomputer.microsoft.com/api/stac/v1")
    with pytest.raises(BadInputError, match="planetary-computer"):
        StacApiCatalog("http://127.0.0.1:9/", sign="planetary-computer")


def test_planetary_computer_signing_modifier(api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the package present, its sign_inplace signs every item pystac-client returns."""
    import sys
    import types

    signed: list[str] = []

    def sign_inplace(obj):  # like the real one: items, item collections, or their dicts
        import pystac

        if isinstance(obj, pystac.Item):
            signed.append(obj.id)
            for a in obj.assets.values():
                a.href = a.href + "?sig=test"
        elif isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
            for f in obj.get("features", []):
                signed.append(f["id"])
                for a in f.get("assets", {}).values():
                    a["href"] = a["href"] + "?sig=test"
        return obj

    monkeypatch.setitem(
        sys.modules, "planetary_computer", types.SimpleNamespace(sign_inplace=sign_inplace)
    )
    api = StacApiCatalog(api_url, sign="planetary-computer", retry=FAST)
    got = api.search(SEARCHES[3])
    assert got and sorted(signed) == sorted(it.id for it in got)
    assert all(it.assets["red"].href.endswith("?sig=test") for it in got)


def test_bad_arguments() -> None:
    with pytest.raises(BadInputError):
        StacApiCatalog("ftp://example.org")
    with pytest.raises(BadInputError):
        StacApiCatalog("http://127.0.0.1:9", page_limit=0)
    with pytest.raises(BadInputError):
        StacApiCatalog("http://127.0.0.1:9", filter_mode="sql")


def test_not_a_stac_api(static_server_factory, tiny: Path) -> None:  # noqa: F811
    files = static_server_factory(tiny.parent)
    with pytest.raises(CatalogError, match=files.url):
        StacApiCatalog(files.url + "/catalog.json", retry=FAST)
    with pytest.raises(CatalogError, match="404"):
        StacApiCatalog(files.url + "/nothing-here", retry=FAST)


def test_unreachable_api_fails_clearly_and_quickly() -> None:
    from stac_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(CatalogError, match=f"{url}.*after 4 attempt") as ei:
        StacApiCatalog(url, retry=FAST, timeout=2)
    assert time.monotonic() - t0 < 5
    assert ei.value.exit_code == 1


def test_gdal_env_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine urs.earthdata.nasa.gov login u password p\n")
    monkeypatch.setenv("NETRC", str(netrc))
    env = gdal_env(retry=RetryPolicy(attempts=4, base_delay=0.5), cookie_file=tmp_path / "c.txt")
    assert env["GDAL_HTTP_NETRC"] == "YES"
    assert env["GDAL_HTTP_NETRC_FILE"] == str(netrc)
    assert env["GDAL_HTTP_COOKIEFILE"] == env["GDAL_HTTP_COOKIEJAR"] == str(tmp_path / "c.txt")
    assert env["GDAL_HTTP_MAX_RETRY"] == "3"
    assert env["GDAL_HTTP_RETRY_DELAY"] == "0.5"
    assert "503" in env["GDAL_HTTP_RETRY_CODES"] and "429" in env["GDAL_HTTP_RETRY_CODES"]
    off = gdal_env(netrc=False)
    assert off["GDAL_HTTP_NETRC"] == "NO" and "GDAL_HTTP_NETRC_FILE" not in off
    import rasterio

    with rasterio.Env(**env):  # GDAL accepts every option
        pass


def test_gdal_block_cache_is_fixed_unless_the_environment_sets_it(monkeypatch) -> None:
    """GDAL's default cache is 5 % of RAM; reads get a fixed one, or GDAL_CACHEMAX's."""
    import rasterio
    from rasterio._env import get_gdal_config

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    env = gdal_env()
    assert env["GDAL_CACHEMAX"] == 256 * 2**20
    with rasterio.Env(**env):
        assert int(get_gdal_config("GDAL_CACHEMAX")) == 256 * 2**20
    monkeypatch.setenv("GDAL_CACHEMAX", "64")
    assert "GDAL_CACHEMAX" not in gdal_env()  # GDAL reads the variable itself
