"""``terrastill zonal`` / ``probe``: exact statistics, UTM zones, rejections, probes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import Point, Polygon, box
from typer.testing import CliRunner

from terrastill.cli import app

runner = CliRunner()


def write_emb(path: Path, x: np.ndarray, epsg: int, origin: tuple[float, float],
              res: float = 100.0, int8: bool = False) -> Path:
    d, h, w = x.shape
    prof = dict(driver="GTiff", width=w, height=h, count=d, crs=f"EPSG:{epsg}",
                transform=from_origin(*origin, res, res))
    if int8:
        scale, offset = np.full(d, 0.05), np.full(d, 1.0)
        q = np.rint((x - offset[:, None, None]) / scale[:, None, None])
        with rasterio.open(path, "w", dtype="int8", nodata=-128, **prof) as dst:
            dst.write(np.where(np.isnan(x), -128, np.clip(q, -127, 127)).astype(np.int8))
            dst.scales, dst.offsets = tuple(scale), tuple(offset)
            dst.descriptions = [f"emb:{i:03d}" for i in range(d)]
            dst.update_tags(model_sha256="a" * 64)
        return path
    with rasterio.open(path, "w", dtype="float32", nodata=float("nan"), **prof) as dst:
        dst.write(x.astype(np.float32))
        dst.descriptions = [f"emb:{i:03d}" for i in range(d)]
        dst.update_tags(model_sha256="a" * 64)
    return path


def one_line_error(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert "error:" in line, res.output
    for w in words:
        assert w in line, (w, res.output)


@pytest.mark.parametrize("int8", [False, True])
def test_pixel_aligned_zones_match_numpy_and_rejections(tmp_path, int8):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 4, (3, 20, 30))
    x[:, 15:, 25:] = np.nan
    ox, oy = 600000.0, 5000000.0
    emb = write_emb(tmp_path / "emb.tif", x, 32633, (ox, oy), int8=int8)
    if int8:  # compare with what the raster really holds
        with rasterio.open(emb) as src:
            q = src.read().astype(float)
            x = np.where(q == -128, np.nan, q * 0.05 + 1.0)
    to_ll = Transformer.from_crs(32633, 4326, always_xy=True)

    def cell_box(r0, r1, c0, c1):  # pixel-aligned box (UTM) → lon/lat polygon, densified
        b = box(ox + c0 * 100, oy - r1 * 100, ox + c1 * 100, oy - r0 * 100).segmentize(10)
        return Polygon([to_ll.transform(*p) for p in b.exterior.coords])

    geoms = [cell_box(2, 8, 3, 12), cell_box(10, 20, 10, 30), Polygon(),
             Polygon([(15, 45), (15.01, 45.01), (15.01, 45), (15, 45.01), (15, 45)]),
             cell_box(16, 20, 26, 30), cell_box(0, 20, 0, 30), Point(15, 45).buffer(0.01)]
    zones = gpd.GeoDataFrame({"name": list("abcdefg"), "pop": np.arange(7)}, geometry=geoms,
                             crs=4326)
    zones.to_file(tmp_path / "zones.gpkg")
    out = tmp_path / "stats.parquet"
    res = runner.invoke(app, ["zonal", str(emb), str(tmp_path / "zones.gpkg"), "--out", str(out),
                              "--id-col", "name", "--max-area", "3"])
    assert res.exit_code == 0, res.output
    t = gpd.read_parquet(out)
    assert list(t["zone_id"]) == ["a", "b"] and "pop" in t.columns
    meta = json.loads(__import__("pyarrow.parquet", fromlist=["x"]).read_schema(out)
                      .metadata[b"terrastill"])
    assert meta["dim"] == 3 and meta["kept"] == 2
    for row, (r0, r1, c0, c1) in zip(t.itertuples(), [(2, 8, 3, 12), (10, 20, 10, 30)],
                                     strict=True):
        v = x[:, r0:r1, c0:c1].reshape(3, -1)
        v = v[:, np.isfinite(v).all(0)]
        got_m = [getattr(row, f"emb_mean_{j:03d}") for j in range(3)]
        got_s = [getattr(row, f"emb_std_{j:03d}") for j in range(3)]
        np.testing.assert_allclose(got_m, v.mean(1), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(got_s, v.std(1), rtol=5e-3, atol=5e-3)
        assert row.pixel_count == pytest.approx(v.shape[1], rel=5e-3)
    with open(out.with_name("stats.rejected.csv")) as f:
        rej = {r["zone_id"]: r["reason"] for r in csv.DictReader(f)}
    assert rej["c"] == "empty geometry" and rej["d"].startswith("invalid geometry")
    assert rej["e"] == "no valid embedding pixels" and rej["f"].startswith("oversized")
    assert rej["g"] == "outside the embedding raster(s)"


def test_zone_across_utm_zones_pools_each_zones_own_raster(tmp_path):
    lat = 45.0
    west = Transformer.from_crs(4326, 32632, always_xy=True)
    east = Transformer.from_crs(4326, 32633, always_xy=True)
    to_w = Transformer.from_crs(32632, 4326, always_xy=True)
    to_e = Transformer.from_crs(32633, 4326, always_xy=True)

    def raster(tr, back, epsg, lon0, lon1, inside, outside, name):
        x0, y1 = tr.transform(lon0, lat + 0.03)
        x1, _ = tr.transform(lon1, lat + 0.03)
        x0, y1 = np.floor(x0 / 100) * 100, np.ceil(y1 / 100) * 100
        w, h = int((x1 - x0) / 100) + 2, 45
        cx, cy = np.meshgrid(x0 + (np.arange(w) + 0.5) * 100, y1 - (np.arange(h) + 0.5) * 100)
        lons = back.transform(cx, cy)[0]  # UTM columns are not meridians: test every pixel
        mine = (lons < 12.0) if epsg == 32632 else (lons >= 12.0)
        band = np.where(mine, inside, outside)[None]
        return write_emb(tmp_path / "emb" / name, np.concatenate([band, band * 0 + 7.0]),
                         epsg, (x0, y1))

    (tmp_path / "emb").mkdir()
    # each raster reaches past 12°E (as embed's snapped grids do) holding a wrong value there
    raster(west, to_w, 32632, 11.96, 12.02, 1.0, 5.0, "embeddings_32632.tif")
    raster(east, to_e, 32633, 11.98, 12.04, 3.0, -1.0, "embeddings_32633.tif")
    zones = gpd.GeoDataFrame({"id": [1, 2]}, geometry=[box(11.97, 45.0, 12.03, 45.02),
                                                       box(11.97, 45.0, 11.99, 45.02)],
                             crs=4326)
    zones.to_file(tmp_path / "z.geojson")
    out = tmp_path / "s.parquet"
    res = runner.invoke(app, ["zonal", str(tmp_path / "emb"), str(tmp_path / "z.geojson"),
                              "--out", str(out), "--id-col", "id", "--pca-rgb",
                              str(tmp_path / "rgb.tif")])
    assert res.exit_code == 0, res.output
    t = gpd.read_parquet(out).set_index("zone_id")
    assert t.loc[1, "emb_mean_000"] == pytest.approx(2.0, abs=0.05)  # half 1.0, half 3.0
    assert t.loc[1, "emb_std_000"] == pytest.approx(1.0, abs=0.05)
    assert t.loc[1, "emb_mean_001"] == pytest.approx(7.0) and t.loc[1, "emb_std_001"] < 1e-3
    # every part counted once: 100 m pixels, so 100 pixels per km²
    assert t.loc[1, "pixel_count"] == pytest.approx(100 * t.loc[1, "area_km2"], rel=0.01)
    assert t.loc[2, "emb_mean_000"] == pytest.approx(1.0)
    assert t.loc[1, "area_km2"] == pytest.approx(2 * t.loc[2, "area_km2"] * 1.5, rel=0.01)
    for epsg in (32632, 32633):
        rgb = tmp_path / f"rgb_{epsg}.tif"
        assert cog_validate(str(rgb), quiet=True)[0]
        with rasterio.open(rgb) as src:
            assert src.count == 3 and src.dtypes[0] == "uint8" and src.read().max() > 0


def test_zonal_bad_input(tmp_path):
    emb = write_emb(tmp_path / "emb.tif", np.ones((2, 10, 10)), 32633, (500000, 5000000))
    gpd.GeoDataFrame({"a": [1]}, geometry=[box(500000, 4999500, 500500, 5000000)]).to_file(
        tmp_path / "nocrs.gpkg")
    out = tmp_path / "s.parquet"
    one_line_error(runner.invoke(app, ["zonal", str(emb), str(tmp_path / "nocrs.gpkg"), "--out",
                                       str(out)]), "no CRS")
    gpd.GeoDataFrame({"a": [1, 1]}, geometry=[box(15, 45, 15.01, 45.01)] * 2, crs=4326
                     ).to_file(tmp_path / "dup.geojson")
    one_line_error(runner.invoke(app, ["zonal", str(emb), str(tmp_path / "dup.geojson"),
                                       "--out", str(out), "--id-col", "a"]), "not unique")
    one_line_error(runner.invoke(app, ["zonal", str(emb), str(tmp_path / "dup.geojson"),
                                       "--out", str(out)]), "no zone could be measured")
    one_line_error(runner.invoke(app, ["zonal", str(emb), str(tmp_path / "dup.geojson"),
                                       "--out", str(out), "--stats", "median"]), "--stats")
    assert not out.exists()


def stats_table(path: Path, n: int = 400, seed: int = 0) -> Path:
    """Zones on a grid whose features carry a smooth spatial field and a local signal."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(n))
    ij = np.array([(i, j) for i in range(side) for j in range(side)])
    lon, lat = 10 + ij[:, 0] * 0.01, 45 + ij[:, 1] * 0.01
    signal = rng.standard_normal(len(ij))
    field = np.sin(ij[:, 0] / 4.0) + np.cos(ij[:, 1] / 5.0)
    feats = {f"emb_mean_{k:03d}": signal * (k == 0) + field * (k == 1)
             + 0.3 * rng.standard_normal(len(ij)) for k in range(6)}
    feats.update({f"emb_std_{k:03d}": np.abs(rng.standard_normal(len(ij))) for k in range(6)})
    gdf = gpd.GeoDataFrame({"zone_id": np.arange(len(ij)), "signal": signal,
                            "urban": signal > 0.5, "field": field + 0.1 * signal, **feats},
                           geometry=[box(a, b, a + 0.009, b + 0.009)
                                     for a, b in zip(lon, lat, strict=True)], crs=4326)
    gdf.to_parquet(path)
    return path


