"""Search by example (TerraBit): geohash, Hamming scan, index shards/manifest, search, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.embeddings import geohash, hamming
from terrastill.embeddings.index import build_index, open_index
from terrastill.embeddings.search import Query, run_search
from terrastill.embeddings.table import write_table

runner = CliRunner()
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
AREA = ["--bbox", "11.9", "45.2", "12.2", "45.4"]


def make_table(path: Path, seed: int = 0, nx: int = 30, ny: int = 20, x0: float = 11.9,
               y0: float = 45.2, d: int = 32, prefix: str = "p", model: str = "synthetic"
               ) -> Path:
    """A grid of 0.01° patches whose vectors come from 4 spatially blocked clusters."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((4, d)) * 2 + 1.0
    ids, geoms, labels, vecs = [], [], [], []
    for i in range(nx):
        for j in range(ny):
            c = (i // 8 + j // 7) % 4
            x, y = x0 + i * 0.01, y0 + j * 0.01
            ids.append(f"{prefix}{i}_{j}")
            geoms.append(shapely.box(x, y, x + 0.01, y + 0.01))
            labels.append(f"c{c}")
            vecs.append(centres[c] + rng.standard_normal(d) * 0.7)
    f = pd.DataFrame({"id": ids, "geometry": geoms, "label": labels, "date": "2024-06-01"})
    return write_table(path, f, np.array(vecs, np.float32), {"model": {"name": model}})


def label_at(lon: float, lat: float, x0: float = 11.9, y0: float = 45.2) -> str:
    i, j = int((lon - x0) / 0.01), int((lat - y0) / 0.01)
    return f"c{(i // 8 + j // 7) % 4}"


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return make_table(tmp_path_factory.mktemp("tab") / "a.parquet")


@pytest.fixture(scope="module")
def index_dir(table, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "index"
    res = runner.invoke(app, ["index", str(table), "--out", str(out),
                              "--geohash-precision", "5"])
    assert res.exit_code == 0, res.output
    return out


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    text = " ".join(ln for ln in result.output.strip().splitlines() if ln.strip())
    assert text.startswith("error:"), result.output
    for w in words:
        assert w in text, text


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ---------------------------------------------------------------- geohash, Hamming


def test_geohash_known_cells_and_bounds():
    cells = geohash.encode(np.array([-5.6, 10.40744, 0.0]), np.array([42.6, 57.64911, 0.0]), 5)
    assert list(cells) == ["ezs42", "u4pru", "s0000"]
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-180, 180, 200), rng.uniform(-90, 90, 200)
    for c, x, y in zip(geohash.encode(lon, lat, 6), lon, lat, strict=True):
        x0, y0, x1, y1 = geohash.bounds(c)
        assert x0 <= x <= x1 and y0 <= y <= y1


def test_hamming_is_exact_and_knn_matches_brute_force():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (40_000, 13), dtype=np.uint8)  # 13 B: padded to 2 words
    q = rng.integers(0, 256, (37, 13), dtype=np.uint8)
    d = hamming.distances(q, base)
    ref = np.unpackbits(q[:, None, :] ^ base[None, :, :], axis=2).sum(2)
    assert (d == ref).all()
    order = np.lexsort((np.broadcast_to(np.arange(len(base)), ref.shape), ref), axis=1)[:, :10]
    for threads in (1, 2):
        kd, ki = hamming.knn(q, base, 10, threads=threads)
        assert (ki == order).all()
        assert (kd == np.take_along_axis(ref, order, 1)).all()


# ---------------------------------------------------------------- index


def test_index_shards_manifest_and_codes(index_dir, table):
    import geopandas as gpd

    from terrastill.embeddings.table import read_table

    m = json.loads((index_dir / "manifest.json").read_text())
    assert m["format"] == "terrastill-index" and m["dim"] == 32
    assert m["model"]["name"] == "synthetic" and m["geohash_precision"] == 5
    assert m["code"]["method"] == "rot:binary" and m["code"]["bytes"] == 4  # the default
    assert m["code"]["distance"].startswith("hamming")
    assert m["rerank"]["method"] == "int8" and m["rerank"]["bytes"] == 32
    assert m["rows"] == 600 == sum(s["rows"] for s in m["shards"])
    assert len(m["shards"]) > 4
    t = read_table(table)
    codec = open_index(index_dir).codec
    assert str(codec.method) == "rot:binary" and (index_dir / "rotation.npy").is_file()
    byid = dict(zip(t.frame["id"], codec.encode(t.vectors), strict=True))
    for s in m["shards"]:
        f = index_dir / s["path"]
        assert f.name == f"{s['geohash']}.parquet"
        meta = pq.ParquetFile(f).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
        g = gpd.read_parquet(f)
        assert len(g) == s["rows"] and g.crs.to_string() == "OGC:CRS84"
        assert {"id", "lon", "lat", "geometry", "date", "code", "rerank", "label"} <= set(g)
        b = g.total_bounds
        assert s["bbox"] == pytest.approx(list(b))
        assert (geohash.encode(g["lon"].to_numpy(), g["lat"].to_numpy(), 5) == s["geohash"]
                ).all()
        for i, c in zip(g["id"], g["code"], strict=True):
            assert bytes(byid[i]) == c  # the compress module's binary codec, reused


