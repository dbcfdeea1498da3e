"""The search service: registered indexes, POST /api/search, heatmap tiles, exports, limits."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_support import fake_app, local_client
from terrastill.embeddings.index import build_index
from test_search import make_table

TOKEN = "search-token-for-tests"
AREA = [[11.9, 45.25, 12.2, 45.45]]
BODY = {"index": "demo", "near": [[11.955, 45.305]], "aois": AREA, "k": 20}


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("indexes")
    table = make_table(root.parent / "t.parquet", y0=45.25)
    build_index([table], root / "demo", precision=5)
    (root / "not-an-index").mkdir()
    return root


def pq_schema(data: bytes):
    import pyarrow.parquet as papq

    return papq.read_schema(io.BytesIO(data))


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    r = math.radians(lat)
    y = int((1 - math.log(math.tan(r) + 1 / math.cos(r)) / math.pi) / 2 * n)
    return x, y


def test_search_routes(indexes, tmp_path):
    import geopandas as gpd

    app = fake_app(tmp_path, indexes_dir=indexes)
    with local_client(app) as c:
        listed = c.get("/api/indexes").json()
        assert [i["name"] for i in listed] == ["demo"]
        assert listed[0]["rows"] == 600 and listed[0]["method"] == "rot:binary"
        r = c.post("/api/search", json=BODY)
        assert r.status_code == 201, r.text
        res = r.json()
        feats = res["results"]["features"]
        assert len(feats) == 20 and res["candidates"] == 600
        assert [f["properties"]["rank"] for f in feats] == list(range(1, 21))
        assert feats[0]["id"] == "p5_5" and feats[0]["properties"]["distance"] == 0
        assert all(f["properties"]["label"] == "c0" for f in feats)
        assert len(res["id"]) == 32 and res["heatmap"]["tiles"][0].endswith("/{z}/{x}/{y}.png")
        # the heatmap: bright where the exemplar's cluster is, nothing outside the patches
        z = 14
        x, y = tile_of(11.955, 45.305, z)
        png = c.get(f"/api/search/{res['id']}/tiles/{z}/{x}/{y}.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        img = np.asarray(Image.open(io.BytesIO(png.content)))
        assert img.shape == (256, 256, 4) and img[..., 3].max() > 200
        x, y = tile_of(13.5, 46.5, z)
        empty = np.asarray(Image.open(io.BytesIO(
            c.get(f"/api/search/{res['id']}/tiles/{z}/{x}/{y}.png").content)))
        assert empty[..., 3].max() == 0
        # exports: the same top-k as GeoJSON and GeoParquet
        gj = c.get(f"/api/search/{res['id']}/export?format=geojson")
        assert gj.status_code == 200 and "attachment" in gj.headers["content-disposition"]
        assert [f["id"] for f in gj.json()["features"]] == [f["id"] for f in feats]
        pq = c.get(f"/api/search/{res['id']}/export?format=parquet")
        g = gpd.read_parquet(io.BytesIO(pq.content))
        assert list(g["id"]) == [f["id"] for f in feats] and list(g["rank"]) == list(range(1, 21))
        assert str(indexes) not in pq.content.decode("latin-1")
        meta = pq_schema(pq.content).metadata[b"terrastill"]
        assert json.loads(meta)["index"] == "demo"
        assert c.get(f"/api/search/{res['id']}").json()["features"][0]["id"] == "p5_5"
        # a negative exemplar and re-ranking change the scores, not the contract
        r2 = c.post("/api/search", json={**BODY, "negatives": [[12.025, 45.405]],
                                         "rerank": True}).json()
        assert r2["id"] != res["id"] and r2["distance"].startswith("cosine")


@pytest.mark.parametrize(("body", "status", "words"), [
    ({**BODY, "near": [[40.0, 10.0]]}, 422, "outside every shard"),
    ({**BODY, "k": 700}, 422, "larger than the 600"),
    ({**BODY, "k": 0}, 422, "k"),
    ({**BODY, "index": "nope"}, 404, "no index"),
    ({**BODY, "index": "../demo"}, 422, "index"),
    ({**BODY, "aois": [[0.0, 0.0, 10.0, 10.0]]}, 422, "larger than this server's limit"),
    ({**BODY, "combine": "xor"}, 422, "combine"),
    ({**BODY, "near": []}, 422, "near"),
])
def test_bad_search_requests_are_4xx(indexes, tmp_path, body, status, words):
    app = fake_app(tmp_path, indexes_dir=indexes)
    with local_client(app) as c:
        r = c.post("/api/search", json=body)
        assert r.status_code == status, r.text
        assert words in r.text
        assert str(indexes) not in r.text


def test_search_routes_need_the_token_and_ids(indexes, tmp_path):
    app = fake_app(tmp_path, indexes_dir=indexes, token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    with local_client(app) as c:
        sid = c.post("/api/search", json=BODY, headers=good).json()["id"]
        routes = [("GET", "/api/indexes"), ("POST", "/api/search"),
                  ("GET", f"/api/search/{sid}"), ("GET", f"/api/search/{sid}/tiles/14/0/0.png"),
                  ("GET", f"/api/search/{sid}/export?format=geojson")]
        paths = {p for p in app.openapi()["paths"] if "index" in p or "search" in p}
        assert len(paths) == 5
        for method, path in routes:
            for bad in ({}, {"Authorization": "Bearer wrong"}):
                r = c.request(method, path, headers=bad, json=BODY)
                assert r.status_code == 401, (method, path)
            r = c.request(method, path, headers=good, json=BODY)
            assert r.status_code in (200, 201), (method, path, r.text)
        assert c.get("/api/search/" + "0" * 32, headers=good).status_code == 404
        assert c.get("/api/search/..%2F..%2Fetc", headers=good).status_code in (404, 422)
        assert c.get(f"/api/search/{sid}/tiles/3/9/0.png", headers=good).status_code == 404


def test_no_search_routes_without_indexes(tmp_path):
    app = fake_app(tmp_path)
    assert not [p for p in app.openapi()["paths"] if "search" in p or "indexes" in p]
