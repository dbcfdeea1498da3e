"""The synthetic demo world: manifest, catalogue, scenes, QA, truth, observations, CLI."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from pyproj import Transformer
from typer.testing import CliRunner

from terrastill.catalog import LocalCatalog, Search
from terrastill.cli import app
from terrastill.sources import get_profile
from terrastill.sources.qa import decode_fmask
from terrastill.world import spectra
from terrastill.world.build import WorldConfig, build_world, load_manifest, prepare

TINY = dict(tiles_x=2, tiles_y=1, tile_size=64, start=date(2024, 6, 1), end=date(2024, 7, 6),
            revisit=5, flood_date=date(2024, 6, 20), observations=40)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict, WorldConfig]:
    out = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(**TINY, bad_rows=True)
    manifest = build_world(out, cfg)
    return out, manifest, cfg


def _read(path: Path) -> tuple[np.ndarray, rasterio.Affine, int]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform, ds.crs.to_epsg()


def test_manifest_and_paths(tiny):
    out, m, _cfg = tiny
    on_disk = json.loads((out / "world.json").read_text())
    assert on_disk == m
    assert m["version"] == 1 and m["source"] == "hls" and m["seed"] == 0
    assert m["epsg"] == [32632, 32633]
    assert m["resolution"] == 30
    assert m["flood_date"] == "2024-06-20"
    assert set(m["collections"]) == {"HLSS30_2.0", "HLSL30_2.0"}
    assert len(m["tiles"]) == 4
    assert m["tasks"]["landcover"]["classes"] == ["water", "forest", "cropland", "urban", "bare"]
    assert m["tasks"]["flood"]["classes"] == ["land", "water"]
    assert m["tasks"]["flood"]["date"] == "2024-06-20"
    lon0, lat0, lon1, lat1 = m["bbox"]
    assert lon0 < 12.0 < lon1 and 45 < lat0 < lat1 < 46
    paths = [m["catalog"], *m["collections"].values()]
    for t in m["tasks"].values():
        paths += [t["observations"], *t["truth"].values()]
    paths += [b["file"] for b in m["bad_rows"].values()]
    for p in paths:
        assert (out / p).is_file(), p
        assert not Path(p).is_absolute()
    loaded = load_manifest(out)
    assert Path(loaded["catalog"]).is_absolute() and Path(loaded["catalog"]).exists()
    assert all(Path(p).exists() for p in loaded["tasks"]["flood"]["truth"].values())


def test_items_fields_and_local_catalog(tiny):
    out, m, _ = tiny
    fc = json.loads((out / "catalog.json").read_text())
    assert fc["type"] == "FeatureCollection" and fc["features"]
    for f in fc["features"]:
        p = f["properties"]
        for k in ("datetime", "eo:cloud_cover", "proj:code", "proj:epsg", "proj:transform",
                  "proj:shape", "proj:bbox", "mgrs:utm_zone", "mgrs:latitude_band",
                  "mgrs:grid_square", "platform", "instruments", "constellation"):
            assert k in p, k
        assert p["proj:code"] == f"EPSG:{p['proj:epsg']}"
        assert p["proj:epsg"] - 32600 == p["mgrs:utm_zone"]
        keys = set(f["assets"])
        if f["collection"] == "HLSS30_2.0":
            assert keys == {"B02", "B03", "B04", "B8A", "B11", "B12", "Fmask"}
            assert p["constellation"] == "sentinel-2"
        else:
            assert keys == {"B02", "B03", "B04", "B05", "B06", "B07", "Fmask"}
            assert p["constellation"] == "landsat"
        for k, a in f["assets"].items():
            assert a["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
            assert not Path(a["href"]).is_absolute() and (out / a["href"]).exists()
            rb = a["raster:bands"][0]
            if k == "Fmask":
                assert a["roles"] == ["cloud-mask"] and rb["nodata"] == 255
                assert rb["data_type"] == "uint8"
            else:
                assert a["roles"] == ["data"] and rb["nodata"] == -9999
                assert rb["data_type"] == "int16" and rb["scale"] == 0.0001
                assert a["eo:bands"][0]["common_name"]
    for cid, rel in m["collections"].items():
        c = json.loads((out / rel).read_text())
        assert c["type"] == "Collection" and c["id"] == cid and c["extent"]["spatial"]["bbox"]
    cat = LocalCatalog(out / "catalog.json")
    assert cat.collection_ids() == ["HLSL30_2.0", "HLSS30_2.0"]
    from datetime import UTC, datetime

    got = cat.search(Search(("HLSS30_2.0", "HLSL30_2.0"), tuple(m["bbox"]),
                            datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 7, tzinfo=UTC)))
    assert len(got) == len(fc["features"])
    assert Path(got[0].assets["B02"].href).is_absolute()


def test_items_validate_offline_or_skip(tiny):
    import pystac
    import stac_pydantic

    out, m, _ = tiny
    fc = json.loads((out / "catalog.json").read_text())
    for f in fc["features"]:
        stac_pydantic.Item.model_validate(f)
    for rel in m["collections"].values():
        stac_pydantic.Collection.model_validate(json.loads((out / rel).read_text()))
    item = pystac.Item.from_dict(fc["features"][0])
    try:
        item.validate()
    except pystac.errors.STACValidationError:
        raise
    except Exception as exc:  # schemas need the network
        pytest.skip(f"STAC validation unavailable offline: {type(exc).__name__}")


def test_cogs_validate(tiny):
    from rio_cogeo.cogeo import cog_validate

    out, _m, _ = tiny
    files = sorted((out / "scenes").rglob("*.tif"))[:14] + sorted((out / "truth").glob("*.tif"))
    for f in files:
        ok, errors, _ = cog_validate(str(f), quiet=True)
        assert ok, (f, errors)


def test_determinism(tiny, tmp_path):
    out, m, cfg = tiny
    again = tmp_path / "again"
    build_world(again, cfg)
    for rel in ("catalog.json", "world.json", "observations/landcover.csv",
                m["tasks"]["landcover"]["truth"]["32632"]):
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    fc = json.loads((out / "catalog.json").read_text())
    href = fc["features"][-1]["assets"]["B04"]["href"]
    assert (out / href).read_bytes() == (again / href).read_bytes()
    serial = tmp_path / "serial"
    build_world(serial, cfg.model_copy(update={"workers": 1}))
    assert (serial / "catalog.json").read_bytes() == (out / "catalog.json").read_bytes()
    assert (serial / href).read_bytes() == (out / href).read_bytes()
    other = tmp_path / "other"
    build_world(other, cfg.model_copy(update={"seed": 1}))
    assert (other / "catalog.json").read_bytes() != (out / "catalog.json").read_bytes()
    assert ((other / m["tasks"]["landcover"]["truth"]["32632"]).read_bytes()
            != (out / m["tasks"]["landcover"]["truth"]["32632"]).read_bytes())


def test_cloud_cover_and_fmask_match_drawn_clouds(tiny):
    out, _m, cfg = tiny
    world = prepare(cfg)
    fc = json.loads((out / "catalog.json").read_text())
    by_dt = {p.datetime.strftime("%Y-%m-%dT%H:%M:%S"): p for p in world.passes}
    seen_cloud = 0
    for f in fc["features"]:
        qa, _tr, epsg = _read(out / f["assets"]["Fmask"]["href"])
        valid = qa != 255
        dec = decode_fmask(qa)
        cover = 100.0 * (dec["cloud"] & valid).sum() / max(1, valid.sum())
        assert f["properties"]["eo:cloud_cover"] == pytest.approx(cover, abs=0.006)
        p = by_dt[f["properties"]["datetime"][:19]]
        zone = next(z for z in world.zones if z.grid.epsg == epsg)
        tile = next(t for t in zone.grid.tiles if t.id == f["properties"]["terrastill:tile"])
        win = (slice(tile.row_off, tile.row_off + tile.size),
               slice(tile.col_off, tile.col_off + tile.size))
        masks = world.masks(p, zone)
        np.testing.assert_array_equal(dec["cloud"], masks.cloud[win])
        np.testing.assert_array_equal(dec["shadow"], masks.shadow[win])
        np.testing.assert_array_equal(dec["adjacent"], masks.adjacent[win])
        np.testing.assert_array_equal(~valid, masks.nodata[win])
        seen_cloud += int(dec["cloud"].any())
        # clouds are bright, shadows dark
        b02, _, _ = _read(out / f["assets"]["B02"]["href"])
        clear = valid & ~dec["cloud"] & ~dec["shadow"] & ~dec["adjacent"]
        if dec["cloud"].sum() > 20 and clear.sum() > 20:
            assert b02[dec["cloud"]].mean() > 2 * b02[clear].mean()
        nir, _, _ = _read(out / f["assets"]["B8A" if "B8A" in f["assets"] else "B05"]["href"])
        sub = (zone.landcover[win], zone.x[win], zone.y[win])
        veg = world.truth.vegetation(*sub, p.date)
        ref = spectra.surface(sub[0], veg, world.water_on(zone, p.date)[win],
                              zone.texture[win], ("nir_narrow",))[0] * 10000
        ratio = nir / ref
        pure = clear & ~dec["cirrus"]
        if pure.sum() > 20:  # clear pixels: the surface + noise (+ a little haze)
            assert 0.9 < np.median(ratio[pure]) < 1.25
        if dec["shadow"].sum() > 20:
            assert np.median(ratio[dec["shadow"]]) < 0.5  # shadows are dark
        assert (b02 == -9999).sum() == (~valid).sum()
    assert seen_cloud > 0


def _truth_at(out: Path, m: dict, task: str, lon: float, lat: float) -> list[int]:
    vals = []
    for epsg, rel in m["tasks"][task]["truth"].items():
        with rasterio.open(out / rel) as ds:
            x, y = Transformer.from_crs(4326, int(epsg), always_xy=True).transform(lon, lat)
            r, c = ds.index(x, y)
            if 0 <= r < ds.height and 0 <= c < ds.width:
                vals.append(int(ds.read(1, window=((r, r + 1), (c, c + 1)))[0, 0]))
    return vals


def test_observations_agree_with_truth(tiny):
    out, m, cfg = tiny
    world = prepare(cfg)
    lc = pd.read_csv(out / m["tasks"]["landcover"]["observations"])
    assert list(lc.columns) == ["lon", "lat", "date", "label"] and len(lc) == 40
    classes = m["tasks"]["landcover"]["classes"]
    for row in lc.itertuples():
        vals = _truth_at(out, m, "landcover", row.lon, row.lat)
        assert vals and classes.index(row.label) in vals
    fl = pd.read_csv(out / m["tasks"]["flood"]["observations"])
    assert len(fl) == 40
    fd = m["flood_date"]
    assert (fl.date >= fd).sum() > len(fl) / 2 and (fl.date < fd).any()
    frame, truth = world.frame, world.truth
    for row in fl.itertuples():
        x, y = frame.to_km(np.array(row.lon), np.array(row.lat))
        water = bool(truth.flooded(x, y, date.fromisoformat(row.date)))
        assert row.label == ("water" if water else "land")
        if row.date < fd and row.label == "water":
            assert bool(truth.permanent_water(x, y))
    # clustered: some observations within a few hundred metres of another
    xy = np.c_[lc.lon * 78.5, lc.lat * 111.0]
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    assert (d.min(axis=1) < 0.45).sum() >= 4


def test_bad_rows(tiny):
    out, m, _ = tiny
    info = m["bad_rows"]["landcover"]
    text = (out / info["file"]).read_text().splitlines()
    assert len(text) == 1 + 40 + len(info["rows"])
    reasons = {b["reason"] for b in info["rows"]}
    assert {"missing lon", "lat out of range", "unparsable date", "unknown label"} <= reasons
    df = pd.read_csv(out / info["file"], dtype=str, keep_default_na=False)
    for b in info["rows"]:
        assert text[b["line"] - 1] == ",".join(df.iloc[b["row"]])
        r = df.iloc[b["row"]]
        if b["reason"] == "missing lon":
            assert r.lon == ""
        elif b["reason"] == "unknown label":
            assert r.label not in m["tasks"]["landcover"]["classes"]


def test_flood_only_after_flood_date(tiny):
    out, m, cfg = tiny
    world = prepare(cfg)
    for z in world.zones:
        before = world.water_on(z, date(2024, 6, 19))
        after = world.water_on(z, date(2024, 6, 20))
        np.testing.assert_array_equal(before, z.permanent_water)
        assert (after & ~before).any()
        assert not (before & ~after).any()
        # flooded pixels were land before
        assert (z.landcover[after & ~before] != 0).all()
        post, _, _ = _read(out / m["tasks"]["flood"]["truth"][str(z.grid.epsg)])
        np.testing.assert_array_equal(post.astype(bool), after)


def test_overlapping_tiles_agree(tiny):
    out, m, _cfg = tiny
    fc = json.loads((out / "catalog.json").read_text())
    # same zone: two neighbouring tiles of one acquisition share identical overlap pixels
    by_dt: dict[tuple[str, int], list[dict]] = {}
    for f in fc["features"]:
        by_dt.setdefault((f["properties"]["datetime"], f["properties"]["proj:epsg"]), []).append(f)
    pair = next(v for v in by_dt.values() if len(v) == 2)
    (a, ta, _), (b, tb, _) = (_read(out / f["assets"]["B8A" if "B8A" in f["assets"] else "B05"]
                                    ["href"]) for f in pair)
    if ta.c > tb.c:
        a, b, ta, tb = b, a, tb, ta
    shift = round((tb.c - ta.c) / 30)
    np.testing.assert_array_equal(a[:, shift:], b[:, : a.shape[1] - shift])
    # across zones: the truth rasters agree where they overlap
    lc32, t32, _ = _read(out / m["tasks"]["landcover"]["truth"]["32632"])
    lc33, t33, _ = _read(out / m["tasks"]["landcover"]["truth"]["32633"])
    rows, cols = np.mgrid[0 : lc33.shape[0], 0 : lc33.shape[1]]
    x, y = rasterio.transform.xy(t33, rows.ravel(), cols.ravel())
    x32, y32 = Transformer.from_crs(32633, 32632, always_xy=True).transform(x, y)
    r32, c32 = rasterio.transform.rowcol(t32, x32, y32)
    r32, c32 = np.asarray(r32), np.asarray(c32)
    inside = (r32 >= 0) & (r32 < lc32.shape[0]) & (c32 >= 0) & (c32 < lc32.shape[1])
    assert inside.sum() > 500
    agree = lc32[r32[inside], c32[inside]] == lc33.ravel()[inside]
    assert agree.mean() > 0.9


def test_clouds_agree_across_zones(tiny):
    out, _, _ = tiny
    fc = json.loads((out / "catalog.json").read_text())
    by_dt: dict[str, dict[int, list[dict]]] = {}
    for f in fc["features"]:
        p = f["properties"]
        by_dt.setdefault(p["datetime"], {}).setdefault(p["proj:epsg"], []).append(f)
    checked = 0
    for zones in by_dt.values():
        if len(zones) < 2 or not any(f["properties"]["eo:cloud_cover"] > 5
                                     for fs in zones.values() for f in fs):
            continue
        f32 = max(zones[32632], key=lambda f: f["properties"]["proj:bbox"][2])  # east tile
        f33 = min(zones[32633], key=lambda f: f["properties"]["proj:bbox"][0])  # west tile
        qa32, t32, _ = _read(out / f32["assets"]["Fmask"]["href"])
        qa33, t33, _ = _read(out / f33["assets"]["Fmask"]["href"])
        rows, cols = np.mgrid[0 : qa33.shape[0], 0 : qa33.shape[1]]
        x, y = rasterio.transform.xy(t33, rows.ravel(), cols.ravel())
        x32, y32 = Transformer.from_crs(32633, 32632, always_xy=True).transform(x, y)
        r, c = (np.asarray(v) for v in rasterio.transform.rowcol(t32, x32, y32))
        inside = (r >= 0) & (r < qa32.shape[0]) & (c >= 0) & (c < qa32.shape[1])
        a = decode_fmask(qa32[r[inside], c[inside]])["cloud"]
        b = decode_fmask(qa33.ravel()[inside])["cloud"]
        assert (a == b).mean() > 0.95
        checked += 1
    assert checked


def test_cli_yaml_config(tmp_path):
    cfg = tmp_path / "world.yaml"
    cfg.write_text("tiles_x: 1\ntiles_y: 1\ntile_size: 32\nzones: 1\nstart: '2024-06-01'\n"
                   "end: '2024-06-20'\nobservations: 4\nseed: 5\n")
    res = runner.invoke(app, ["world", str(tmp_path / "w"), "--config", str(cfg), "--seed", "6"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "w" / "world.json").read_text())
    assert m["seed"] == 6 and len(m["tiles"]) == 1 and m["start"] == "2024-06-01"


def test_tile_grids_aligned_and_overlapping(tiny):
    _, m, _cfg = tiny
    for t in m["tiles"]:
        assert all(v % 30 == 0 for v in t["bounds"])
    t0, t1 = (t for t in m["tiles"] if t["epsg"] == 32632)
    assert t0["bounds"][2] > t1["bounds"][0]  # neighbours overlap
    w = [t["lonlat_bounds"] for t in m["tiles"]]
    z32 = [b for b, t in zip(w, m["tiles"], strict=True) if t["epsg"] == 32632]
    z33 = [b for b, t in zip(w, m["tiles"], strict=True) if t["epsg"] == 32633]
    assert max(b[2] for b in z32) > 12.0 > min(b[0] for b in z33)


def test_s2_baseline_offset(tmp_path):
    cfg = WorldConfig(source="s2", tiles_x=1, tiles_y=1, tile_size=64, zones=1,
                      start=date(2024, 5, 1), end=date(2024, 7, 30), revisit=5, observations=5)
    m = build_world(tmp_path, cfg)
    assert m["resolution"] == 10 and m["epsg"] == [32632]
    prof = get_profile("s2")
    fc = json.loads((tmp_path / "catalog.json").read_text())
    baselines = [f["properties"]["s2:processing_baseline"] for f in fc["features"]]
    assert "03.00" in baselines and "05.00" in baselines
    world = prepare(cfg)
    medians = {}
    for f in fc["features"]:
        assert set(f["assets"]) == {"B02", "B03", "B04", "B08", "B8A", "B11", "B12", "SCL"}
        assert f["assets"]["B11"]["proj:shape"] == [32, 32]
        assert f["assets"]["SCL"]["raster:bands"][0]["spatial_resolution"] == 20
        b08, _, _ = _read(tmp_path / f["assets"]["B08"]["href"])
        scl, _, _ = _read(tmp_path / f["assets"]["SCL"]["href"])
        assert b08.dtype == np.uint16
        cover = 100.0 * np.isin(scl, (8, 9)).sum() / max(1, (scl != 0).sum())
        assert f["properties"]["eo:cloud_cover"] == pytest.approx(cover, abs=0.006)
        water = world.zones[0].permanent_water
        bl = f["properties"]["s2:processing_baseline"]
        valid = b08 != 0
        if bl == "05.00":
            assert b08[valid].min() > 1000  # dark water still carries the +1000 offset
        refl = prof.to_reflectance(b08, f["properties"])
        clear = np.repeat(np.repeat(scl == 4, 2, 0), 2, 1) & valid & ~water
        if clear.sum() > 100:
            medians.setdefault(bl, []).append(float(np.nanmedian(refl[clear])))
    # after the profile's offset both baselines give comparable vegetation reflectance
    if len(medians) == 2:
        assert abs(np.mean(medians["03.00"]) - np.mean(medians["05.00"])) < 0.1


def test_s1_world(tmp_path):
    cfg = WorldConfig(source="s1", tiles_x=1, tiles_y=1, tile_size=32, zones=1,
                      start=date(2024, 5, 1), end=date(2024, 6, 1), revisit=12, observations=5)
    m = build_world(tmp_path, cfg)
    assert list(m["collections"]) == ["sentinel-1-rtc"]
    f = json.loads((tmp_path / "catalog.json").read_text())["features"][0]
    assert set(f["assets"]) == {"vv", "vh"}
    vv, _, _ = _read(tmp_path / f["assets"]["vv"]["href"])
    assert vv.dtype == np.float32 and (vv[vv != -32768] > 0).all()


runner = CliRunner()


def test_cli_builds(tmp_path):
    out = tmp_path / "w"
    res = runner.invoke(app, ["world", str(out), "--tiles-x", "1", "--tiles-y", "1",
                              "--tile-size", "32", "--start", "2024-06-01", "--end",
                              "2024-06-20", "--observations", "5", "--zones", "1", "--seed", "3"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "world.json").read_text())
    assert m["seed"] == 3 and m["epsg"] == [32632]


@pytest.mark.parametrize("args", [
    ["--zones", "3"],
    ["--source", "modis"],
    ["--start", "2024-13-01"],
    ["--start", "2024-10-01"],
    ["--flood-date", "2023-01-01"],
    ["--tile-size", "8"],
])
def test_cli_bad_options(tmp_path, args):
    res = runner.invoke(app, ["world", str(tmp_path / "w"), *args])
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "w" / "world.json").exists()


def test_cli_bad_option_is_one_line(tmp_path):
    res = runner.invoke(app, ["world", str(tmp_path / "w"), "--start", "2024-10-01"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "start" in lines[0]