def test_append_updates_manifest_and_refuses_clashes(table, tmp_path):
    out = tmp_path / "idx"
    assert build_index([table], out, precision=4)["rows"] == 600
    other = make_table(tmp_path / "b.parquet", seed=1, x0=12.2, prefix="q")
    info = build_index([other], out)
    assert info["appended"] and info["rows"] == 1200
    idx = open_index(out)
    assert sum(s.rows for s in idx.shards) == 1200
    assert len(idx.read_column("id")) == 1200
    before = snapshot(out)
    # the same rows again, another model, another dimension, another code: refused, no change
    assert runner.invoke(app, ["index", str(other), "--out", str(out)]).exit_code == 2
    res = runner.invoke(app, ["index", str(make_table(tmp_path / "m.parquet", model="other",
                                                      prefix="m")), "--out", str(out)])
    one_line_error(res, "other", "synthetic")
    res = runner.invoke(app, ["index", str(make_table(tmp_path / "d.parquet", d=16,
                                                      prefix="d")), "--out", str(out)])
    one_line_error(res, "16 dims")
    res = runner.invoke(app, ["index", str(make_table(tmp_path / "e.parquet", prefix="e")),
                              "--out", str(out), "--code", "int4"])
    one_line_error(res, "--code int4")
    assert snapshot(out) == before


def test_raster_patches_become_rows(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    d, h, w = 8, 6, 5
    x = np.random.default_rng(2).standard_normal((d, h, w)).astype(np.float32)
    x[:, 0, 0] = np.nan
    path = tmp_path / "embeddings_32633.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=d, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 80, 80),
                       nodata=float("nan")) as dst:
        dst.write(x)
        for i in range(d):
            dst.set_band_description(i + 1, f"emb:{i:03d}")
        dst.update_tags(model="synthetic-raster", date="2024-06-01")
    out = tmp_path / "idx"
    res = runner.invoke(app, ["index", str(path), "--out", str(out), "--code", "rot-int4"])
    assert res.exit_code == 0, res.output
    idx = open_index(out)
    rows = idx.rows()
    assert len(rows) == h * w - 1 and idx.method == "rot:int4"
    assert (out / "rotation.npy").is_file()
    f = rows.frame
    assert (f["date"] == "2024-06-01").all()
    assert shapely.contains_xy(f["geometry"].to_numpy(), f["lon"], f["lat"]).all()
    r, c = (int(v) for v in f["id"].iloc[0].split(":")[1:])
    i = int(np.flatnonzero(f["id"] == f"embeddings_32633:{r}:{c}")[0])
    assert np.allclose(idx.decode_rerank(rows.rerank[i:i + 1])[0], x[:, r, c], atol=0.05)


# ---------------------------------------------------------------- search


def test_search_finds_the_exemplars_cluster(index_dir, tmp_path):
    import geopandas as gpd

    out = tmp_path / "r.parquet"
    res = runner.invoke(app, ["search", str(index_dir), "--near", "11.955,45.255", *AREA,
                              "--k", "25", "--out", str(out)])
    assert res.exit_code == 0, res.output
    g = gpd.read_parquet(out)
    assert list(g["rank"]) == list(range(1, 26))
    assert (np.diff(g["distance"]) >= 0).all()
    assert g["id"].iloc[0] == "p5_5" and g["distance"].iloc[0] == 0
    assert (g["label"] == label_at(11.955, 45.255)).mean() >= 0.95
    assert {"rank", "distance", "id", "geometry", "lon", "lat", "code", "shard"} <= set(g)
    meta = json.loads(pq.read_schema(out).metadata[b"terrastill"])
    assert meta["positives"] == ["p5_5"] and meta["candidates"] == 600


