"""The chip creator against the synthetic world: pixels, choices, mosaics, resume, determinism."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from pyproj import Transformer

from terrastill.data.build import ChipJob, make_chips
from terrastill.data.chips import ReadOptions
from terrastill.data.observations import ObservationOptions
from terrastill.data.temporal import TemporalOptions

FLOOD = ["land", "water"]


def job(**kw) -> ChipJob:
    t = TemporalOptions(num_steps=kw.pop("num_steps", 2), temporal_step=kw.pop("step", 9),
                        temporal_tolerance=kw.pop("tol", 4), max_cloud=kw.pop("max_cloud", 60))
    return ChipJob(read=ReadOptions(source="hls", temporal=t), chip_size=kw.pop("size", 16),
                   min_valid=kw.pop("min_valid", 0.3), split_block=kw.pop("block", 1000), **kw)


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file in a dataset folder (relative path → hash)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def flood_chips(small_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chips") / "flood"
    make_chips(small_world["tasks"]["flood"]["observations"], out, small_world["catalog"], job(),
               ObservationOptions(classes=FLOOD), command="test")
    return out


def test_dataset_folder_follows_the_contract(flood_chips):
    ds = json.loads((flood_chips / "dataset.json").read_text())
    index = gpd.read_parquet(flood_chips / "index.parquet")
    assert ds["counts"]["chips"] == len(index) > 10
    assert ds["bands"] == ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
    assert ds["num_steps"] == 2 and ds["chip_size"] == 16 and ds["class_names"] == FLOOD
    assert len(ds["stats"]["mean"]) == 6 and all(s > 0 for s in ds["stats"]["std"])
    assert set(index["split"]) <= {"train", "val", "test"}
    assert index.crs.to_epsg() == 4326
    for cid in index["id"]:
        with rasterio.open(flood_chips / "chips" / f"{cid}.tif") as src:
            assert src.count == 12 and src.dtypes[0] == "float32" and np.isnan(src.nodata)
            assert src.descriptions[:2] == ("t0:blue", "t0:green")
            assert src.descriptions[6] == "t1:blue"
            assert src.tags()["t1_date"] <= src.tags()["observation_date"]
            assert src.crs.to_epsg() in (32632, 32633)
        with rasterio.open(flood_chips / "labels" / f"{cid}.tif") as lab:
            arr = lab.read(1)
            assert lab.dtypes[0] == "int16" and lab.nodata == -1
            assert set(np.unique(arr)) <= {-1, 0, 1} and (arr >= 0).sum() >= 1
    rejected = pd.read_csv(flood_chips / "rejected.csv")
    # row, chip and reason, then the input's own columns with their original values
    assert list(rejected.columns) == ["source_row", "chip_id", "reason", "lon", "lat", "date",
                                      "label"]
    assert rejected["reason"].notna().all()


BANDS = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]


@functools.cache
def _raster(href: str) -> tuple[np.ndarray, object, int]:
    with rasterio.open(href) as src:
        return src.read(1), src.transform, src.crs.to_epsg()


@functools.cache
def _transformer(src: int, dst: int) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def _pixel(href: str, x: float, y: float, epsg: int) -> int | None:
    """The raw value of ``href`` at (x, y) given in ``epsg``, or None outside the raster."""
    arr, transform, src_epsg = _raster(href)
    if src_epsg != epsg:
        x, y = _transformer(epsg, src_epsg).transform(x, y)
    col, row = ~transform @ (x, y)
    r, c = int(np.floor(row)), int(np.floor(col))
    if not (0 <= r < arr.shape[0] and 0 <= c < arr.shape[1]):
        return None
    return int(arr[r, c])


def _expected(step_hrefs: dict, band: str, x: float, y: float, epsg: int) -> float:
    """What a chip must hold at (x, y): the first item (id order) with QA data decides the mask
    (Fmask bit 1 cloud, bit 3 shadow, 255 nodata); the first with a valid DN gives the value."""
    qa = next((v for h in step_hrefs["qa"] if (v := _pixel(h, x, y, epsg)) not in (None, 255)),
              None)
    if qa is None or qa & 0b10 or qa & 0b1000:
        return float("nan")
    dn = next((v for h in step_hrefs[band]
               if (v := _pixel(h, x, y, epsg)) not in (None, -9999)), None)
    return float("nan") if dn is None else dn * 0.0001


def _epsg(href: str) -> int:
    return _raster(href)[2]


def test_train_statistics_come_from_the_records_and_equal_the_files(flood_chips, tmp_path):
    from terrastill.data.splits import band_stats

    ds = json.loads((flood_chips / "dataset.json").read_text())
    index = gpd.read_parquet(flood_chips / "index.parquet")
    train = sorted(index.loc[index["split"] == "train", "id"])
    paths = [flood_chips / "chips" / f"{i}.tif" for i in train]
    # read back from every written file: the same numbers to the bit as the records' sums
    assert band_stats(paths, 6) == (ds["stats"]["mean"], ds["stats"]["std"])
    recs = {i: json.loads((flood_chips / "records" / f"{i}.json").read_text())["band_sums"]
            for i in train}
    # with every chip's sums known, no file is opened (these paths do not exist)
    gone = [tmp_path / f"{i}.tif" for i in train]
    assert band_stats(gone, 6, recs) == (ds["stats"]["mean"], ds["stats"]["std"])
    with pytest.raises(rasterio.RasterioIOError):
        band_stats(gone, 6, {k: v for k, v in recs.items() if k != train[0]})


def test_chip_pixels_equal_source_cogs_at_the_same_map_coordinate(flood_chips):
    """Sampled pixels of every step equal the scaled, masked source value, read independently
    with rasterio at the same map coordinate — including pixels taken from the neighbouring
    UTM zone's tiles (nearest neighbour after reprojection) and from neighbouring tiles."""
    index = gpd.read_parquet(flood_chips / "index.parquet")
    rng = np.random.default_rng(0)
    checked = nans = cross_zone = 0
    for rec in index.itertuples():
        steps = json.loads(rec.step_hrefs)
        with rasterio.open(flood_chips / "chips" / f"{rec.id}.tif") as src:
            chip, transform, epsg = src.read(), src.transform, src.crs.to_epsg()
        for _ in range(8):
            row, col = (int(v) for v in rng.integers(0, 16, 2))
            x, y = transform @ (col + 0.5, row + 0.5)
            for t, hrefs in enumerate(steps):
                cross_zone += any(_epsg(h) != epsg for h in hrefs["qa"])
                for band in ("blue", "red", "swir2"):
                    got = chip[t * 6 + BANDS.index(band), row, col]
                    want = _expected(hrefs, band, x, y, epsg)
                    if np.isnan(want):
                        assert np.isnan(got), (rec.id, t, band, row, col)
                        nans += 1
                    else:
                        assert got == pytest.approx(want, abs=1e-7), (rec.id, t, band, row, col)
                        checked += 1
    assert checked > 100 and nans > 0
    assert cross_zone > 0, "no chip drew on the neighbouring UTM zone's tiles"