def test_probe_regression_classification_and_cv(tmp_path):
    from terrastill.embeddings.probe import probe

    path = stats_table(tmp_path / "s.parquet")
    r = probe(path, "signal")
    assert r["kind"] == "regression" and r["primary"] == "spatial" and r["spatial"]["folds"] == 5
    assert r["spatial"]["mean"] > 0.7 and r["random"]["mean"] > 0.7
    assert r["in_sample"] >= r["random"]["mean"] - 0.05
    c = probe(path, "urban")
    assert c["kind"] == "classification" and c["majority"] < 0.8
    assert c["spatial"]["mean"] > c["majority"] + 0.1
    res = runner.invoke(app, ["probe", str(path), "--target", "signal", "--cv", "random",
                              "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    assert "random 5-fold R²" in " ".join(res.output.split())
    assert json.loads((tmp_path / "p.json").read_text())["primary"] == "random"
    one_line_error(runner.invoke(app, ["probe", str(path), "--target", "nope"]), "no column")
    t = gpd.read_parquet(path).assign(const=1.5)
    t.to_parquet(tmp_path / "c.parquet")
    one_line_error(runner.invoke(app, ["probe", str(tmp_path / "c.parquet"), "--target",
                                       "const"]), "constant")
    one_line_error(runner.invoke(app, ["probe", str(path), "--target", "signal", "--kind",
                                       "ordinal"]), "--kind")


def test_spatial_blocks_keep_neighbours_together(tmp_path):
    from terrastill.embeddings.probe import spatial_blocks

    t = gpd.read_parquet(stats_table(tmp_path / "s.parquet"))
    g = spatial_blocks(t)
    assert 20 <= len(np.unique(g)) <= 49
    # two zones 0.01° apart share a block far more often than not
    same = (g[:-1] == g[1:]).mean()
    assert same > 0.6


def test_world_zones_layer_from_truth(small_world, tmp_path):
    from rasterio.mask import mask

    from conftest import small_world_config
    from terrastill.world.build import build_world, load_manifest
    from terrastill.world.zones import area_km2

    z = gpd.read_parquet(small_world["zones"])
    assert len(z) >= 8 and z["zone_id"].is_unique and z.crs.to_epsg() == 4326
    shares = z[["water_share", "urban_share", "crop_share", "forest_share", "bare_share"]]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-5)
    assert (z["urban"] == (z["urban_share"] >= 0.5)).all()
    bbox = box(*small_world["bbox"])
    assert z.geometry.union_all().symmetric_difference(bbox).area < 1e-9
    assert z["area_km2"].sum() == pytest.approx(area_km2(bbox), rel=1e-5)
    # a block inside one UTM zone: shares agree with counting truth pixel centres
    for row in z.itertuples():
        epsg = "32632" if row.geometry.bounds[2] < 12.0 else (
            "32633" if row.geometry.bounds[0] >= 12.0 else None)
        if epsg and row.area_km2 > 0.4:
            with rasterio.open(small_world["tasks"]["landcover"]["truth"][epsg]) as src:
                geom = gpd.GeoSeries([row.geometry], crs=4326).to_crs(int(epsg)).iloc[0]
                lc, _ = mask(src, [geom], crop=True, filled=False)
            lc = lc.compressed()
            assert row.water_share == pytest.approx((lc == 0).mean(), abs=0.05)
            assert row.crop_share == pytest.approx((lc == 2).mean(), abs=0.05)
            break
    else:
        pytest.fail("no block inside one zone")
    again = tmp_path / "w"
    build_world(again, small_world_config(bad_rows=True))
    m = load_manifest(again)
    assert Path(m["zones"]).read_bytes() == Path(small_world["zones"]).read_bytes()


@pytest.mark.slow
def test_probe_zones_smoke(tmp_path):
    """scripts/probe_zones.py --smoke end to end (world → encoder → embed → zonal → probes)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "probe_zones.py"
    res = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "probe_zones.json").read_text())
    assert out["kept"] >= 10 and set(out["probes"]) >= {"water_share", "log_area_km2"}
    row = out["probes"]["crop_share"]
    assert row["metric"] == "R²" and {"spatial", "random"} <= set(row)
    assert "| water_share |" in (tmp_path / "probe_zones.md").read_text()
    assert (tmp_path / "zones_pca_rgb_32632.tif").exists()