def test_pruning_and_exact_area(index_dir):
    idx = open_index(index_dir)
    area = shapely.box(11.905, 45.205, 11.925, 45.222)
    opened = idx.shards_meeting(area.bounds)
    assert 0 < len(opened) < len(idx.shards)
    res = run_search(idx, Query(near=[(12.15, 45.35)], area=area, k=3))
    geoms = res.rows.frame["geometry"].to_numpy()
    assert shapely.intersects(geoms, area).all()
    assert res.candidates == 3 * 3  # 3 × 3 patches of 0.01° meet that box
    assert res.shards_searched == len(opened)


def test_combine_negatives_invert_are_what_they_say(index_dir):
    idx = open_index(index_dir)
    area = shapely.box(11.9, 45.2, 12.2, 45.4)
    pool = idx.rows(area)
    codes = {i: c for i, c in zip(pool.frame["id"], pool.codes, strict=True)}
    a, b, n = codes["p5_5"], codes["p20_3"], codes["p12_15"]
    full = Query(near=[(11.955, 45.255), (12.105, 45.235)], area=area, k=len(pool))

    def dist(q: Query) -> dict[str, float]:
        r = run_search(idx, q)
        return dict(zip(r.rows.frame["id"], r.distance, strict=True))

    ham = lambda q: hamming.distances(np.asarray(q)[None], pool.codes)[0].astype(float)  # noqa
    ids = list(pool.frame["id"])
    mean = dist(full)
    assert mean == pytest.approx(dict(zip(ids, (ham(a) + ham(b)) / 2, strict=True)))
    for how, op in (("and", np.bitwise_and), ("or", np.bitwise_or)):
        got = dist(Query(**{**full.__dict__, "combine": how}))
        assert got == pytest.approx(dict(zip(ids, ham(op(a, b)), strict=True)))
    neg = dist(Query(**{**full.__dict__, "negatives": [(12.025, 45.355)]}))
    assert neg == pytest.approx(dict(zip(ids, (ham(a) + ham(b)) / 2 - ham(n), strict=True)))
    inv = run_search(idx, Query(near=[(11.955, 45.255)], area=area, k=5, invert=True))
    assert inv.distance[0] == 32 - ham(a).max()  # the farthest row comes first
    assert (inv.rows.frame["label"] != "c0").all()


def test_rerank_uses_int8_cosine_and_recovers_float_neighbours(index_dir, table):
    from terrastill.embeddings.evaluate import cosine_neighbours
    from terrastill.embeddings.table import read_table

    idx = open_index(index_dir)
    t = read_table(table)
    ids = t.frame["id"].to_numpy()
    picks = [5 * 20 + 5, 20 * 20 + 3, 12 * 20 + 15, 27 * 20 + 18, 3 * 20 + 17]
    recall = {False: [], True: []}
    for p in picks:
        lon, lat = 11.9 + p // 20 * 0.01 + 0.005, 45.2 + p % 20 * 0.01 + 0.005
        truth = set(ids[cosine_neighbours(t.vectors[p:p + 1], t.vectors, 10)[0]])
        for rr in (False, True):
            r = run_search(idx, Query(near=[(lon, lat)], k=10, rerank=rr))
            recall[rr].append(len(truth & set(r.rows.frame["id"])) / 10)
            if rr:
                vec = idx.decode_rerank(r.rows.rerank)
                q = idx.decode_rerank(idx.lookup(lon, lat).rerank)[0]
                cos = vec @ q / np.linalg.norm(vec, axis=1) / np.linalg.norm(q)
                assert r.distance == pytest.approx(1 - cos, abs=1e-6)
    # isotropic clusters: many near-ties, so binary alone recovers few of the float top 10
    assert np.mean(recall[True]) >= max(0.8, 2 * np.mean(recall[False]))


@pytest.mark.parametrize("code", ["int4", "rot-int4"])
def test_int4_codes_use_cosine_on_decoded_values(table, tmp_path, code):
    out = tmp_path / "idx"
    build_index([table], out, code=code, rerank="none", precision=4)
    idx = open_index(out)
    assert idx.manifest["rerank"] is None and "cosine" in idx.manifest["code"]["distance"]
    r = run_search(idx, Query(near=[(11.955, 45.255)], k=50))
    dec = idx.decode_codes(r.rows.codes)  # the compress module's own decoder
    q = idx.decode_codes(idx.lookup(11.955, 45.255).codes)[0]
    cos = dec @ q / np.linalg.norm(dec, axis=1) / np.linalg.norm(q)
    assert r.distance == pytest.approx(1 - cos, abs=1e-4)
    assert (r.rows.frame["label"].iloc[:20] == "c0").all()
    with pytest.raises(Exception, match="AND/OR"):
        run_search(idx, Query(near=[(11.955, 45.255)], k=5, combine="and"))


