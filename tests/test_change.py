"""``terrastill change`` / ``change-fit`` / ``change-map``: products, tiles, models, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from terrastill.cli import app

runner = CliRunner()
ORIGIN = (500000.0, 5000000.0)
RES = 120.0
CHANGED = (slice(20, 40), slice(30, 50))  # rows, cols of the changed block


def write_emb(path: Path, x: np.ndarray, date: str = "2024-06-01", int8: bool = False,
              **tags: str) -> Path:
    d, h, w = x.shape
    prof = dict(driver="GTiff", width=w, height=h, count=d, crs="EPSG:32633",
                transform=from_origin(*ORIGIN, RES, RES))
    base = {"model": "tiny", "model_sha256": "a" * 64, "date": date,
            "patch_grid": json.dumps({"patch_size_px": 4, "pixel_per": "patch"})}
    base.update(tags)
    if int8:
        lo, hi = np.nanmin(x, (1, 2)), np.nanmax(x, (1, 2))
        scale, offset = (hi - lo) / 254, (hi + lo) / 2
        q = np.rint((x - offset[:, None, None]) / scale[:, None, None])
        with rasterio.open(path, "w", dtype="int8", nodata=-128, **prof) as dst:
            dst.write(np.where(np.isnan(x), -128, q).astype(np.int8))
            dst.scales, dst.offsets = tuple(scale), tuple(offset)
            dst.descriptions = [f"emb:{i:03d}" for i in range(d)]
            dst.update_tags(**base)
        return path
    with rasterio.open(path, "w", dtype="float32", nodata=float("nan"), **prof) as dst:
        dst.write(x.astype(np.float32))
        dst.descriptions = [f"emb:{i:03d}" for i in range(d)]
        dst.update_tags(**base)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict:
    """Before/after rasters (16-d, 60×80 px) where one block changed along a fixed vector."""
    d = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 60, 80))
    b = a + 0.1 * rng.standard_normal(a.shape)
    b[:, CHANGED[0], CHANGED[1]] += 1.5 * rng.standard_normal((16, 1, 1))
    a[:, :3, :3] = np.nan
    return {"a": write_emb(d / "a.tif", a), "b": write_emb(d / "b.tif", b, "2024-07-01"),
            "b8": write_emb(d / "b8.tif", b, "2024-07-01", int8=True), "dir": d}


@pytest.fixture(scope="module")
def product(pair) -> Path:
    out = pair["dir"] / "chg"
    res = runner.invoke(app, ["change", str(pair["a"]), str(pair["b"]), "--out", str(out),
                              "--pca", "4", "--sample-every", "3"])
    assert res.exit_code == 0, res.output
    assert "PCA-4 keeps" in res.output
    return out


def clicks(path: Path, n: int = 24, seed: int = 0, crs: str | None = "EPSG:4326",
           only: int | None = None, extra: tuple[float, float] | None = None) -> Path:
    t = Transformer.from_crs(32633, 4326, always_xy=True)
    rng = np.random.default_rng(seed)
    feats = []
    for i in range(n):
        ch = (i % 2) if only is None else only
        if ch:
            r, c = rng.integers(21, 39), rng.integers(31, 49)
        else:
            r, c = rng.integers(45, 59), rng.integers(5, 79)
        lon, lat = t.transform(ORIGIN[0] + (c + .5) * RES, ORIGIN[1] - (r + .5) * RES)
        feats.append({"type": "Feature", "properties": {"change": int(ch)},
                      "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    if extra is not None:
        feats.append({"type": "Feature", "properties": {"change": 0},
                      "geometry": {"type": "Point", "coordinates": list(extra)}})
    fc: dict = {"type": "FeatureCollection", "features": feats}
    if crs is None:  # a GeoPackage without a CRS
        import geopandas as gpd

        gdf = gpd.GeoDataFrame.from_features(feats)
        gdf.to_file(path.with_suffix(".gpkg"))
        return path.with_suffix(".gpkg")
    path.write_text(json.dumps(fc))
    return path


def test_product_files_pca_and_int8(product, pair):
    meta = json.loads((product / "change.json").read_text())
    p = meta["pca"]
    assert p["k"] == 4 and len(p["components"]) == 4 and len(p["mean"]) == 16
    assert 0 < p["explained_variance_ratio"][0] <= p["explained_variance"] <= 1
    assert p["cumulative"][-1] == pytest.approx(1.0)
    assert meta["sample"]["every"] == 3 and meta["sample"]["valid_pixels"] == 60 * 80 - 9
    assert cog_validate(str(product / "change.tif"), quiet=True)[0]
    assert cog_validate(str(product / "preview.tif"), quiet=True)[0]
    with rasterio.open(product / "change.tif") as src:
        assert src.count == 4 and src.dtypes[0] == "int8" and src.nodata == -128
        assert src.descriptions[0] == "pca:000" and src.tags()["model"] == "tiny"
        codes = src.read().astype(np.float64)
        np.testing.assert_allclose(src.scales, meta["int8"]["scale"])
        real = codes * np.array(src.scales)[:, None, None] + np.array(src.offsets)[:, None, None]
    assert (codes[:, :3, :3] == -128).all() and (codes[:, 3:, 3:] > -128).all()
    # the stored parameters reproduce the scores of the difference to within half a step
    with rasterio.open(pair["a"]) as a, rasterio.open(pair["b"]) as b:
        diff = (b.read() - a.read()).reshape(16, -1).T.astype(np.float64)
    want = ((diff - p["mean"]) @ np.array(p["components"]).T).T.reshape(4, 60, 80)
    ok = np.isfinite(want)
    err = np.abs(real - want)[ok].reshape(4, -1).max(axis=1)
    assert (err <= np.array(meta["int8"]["scale"]) / 2 + 1e-5).all()
    with rasterio.open(product / "preview.tif") as pv:
        assert pv.count == 3 and pv.dtypes[0] == "uint8"
        rgb = pv.read()
    assert (rgb[:, :3, :3] == 0).all() and (rgb[:, 10:, 10:] > 0).all()


def test_tile_pyramid_lower_zoom_is_2x2_mean(product):
    meta = json.loads((product / "change.json").read_text())
    t = meta["tiles"]
    zmax, zmin = t["max_zoom"], t["min_zoom"]
    assert zmin < zmax and t["tiles_per_zoom"][str(zmin)] == 1
    top = sorted((product / "tiles" / str(zmax)).glob("*/*.tif"))
    assert len(top) == t["tiles_per_zoom"][str(zmax)] >= 2
    with rasterio.open(top[0]) as src:
        assert src.crs.to_epsg() == 3857 and src.width == src.height == 256
        assert src.count == 4 and src.dtypes[0] == "int8" and src.nodata == -128
        np.testing.assert_allclose(src.scales, meta["int8"]["scale"])
    # recompute the parent of zoom zmax−1 from its children by hand
    (parent,) = [p for p in (product / "tiles" / str(zmax - 1)).glob("*/*.tif")][:1]
    px, py = int(parent.parent.name), int(parent.stem)
    big = np.full((4, 512, 512), -128.0)
    for dx in (0, 1):
        for dy in (0, 1):
            child = product / "tiles" / str(zmax) / str(2 * px + dx) / f"{2 * py + dy}.tif"
            if child.exists():
                with rasterio.open(child) as c:
                    big[:, dy * 256:(dy + 1) * 256, dx * 256:(dx + 1) * 256] = c.read()
    blocks = big.reshape(4, 256, 2, 256, 2)
    valid = blocks != -128
    with np.errstate(invalid="ignore"):
        mean = np.where(valid, blocks, 0).sum((2, 4)) / valid.sum((2, 4))
    with rasterio.open(parent) as p:
        got = p.read().astype(np.float64)
    has = valid.any((2, 4))
    assert has.any()
    assert np.abs(got[has] - mean[has]).max() <= 0.5 + 1e-9
    assert (got[~has] == -128).all()
    # a linear logit of the parent is the mean of its children's logits up to rounding
    w = np.array([0.3, -0.2, 0.5, 0.1])
    lg, lm = np.tensordot(w, got, 1), np.tensordot(w, np.nan_to_num(mean), 1)
    assert np.abs(lg - lm)[has.all(0)].max() <= 0.5 * np.abs(w).sum() + 1e-9


def test_float_and_int8_inputs_mix_and_give_the_same_pca(pair, tmp_path):
    res = runner.invoke(app, ["change", str(pair["a"]), str(pair["b8"]), "--out",
                              str(tmp_path / "c8"), "--pca", "4", "--sample-every", "3",
                              "--no-tiles"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "c8" / "tiles").exists()
    m = json.loads((tmp_path / "c8" / "change.json").read_text())
    assert m["pca"]["explained_variance"] > 0.5


@pytest.mark.slow
def test_fit_report_nested_cv_table(product, tmp_path):
    labels = clicks(tmp_path / "clicks.geojson", n=24)
    model = tmp_path / "model.json"
    res = runner.invoke(app, ["change-fit", str(product), "--labels", str(labels), "--out",
                              str(model), "--report", "--folds", "3"])
    assert res.exit_code == 0, res.output
    rep = json.loads(model.read_text())["report"]
    assert set(rep) == {"PCA-3", "PCA-4", "PCA-4 int8", "full (16-d)"}
    assert rep["full (16-d)"]["f1"]["mean"] > 0.9 and rep["PCA-4"]["folds"] == 3
    assert 0 <= rep["PCA-3"]["recall"]["std"] <= 0.5
    assert "| PCA-3 |" in res.output


def test_fit_and_map(product, tmp_path):
    labels = clicks(tmp_path / "clicks.geojson", n=24)
    model = tmp_path / "model.json"
    res = runner.invoke(app, ["change-fit", str(product), "--labels", str(labels), "--out",
                              str(model)])
    assert res.exit_code == 0, res.output
    m = json.loads(model.read_text())
    assert m["labels"] == {"n": 24, "change": 12, "no_change": 12}
    assert m["C"] > 0 and len(m["weights"]) == 4 and len(m["code_weights"]) == 4
    # code weights score the int8 codes exactly like the real-valued weights
    meta = json.loads((product / "change.json").read_text())
    q = np.array([[3, -7, 100, 0]], float)
    real = q * meta["int8"]["scale"] + np.array(meta["int8"]["offset"])
    assert (real @ m["weights"] + m["intercept"])[0] == pytest.approx(
        (q @ m["code_weights"] + m["code_intercept"])[0])
    prob = tmp_path / "prob.tif"
    res = runner.invoke(app, ["change-map", str(product), str(model), "--out", str(prob)])
    assert res.exit_code == 0, res.output
    assert cog_validate(str(prob), quiet=True)[0]
    with rasterio.open(prob) as src:
        p = src.read(1)
    assert np.isnan(p[:3, :3]).all()
    inside, outside = np.nanmean(p[CHANGED]), np.nanmean(p[45:, :])
    assert inside > 0.6 and outside < 0.4, (inside, outside)
    changed = np.zeros(p.shape, bool)
    changed[CHANGED] = True
    pred = p > 0.5
    f1 = 2 * (pred & changed).sum() / (pred.sum() + changed.sum())
    assert f1 > 0.8


def one_line_error(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert "error:" in line, res.output
    for w in words:
        assert w in line, (w, res.output)


def test_bad_inputs_exit_2_and_write_nothing(pair, product, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 60, 80))
    other_grid = tmp_path / "shift.tif"
    with rasterio.open(pair["a"]) as src:
        tags = src.tags()
    write_emb(other_grid, x)
    with rasterio.open(other_grid, "r+") as ds:
        ds.transform = from_origin(ORIGIN[0] + RES, ORIGIN[1], RES, RES)
    other_model = write_emb(tmp_path / "model2.tif", x, model_sha256="b" * 64)
    other_dim = write_emb(tmp_path / "dim.tif", x[:8])
    pixel = write_emb(tmp_path / "pixel.tif", x, patch_grid=json.dumps({"pixel_per": "pixel"}))
    assert tags["model"] == "tiny"
    out = tmp_path / "out"
    for bad, words in ((other_grid, ["different grid", "same --bbox"]),
                       (other_model, ["one model"]), (other_dim, ["8 embedding bands"]),
                       (pixel, ["different product"])):
        one_line_error(runner.invoke(app, ["change", str(pair["a"]), str(bad), "--out",
                                           str(out)]), *words)
    one_line_error(runner.invoke(app, ["change", str(pair["a"]), str(pair["b"]), "--out",
                                       str(out), "--pca", "20"]), "only 16")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    model = tmp_path / "m.json"
    one_line_error(runner.invoke(app, ["change-fit", str(product), "--labels",
                                       str(clicks(tmp_path / "one.geojson", only=1)), "--out",
                                       str(model)]), "both change")
    one_line_error(runner.invoke(app, ["change-fit", str(product), "--labels",
                                       str(clicks(tmp_path / "far.geojson",
                                                  extra=(-60.0, 10.0))), "--out", str(model)]),
                   "outside the change product")
    one_line_error(runner.invoke(app, ["change-fit", str(product), "--labels",
                                       str(clicks(tmp_path / "nocrs.geojson", crs=None)),
                                       "--out", str(model)]), "no CRS")
    nodata_click = Transformer.from_crs(32633, 4326, always_xy=True).transform(
        ORIGIN[0] + RES, ORIGIN[1] - RES)
    one_line_error(runner.invoke(app, ["change-fit", str(product), "--labels",
                                       str(clicks(tmp_path / "nd.geojson", extra=nodata_click)),
                                       "--out", str(model)]), "without data")
    one_line_error(runner.invoke(app, ["change-fit", str(tmp_path), "--labels",
                                       str(tmp_path / "one.geojson"), "--out", str(model)]),
                   "not a change product")
    assert not model.exists()
    # a model of another product is refused by change-map
    fake = {"kind": "terrastill-change-model", "product": "0" * 16, "weights": [0] * 4,
            "intercept": 0}
    (tmp_path / "fake.json").write_text(json.dumps(fake))
    one_line_error(runner.invoke(app, ["change-map", str(product), str(tmp_path / "fake.json"),
                                       "--out", str(tmp_path / "p.tif")]),
                   "fitted on change product")
    assert not (tmp_path / "p.tif").exists()


def test_api_lists_serves_tiles_and_saves_models(product, tmp_path):
    from app_support import fake_app, local_client

    meta = json.loads((product / "change.json").read_text())
    pid = meta["id"]
    with local_client(fake_app(tmp_path, changes_dir=product.parent)) as client:
        (info,) = client.get("/api/changes").json()
        assert info["id"] == pid and info["bands"] == 4 and info["name"] == product.name
        assert info["max_zoom"] == meta["tiles"]["max_zoom"] and "/" not in info["name"]
        z = meta["tiles"]["min_zoom"]
        (x, y) = next((int(p.parent.name), int(p.stem))
                  for p in (product / "tiles" / str(z)).glob("*/*.tif"))
        r = client.get(f"/api/changes/{pid}/tiles/{z}/{x}/{y}.tif")
        assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
        assert r.content == (product / "tiles" / str(z) / str(x) / f"{y}.tif").read_bytes()
        assert client.get(f"/api/changes/{pid}/tiles/{z}/{x + 5}/{y}.tif").status_code == 204
        assert client.get(f"/api/changes/{'0' * 16}/tiles/{z}/{x}/{y}.tif").status_code == 404
        assert client.get(f"/api/changes/../tiles/{z}/{x}/{y}.tif").status_code in (404, 422)
        body = {"code_weights": [0.5, -0.1, 0.2, 0.0], "code_intercept": -3.0,
                "clicks": [{"lon": 15.0, "lat": 45.1, "change": 1}]}
        assert client.post(f"/api/changes/{pid}/models",
                           json={**body, "code_weights": [1.0]}).status_code == 422
        assert client.post(f"/api/changes/{pid}/models",
                           json={**body, "clicks": [{"lon": 200, "lat": 0, "change": 1}]}
                           ).status_code == 422
        saved = client.post(f"/api/changes/{pid}/models", json=body)
        assert saved.status_code == 201, saved.text
        mid = saved.json()["id"]
        model = client.get(f"/api/changes/{pid}/models/{mid}").json()
    path = tmp_path / "data" / "change-models" / pid / f"{mid}.json"
    assert json.loads(path.read_text()) == model
    # real-valued weights score decoded values like the code weights score codes
    q = np.array([10, -20, 30, 5], float)
    real = q * meta["int8"]["scale"] + np.array(meta["int8"]["offset"])
    assert real @ model["weights"] + model["intercept"] == pytest.approx(
        q @ body["code_weights"] + body["code_intercept"])
    res = runner.invoke(app, ["change-map", str(product), str(path), "--out",
                              str(tmp_path / "p.tif")])
    assert res.exit_code == 0, res.output


def test_api_needs_the_token(product, tmp_path):
    from app_support import fake_app, local_client

    with local_client(fake_app(tmp_path, changes_dir=product, token="s3cret")) as client:
        assert client.get("/api/changes").status_code == 401
        ok = client.get("/api/changes", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()) == 1


@pytest.mark.slow
def test_eval_change_smoke(tmp_path):
    """scripts/eval_change.py --smoke end to end (world → pretrain → embed → change → F1)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "eval_change.py"
    res = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "eval_change.json").read_text())
    t = out["f1_vs_dense_truth"]
    assert {"PCA-3 float", "PCA-8 int8"} <= set(t) and any("reflectance" in k for k in t)
    assert all(0 <= v["mean"] <= 1 for row in t.values() for v in row.values())
    assert out["changed_pixels"] > 0 and "| PCA-3 |" in (tmp_path / "eval_change.md").read_text()
