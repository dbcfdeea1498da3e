"""``terrastill embed``: AOI rasters (float, int8, STAC), chip and image tables, bad input."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from terrastill.cli import app

runner = CliRunner()
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def after_flood(world: dict) -> str:
    d = dt.date.fromisoformat(world["tasks"]["flood"]["date"]) + dt.timedelta(days=6)
    return d.isoformat()


def _embed(*args: str):
    return runner.invoke(app, ["embed", *map(str, args)])


def _aoi(model: Path, world: dict, out: Path, *extra: str):
    return _embed(model, "--bbox", *map(str, world["bbox"]), "--date", after_flood(world),
                  "--catalog", world["catalog"], "--out", out, *extra)


@pytest.fixture(scope="module")
def rasters(small_world, flood_model, tmp_path_factory):
    out = {}
    for name, extra in (("float", ()), ("int8", ("--quantize", "int8"))):
        d = tmp_path_factory.mktemp(f"emb-{name}")
        res = _aoi(flood_model, small_world, d, *extra)
        assert res.exit_code == 0, res.output
        out[name] = d
    return out


def test_aoi_raster_is_a_cog_per_zone_one_pixel_per_patch(rasters, flood_model):
    from terrastill.models.modelfile import read_card

    spec = read_card(flood_model).input_spec
    cogs = sorted(rasters["float"].glob("embeddings_*.tif"))
    assert len(cogs) == 2  # the small world straddles two UTM zones
    for cog in cogs:
        assert cog_validate(str(cog), quiet=True)[0]
        with rasterio.open(cog) as src:
            assert src.count == 96 and src.dtypes[0] == "float32" and np.isnan(src.nodata)
            assert src.descriptions[:2] == ("emb:000", "emb:001")
            assert src.descriptions[-1] == "emb:095"
            assert src.transform.a == pytest.approx(spec["resolution"] * 4)  # patch 4 px
            assert src.crs.to_epsg() == int(cog.stem.split("_")[1])
            tags = src.tags()
            vals = src.read()
        assert tags["model"] and len(tags["model_sha256"]) == 64
        assert json.loads(tags["patch_grid"])["patch_size_px"] == 4
        assert "mean" in json.loads(tags["normalisation"])
        assert 0.2 < np.isfinite(vals).mean() < 1


def test_aoi_values_equal_the_encoder_run_by_hand(rasters, small_world, flood_model):
    import torch

    from terrastill.data.chips import read_chips
    from terrastill.data.grid import GridSpec
    from terrastill.data.normalize import normalize_chip
    from terrastill.embeddings.encoders import model_file_encoder
    from terrastill.inference.predict import read_options
    from terrastill.models.modelfile import read_card

    spec = read_card(flood_model).input_spec
    enc = model_file_encoder(flood_model, "cpu", "fp32")
    from terrastill.catalog import Search, open_catalog

    far = dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    cat = open_catalog(small_world["catalog"])
    items = [it.to_dict(transform_hrefs=False) for it in cat.search(
        Search(tuple(cat.collection_ids()), tuple(small_world["bbox"]), *far))]
    date = dt.date.fromisoformat(after_flood(small_world))
    cog = sorted(rasters["float"].glob("embeddings_*.tif"))[0]
    with rasterio.open(cog) as src:
        vals, t, epsg = src.read(), src.transform, src.crs.to_epsg()
    cells, res = 16 // 4, spec["resolution"]
    checked = 0
    for r in range(vals.shape[1] // cells):
        for c in range(vals.shape[2] // cells):
            want = vals[:, r * cells:(r + 1) * cells, c * cells:(c + 1) * cells]
            if not np.isfinite(want).all():
                continue
            g = GridSpec(epsg, Affine(res, 0, t.c + c * 16 * res, 0, -res, t.f - r * 16 * res),
                         16, 16)
            chip = read_chips([g], date, items, read_options(spec, None, None))[0]
            x, _valid = normalize_chip(chip.array[None], spec["mean"], spec["std"])
            got = enc.patch_maps_from_tensor(torch.as_tensor(x))[0]
            np.testing.assert_allclose(got, want, atol=1e-4)
            checked += 1
            if checked == 2:
                return
    pytest.fail("no fully valid window to compare")


def test_pixel_product_repeats_each_patch_on_the_input_grid(rasters, small_world, flood_model,
                                                           tmp_path):
    b = small_world["bbox"]
    w, h = (b[2] - b[0]) * 0.15, (b[3] - b[1]) * 0.3
    res = _embed(flood_model, "--bbox", b[0] + w, b[1] + h, b[0] + 2 * w, b[3] - h, "--date",
                 after_flood(small_world), "--catalog", small_world["catalog"], "--out",
                 tmp_path, "--pixel")
    assert res.exit_code == 0, res.output
    (cog,) = tmp_path.glob("embeddings_*.tif")
    with rasterio.open(cog) as px, rasterio.open(rasters["float"] / cog.name) as ref:
        assert px.transform.a == pytest.approx(ref.transform.a / 4)
        assert px.width % 16 == 0 and px.height % 16 == 0  # whole windows
        # the same lattice: the pixel product's origin is a patch corner of the reference
        c0 = (px.transform.c - ref.transform.c) / ref.transform.a
        r0 = (ref.transform.f - px.transform.f) / ref.transform.a
        assert c0 == pytest.approx(round(c0)) and r0 == pytest.approx(round(r0))
        a = px.read(1)
        want = ref.read(1)[round(r0):round(r0) + px.height // 4,
                           round(c0):round(c0) + px.width // 4]
    np.testing.assert_allclose(a[::4, ::4], want, atol=1e-5)
    np.testing.assert_array_equal(a, np.repeat(np.repeat(a[::4, ::4], 4, 0), 4, 1))


def test_int8_product_is_within_one_step_of_float(rasters):
    for f32 in sorted(rasters["float"].glob("embeddings_*.tif")):
        with rasterio.open(f32) as a, rasterio.open(rasters["int8"] / f32.name) as b:
            ref = a.read()
            assert b.dtypes[0] == "int8" and b.nodata == -128
            scales, offsets = np.array(b.scales), np.array(b.offsets)
            assert b.tags()["quantization"].startswith("int8")
            q = b.read()
        real = q * scales[:, None, None] + offsets[:, None, None]
        ok = np.isfinite(ref)
        assert (q[~ok] == -128).all() and (q[ok] != -128).all()
        assert (np.abs(real - ref)[ok] <= scales[:, None, None].repeat(ref.shape[1], 1)
                .repeat(ref.shape[2], 2)[ok] * 0.5001).all()
        assert len(set(scales.round(9))) > 1  # per band


def test_stac_item_describes_the_cog(rasters):
    import pystac
    from pystac.extensions.projection import ProjectionExtension

    for cog in sorted(rasters["int8"].glob("embeddings_*.tif")):
        item = pystac.Item.from_file(str(cog.with_suffix(".json")))
        assert ProjectionExtension.has_extension(item)
        proj = ProjectionExtension.ext(item)
        with rasterio.open(cog) as src:
            assert proj.epsg == src.crs.to_epsg()
            assert proj.shape == [src.height, src.width]
            assert proj.transform == list(src.transform)[:6]
        asset = item.assets["data"]
        assert Path(asset.get_absolute_href()).resolve() == cog.resolve()
        assert asset.media_type == pystac.MediaType.COG
        assert item.properties["terrastill:quantization"].startswith("int8")
        if importlib.util.find_spec("jsonschema"):  # core schema ships with pystac
            item.validate()


def test_chip_table(flood_dataset, flood_model, tmp_path):
    import geopandas as gpd
    import pandas as pd

    from terrastill.embeddings.encoders import file_sha256
    from terrastill.embeddings.table import read_table

    res = _embed(flood_model, "--chips", flood_dataset, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    index = pd.read_parquet(flood_dataset / "index.parquet")
    gdf = gpd.read_parquet(tmp_path / "embeddings.parquet")
    assert gdf.crs.to_string() == "OGC:CRS84"
    assert len(gdf) == len(index) and list(gdf["id"]) == list(index["id"])
    assert {"id", "geometry", "date", "label", "split", "embedding"} <= set(gdf.columns)
    assert list(gdf["split"]) == list(index["split"])
    assert set(gdf["label"]) <= {"land", "water"} and gdf["label"].notna().all()
    t = read_table(tmp_path)
    assert t.vectors.shape == (len(index), 96) and np.isfinite(t.vectors).all()
    assert t.meta["model"]["sha256"] == file_sha256(flood_model)
    assert t.meta["pooling"] == "mean" and t.meta["dim"] == 96
    assert t.meta["bands"] == json.loads((flood_dataset / "dataset.json").read_text())["bands"]
    res = _embed(flood_model, "--chips", flood_dataset, "--out", tmp_path / "cls",
                 "--pooling", "cls")
    assert res.exit_code == 0, res.output
    cls = read_table(tmp_path / "cls")
    assert cls.meta["pooling"] == "cls" and cls.vectors.shape == t.vectors.shape
    assert not np.allclose(cls.vectors, t.vectors)


@pytest.mark.parametrize(("encoder", "dim"), [
    ("spectral", 13 * 5), pytest.param("random:tiny", 96, marks=pytest.mark.slow)])
def test_eurosat_images_table(encoder, dim, real_data, tmp_path):
    from terrastill.embeddings.table import read_table

    res = _embed("--encoder", encoder, "--seed", 7, "--images", real_data / "eurosat",
                 "--image-bands", "eurosat", "--scale", "0.0001", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    t = read_table(tmp_path)
    assert t.vectors.shape == (216, dim) and np.isfinite(t.vectors).all()
    frame = t.frame
    assert frame["label"].nunique() == 10
    assert all(i.split("/")[0] == lab for i, lab in zip(frame["id"], frame["label"],
                                                        strict=True))
    shares = frame.groupby("label")["split"].value_counts(normalize=True).unstack()
    assert ((shares["train"] > 0.45) & (shares["test"] > 0.1) & (shares["val"] > 0.1)).all()
    assert t.meta["model"]["name"] == encoder and len(t.meta["bands"]) == 13
    if encoder.startswith("random"):
        assert t.meta["model"]["seed"] == 7 and len(t.meta["normalisation"]["mean"]) == 13
        assert np.std(t.vectors, axis=0).mean() > 0


def _images(folder: Path, bands: list[str], size: int = 16) -> Path:
    from rasterio.transform import from_origin

    for k in range(2):
        d = folder / f"class{k}"
        d.mkdir(parents=True)
        prof = {"driver": "GTiff", "width": size, "height": size, "count": len(bands),
                "dtype": "uint16", "crs": "EPSG:32633",
                "transform": from_origin(500000, 5000000 + k * 1000, 10, 10)}
        with rasterio.open(d / "a.tif", "w", **prof) as dst:
            dst.write(np.full((len(bands), size, size), 1000 + k, np.uint16))
            dst.descriptions = tuple(bands)
    return folder


HLS = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
BAD = {
    "model bands not in the images": (True, ["red", "green", "blue"], 16, (),
                                      "that the data lacks"),
    "T mismatch": (True, HLS, 16, (), "expects T=2"),
    "size not a multiple of the patch": (False, HLS, 18, ("--encoder", "random:tiny",
                                                          "--seed", "0"), "not a multiple"),
    "unknown encoder": (False, HLS, 16, ("--encoder", "foo"), "unknown encoder"),
    "random without seed": (False, HLS, 16, ("--encoder", "random:tiny"), "needs --seed"),
    "unknown registry model": (False, HLS, 16, ("--encoder", "random:nope", "--seed", "1"),
                               "unknown model"),
    "model and encoder": (True, HLS, 16, ("--encoder", "spectral"), "not both"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_image_input_exits_2_and_writes_nothing(case, flood_model, tmp_path):
    with_model, bands, size, extra, expected = BAD[case]
    imgs = _images(tmp_path / "imgs", bands, size)
    out = tmp_path / "out"
    args = ([flood_model] if with_model else []) + ["--images", imgs, "--out", out, *extra]
    res = _embed(*args)
    assert res.exit_code == 2, res.output
    assert expected in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()


def test_options_from_config_yaml(tmp_path):
    from terrastill.embeddings.table import read_table

    imgs = _images(tmp_path / "imgs", HLS)
    cfg = tmp_path / "embed.yaml"
    cfg.write_text(f"encoder: spectral\nimages: {imgs}\nseed: 3\n")
    res = _embed("--config", cfg, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    t = read_table(tmp_path / "out")
    assert t.vectors.shape == (2, 30) and t.meta["source"]["split"]["seed"] == 3
    # constant images: mean = median = the value, std 0
    assert t.vectors[0, 0] == t.vectors[0, 3] == 1000 and t.vectors[0, 1] == 0


@pytest.mark.parametrize(("extra", "expected"), [
    ((), "--date is required"),
    (("--date", "2024-06-26", "--quantize", "int4"), "--quantize"),
])
def test_bad_aoi_input_exits_2_and_writes_nothing(extra, expected, flood_model, small_world,
                                                  tmp_path):
    out = tmp_path / "out"
    res = _embed(flood_model, "--bbox", *map(str, small_world["bbox"]), "--catalog",
                 small_world["catalog"], "--out", out, *extra)
    assert res.exit_code == 2, res.output
    assert expected in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()


@pytest.mark.slow
def test_bench_embed_smoke(small_world, flood_model):
    spec = importlib.util.spec_from_file_location("bench_embed", SCRIPTS / "bench_embed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(Path(small_world["root"]), flood_model, seconds=0.3, memory=True)
    assert res["windows"] > 0 and res["patches"] > 0
    assert res["e2e_patches_per_s"] > 0 and res["model_only_patches_per_s"] > 0
    assert res["e2e_over_model_only"] > 0
    small, large = res["memory"]
    assert large["windows"] > 2 * small["windows"] and small["peak_rss_mb"] > 0