def test_rot_binary_index_of_the_earlier_layout_still_opens(table, tmp_path):
    """Indexes written before compress had rot:binary kept a binary codec beside a
    ``code_rotation`` entry; they open as rot:binary with the same codes and results."""
    out = tmp_path / "idx"
    build_index([table], out, code="rot-binary", precision=4, seed=3)
    now = open_index(out)
    m = json.loads((out / "manifest.json").read_text())
    codec = m["code"]["codec"]
    params = codec["params"]
    m["code_rotation"] = {"normalize": "l2", "center": params.pop("center"),
                          "rotation_file": codec.pop("rotation_file")}
    params.pop("scale")
    codec["method"] = "binary"
    (out / "manifest.json").write_text(json.dumps(m))
    old = open_index(out)
    assert str(old.codec.method) == "rot:binary"
    x = np.random.default_rng(0).standard_normal((7, 32))
    assert (old.encode(x)[0] == now.encode(x)[0]).all()
    q = Query(near=[(11.955, 45.255)], k=20, rerank=True)
    assert list(run_search(old, q).rows.frame["id"]) == list(run_search(now, q).rows.frame["id"])


def test_rot_binary_signs_of_rotated_unit_vectors(table, tmp_path):
    from terrastill.embeddings.compress import haar_rotation
    from terrastill.embeddings.table import read_table

    out = tmp_path / "idx"
    build_index([table], out, code="rot-binary", precision=4, seed=3)
    idx = open_index(out)
    m = idx.manifest
    assert m["code"]["method"] == "rot:binary" and idx.hamming
    assert m["code"]["distance"].startswith("hamming") and (out / "rotation.npy").is_file()
    x = read_table(table).vectors.astype(np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    bits = (u - u.mean(0)) @ haar_rotation(x.shape[1], 3).T > idx.codec.params["threshold"]
    rows = idx.rows()
    order = {v: i for i, v in enumerate(read_table(table).frame["id"])}
    ref = np.packbits(bits, axis=1)[[order[i] for i in rows.frame["id"]]]
    assert (rows.codes == ref).all()
    assert (idx.encode(3.0 * x[:5])[0] == np.packbits(bits[:5], axis=1)).all()  # no length
    r = run_search(idx, Query(near=[(11.955, 45.255)], k=20, rerank=True))
    assert r.rows.frame["id"].iloc[0] == "p5_5" and (r.rows.frame["label"] == "c0").all()
    assert run_search(idx, Query(near=[(11.955, 45.255), (11.965, 45.255)], k=5,
                                 combine="and")).candidates == 600
    more = make_table(tmp_path / "b.parquet", seed=1, nx=3, ny=3, prefix="q")
    build_index([more], out)  # an append encodes with the stored centre and rotation
    idx2 = open_index(out)
    new_rows = idx2.rows()
    sel = new_rows.frame["id"].str.startswith("q").to_numpy()
    assert (new_rows.codes[sel] == idx.encode(read_table(more).vectors[
        [list(read_table(more).frame["id"]).index(i) for i in new_rows.frame["id"][sel]]])[0]
    ).all()
    with pytest.raises(Exception, match="stores rot:binary codes"):
        build_index([table], out, code="int4")
    np.save(out / "rotation.npy", np.eye(3))
    with pytest.raises(Exception, match="rotation"):
        open_index(out)


def test_rerank_candidates_keep_rows_tied_at_the_cut():
    from terrastill.embeddings.search import rerank_candidates

    d = np.array([3, 1, 2, 2, 2, 2, 0, 5, 2, 4], float)
    ids = np.array([f"r{i}" for i in range(10)])
    # depth 3: the 3rd distance is 2, tied by rows 2, 3, 4, 5, 8: all are kept, by id
    assert list(rerank_candidates(d, 3, ids)) == [6, 1, 2, 3, 4, 5]  # limit 2 × depth
    assert list(rerank_candidates(d, 3, ids, limit=100)) == [6, 1, 2, 3, 4, 5, 8]
    assert list(rerank_candidates(d, 3, ids, limit=1)) == [6, 1, 2]  # never below depth
    assert list(rerank_candidates(d, 1, ids)) == [6]
    assert sorted(rerank_candidates(d, 20, ids)) == list(range(10))


def test_query_vectors_from_a_table(index_dir, table, tmp_path):
    q = tmp_path / "q.parquet"
    src = pd.read_parquet(table).iloc[[105]]  # p5_5
    from terrastill.embeddings.table import read_table

    t = read_table(table)
    write_table(q, t.frame.iloc[[105]].reset_index(drop=True), t.vectors[[105]],
                {"model": {"name": "synthetic"}})
    assert src["id"].iloc[0] == "p5_5"
    res = runner.invoke(app, ["search", str(index_dir), "--query", str(q), *AREA, "--k", "3",
                              "--rerank", "--out", str(tmp_path / "r.parquet")])
    assert res.exit_code == 0, res.output
    assert pd.read_parquet(tmp_path / "r.parquet")["id"].iloc[0] == "p5_5"


# ---------------------------------------------------------------- bad input


def test_bad_search_input_exits_2_and_writes_nothing(index_dir, table, tmp_path):
    out = tmp_path / "r.parquet"

    def run(*args: str):
        return runner.invoke(app, ["search", str(index_dir), *args, "--out", str(out)])

    one_line_error(run("--near", "40.0,10.0", *AREA), "outside every shard")
    one_line_error(run("--near", "11.955,45.255", *AREA, "--k", "0"), "--k 0")
    one_line_error(run("--near", "11.955,45.255", "--bbox", "11.9", "45.2", "11.905", "45.205",
                       "--k", "5"), "larger than the 1 candidate")
    one_line_error(run("--near", "11.955", *AREA), "LON,LAT")
    one_line_error(run("--near", "11.955,45.255"), "search area")
    one_line_error(run("--near", "11.955,45.255", *AREA, "--combine", "xor"), "--combine")
    other = make_table(tmp_path / "o.parquet", d=16, model="other", nx=2, ny=2)
    one_line_error(run("--query", str(other), *AREA), "other", "16 dims", "synthetic")
    one_line_error(runner.invoke(app, ["search", str(tmp_path), "--near", "11.955,45.255",
                                       *AREA, "--out", str(out)]), "not a search index")
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_corrupt_or_missing_shard_named_and_allow_partial(table, tmp_path):
    out = tmp_path / "idx"
    build_index([table], out, precision=5)
    m = json.loads((out / "manifest.json").read_text())
    bad, gone = m["shards"][3], m["shards"][7]
    (out / bad["path"]).write_bytes(b"not parquet at all")
    (out / gone["path"]).unlink()
    res_path = tmp_path / "r.parquet"
    args = ["search", str(out), "--near", "11.955,45.255", *AREA, "--k", "5",
            "--out", str(res_path)]
    res = runner.invoke(app, args)
    one_line_error(res, "--allow-partial")
    assert bad["geohash"] in res.output or gone["geohash"] in res.output
    assert not res_path.exists()
    res = runner.invoke(app, [*args, "--allow-partial"])
    assert res.exit_code == 0, res.output
    assert "skipped 2 bad shard" in res.output
    meta = json.loads(pq.read_schema(res_path).metadata[b"terrastill"])
    text = " ".join(meta["skipped_shards"])
    assert bad["geohash"] in text and gone["geohash"] in text
    assert meta["candidates"] == 600 - bad["rows"] - gone["rows"]


# ---------------------------------------------------------------- benchmark script


@pytest.mark.slow
def test_bench_search_smoke(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_search", SCRIPTS / "bench_search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(tmp_path, smoke=True, threads=1)
    t = res["throughput"]
    q = t["queries_per_s"]
    assert t["same_distances_as_faiss"]
    assert t.get("numpy_same_as_ours", True) and t["warmup_seconds"] >= 0
    assert set(t["seconds_each"]) >= {"ours", "faiss", "float32"}
    assert all(len(v) == t["repeats"] for v in t["seconds_each"].values())
    assert t["ours_vs_faiss"] == pytest.approx(q["ours"] / q["faiss"])
    assert t["ours_vs_float32"] == pytest.approx(q["ours"] / q["float32"])
    assert len(res["fidelity"]) >= 1
    for f in res["fidelity"].values():
        r = f["recall"]
        assert all(0 <= r[c][m] <= 1 for c in r for m in ("plain", "rerank"))
        assert r["binary"]["rerank"] >= r["binary"]["plain"]
        assert r["rot-binary"]["reranked_rows_mean"] >= 100 or f["rows"] <= 101
        assert r["int8"]["plain"] >= r["binary"]["plain"]
    s = res["storage"]
    assert s["binary_bytes_per_row"] < s["binary+int8_bytes_per_row"] < \
        s["float32_parquet_bytes_per_row"]
    p = res["pruning"]
    assert p["shards"] == 16 and p["small"]["shards_opened"] < p["full"]["shards_opened"] == 16
    assert p["small"]["candidates"] < p["full"]["candidates"]
    assert (tmp_path / "results.md").read_text().count("|") > 20