def _season_items(world: dict) -> list[dict]:
    """The test world's item dicts from May to mid-July."""
    from terrastill.catalog import LocalCatalog, Search

    return [it.to_dict(transform_hrefs=False) for it in LocalCatalog(world["catalog"]).search(
        Search((), tuple(world["bbox"]), dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
               dt.datetime(2024, 7, 15, tzinfo=dt.UTC)))]


def test_shared_reads_equal_direct_reads(small_world):
    """Windows read together (one read of their union per asset, cut per window) give the
    same arrays, acquisitions and fractions as each window read alone, also where pixels
    come from the neighbouring UTM zone (reprojected) and where a window has no imagery."""
    from affine import Affine

    from terrastill.data.chips import ChipRead, read_chip, read_chips
    from terrastill.data.grid import GridSpec
    from terrastill.errors import NoImageryError

    items = _season_items(small_world)
    tile = next(t for t in small_world["tiles"] if t["epsg"] == 32633)
    t = tile["transform"]
    x0, y0 = t[2] - 30 * 20, t[5] - 30 * 8  # starts west of the zone-33 tile: cross-zone
    windows = [GridSpec(32633, Affine(30, 0, x0 + 30 * 12 * i, 0, -30, y0), 16, 16)
               for i in range(7)]
    # east of the easternmost tile: no imagery for this one window
    edge = max(z["bounds"][2] for z in small_world["tiles"] if z["epsg"] == 32633)
    east = x0 + 30 * (int((edge - x0) // 30) + 8)
    windows.append(GridSpec(32633, Affine(30, 0, east, 0, -30, y0), 16, 16))
    opts = ReadOptions(temporal=TemporalOptions(2, 9, 4, 50))
    compared = rejected = partial = 0
    for day in sorted({dt.date.fromisoformat(it["properties"]["datetime"][:10])
                       for it in items}):
        shared = read_chips(windows, day, items, opts)
        assert len(shared) == len(windows)
        for g, got in zip(windows, shared, strict=True):
            try:
                direct = read_chip(g, day, items, opts)
            except NoImageryError as exc:
                assert isinstance(got, NoImageryError) and str(got) == str(exc)
                rejected += "exceed" in str(exc)
                continue
            assert isinstance(got, ChipRead)
            np.testing.assert_array_equal(direct.array, got.array)
            assert [s.acquisition for s in direct.steps] == [s.acquisition for s in got.steps]
            for a, b in zip(direct.steps, got.steps, strict=True):
                assert a.invalid_fraction == pytest.approx(b.invalid_fraction)
                assert a.cloud_fraction == pytest.approx(b.cloud_fraction)
                partial += 0 < a.invalid_fraction < 1
            compared += 1
        assert isinstance(shared[-1], NoImageryError)
    # the comparison met windows too cloudy to use and windows chosen despite some cloud
    assert compared >= 50 and rejected >= 1 and partial >= 1


def test_window_shares_from_summed_area_equal_the_mean():
    """A window's share of a mask from the summed-area table is the very float
    ``mask[window].mean()`` gives, at edges, corners and for the whole mask."""
    from terrastill.data.chips import summed_area, window_share

    rng = np.random.default_rng(7)
    mask = rng.random((37, 53)) < 0.3
    table = summed_area(mask)
    cuts = [np.s_[0:37, 0:53], np.s_[0:16, 0:16], np.s_[21:37, 37:53], np.s_[5:6, 9:10]]
    cuts += [np.s_[r:r + 16, c:c + 16] for r in range(0, 22, 3) for c in range(0, 38, 5)]
    for cut in cuts:
        assert window_share(table, cut) == mask[cut].mean()
    assert window_share(summed_area(np.ones((4, 4), bool)), np.s_[1:3, 1:4]) == 1.0


def test_rejected_windows_do_not_keep_a_block_of_reads_alive(small_world):
    """Exceptions kept as values carry no traceback: a traceback's frames hold the block's
    shared reads, and would tie them into a cycle that only a full garbage collection
    frees (blocks of reads piled up between collections and grew memory with the AOI)."""
    import gc

    from affine import Affine

    from terrastill.data.chips import _SharedReads, read_chips
    from terrastill.data.grid import GridSpec
    from terrastill.errors import NoImageryError

    items = _season_items(small_world)
    tile = next(t for t in small_world["tiles"] if t["epsg"] == 32633)
    t = tile["transform"]
    windows = [GridSpec(32633, Affine(30, 0, t[2] + 30 * 16 * i, 0, -30, t[5] - 30 * 8), 16,
                        16) for i in range(6)]
    opts = ReadOptions(temporal=TemporalOptions(2, 9, 4, 0.5))  # strict: many rejections
    gc.collect()
    gc.disable()
    try:
        rejected = 0
        for day in sorted({dt.date.fromisoformat(it["properties"]["datetime"][:10])
                           for it in items})[2:]:
            got = read_chips(windows, day, items, opts)
            errors = [g for g in got if isinstance(g, NoImageryError)]
            assert all(e.__traceback__ is None for e in errors)
            rejected += len(errors)
            del got, errors
        alive = [o for o in gc.get_objects() if isinstance(o, _SharedReads)]
    finally:
        gc.enable()
    assert rejected > 0 and not alive
