"""The asset reader: reprojection through the pixel map and reads limited to needed pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from terrastill.data.grid import GridSpec
from terrastill.data.read import read_asset


def _other_zone_assets(world: dict, epsg: int) -> list[str]:
    """B04 and Fmask files of the tiles that are not in ``epsg``."""
    root = Path(world["root"]) / "scenes"
    tiles = [t["id"] for t in world["tiles"] if t["epsg"] != epsg]
    files = []
    for tile in tiles:
        files += sorted(str(p) for p in (root / tile).glob("*/B04.tif"))[:2]
        files += sorted(str(p) for p in (root / tile).glob("*/Fmask.tif"))[:1]
    return files


def _grid_over_the_boundary(world: dict) -> GridSpec:
    """A zone-32633 grid that reaches well into the zone-32632 tiles (odd size and phase)."""
    tile = next(t for t in world["tiles"] if t["epsg"] == 32633)
    t = tile["transform"]
    return GridSpec(32633, Affine(30, 0, t[2] - 30 * 70, 0, -30, t[5] - 30 * 5), 97, 61)


def _warped(href: str, grid: GridSpec, fill: float) -> np.ndarray:
    with rasterio.open(href) as src, WarpedVRT(
            src, crs=grid.crs, transform=grid.transform, width=grid.width,
            height=grid.height, resampling=Resampling.nearest, nodata=fill, tolerance=1e-6,
            src_nodata=src.nodata if src.nodata is not None else fill) as vrt:
        return vrt.read(1)


def test_nearest_reprojection_equals_gdal_exact_warp(small_world):
    """The cached pixel map picks the same source pixel as GDAL's warper with exact
    transforms, for every band sharing the source grid, and fills what it cannot reach."""
    grid = _grid_over_the_boundary(small_world)
    files = _other_zone_assets(small_world, grid.epsg)
    assert len(files) >= 4
    reached = 0
    for href in files:
        with rasterio.open(href) as src:
            fill = src.nodata if src.nodata is not None else 0
        ours = read_asset(href, grid, fill=fill)
        np.testing.assert_array_equal(ours, _warped(href, grid, fill))
        reached += int((ours != fill).sum())
    assert reached > 1000


@pytest.mark.parametrize("shape", ["corner", "strip", "scattered"])
def test_reading_only_needed_pixels_keeps_their_values(small_world, shape):
    """With a ``todo`` mask, the needed pixels get the values of a whole read (aligned and
    reprojected sources alike); a mosaic never looks at the others."""
    grid = _grid_over_the_boundary(small_world)
    own = Path(small_world["root"]) / "scenes"
    same_zone = sorted(str(p) for t in small_world["tiles"] if t["epsg"] == grid.epsg
                       for p in (own / t["id"]).glob("*/B04.tif"))[:1]
    todo = np.zeros((grid.height, grid.width), dtype=bool)
    if shape == "corner":
        todo[:20, :30] = True
    elif shape == "strip":
        todo[:, -9:] = True
    else:
        todo[::7, ::5] = True
    for href in same_zone + _other_zone_assets(small_world, grid.epsg):
        whole = read_asset(href, grid, fill=0)
        part = read_asset(href, grid, fill=0, todo=todo)
        np.testing.assert_array_equal(part[todo], whole[todo])
    nothing = read_asset(same_zone[0], grid, fill=0, todo=np.zeros_like(todo))
    assert not nothing.any()


def test_part_reads_are_the_whole_read_inside_their_box(small_world):
    """``read_asset_part`` returns the box of the grid the asset reaches (aligned and
    reprojected sources): inside it the whole-grid read's values, outside it only fill."""
    from terrastill.data.read import read_asset_part

    grid = _grid_over_the_boundary(small_world)
    own = Path(small_world["root"]) / "scenes"
    same_zone = sorted(str(p) for t in small_world["tiles"] if t["epsg"] == grid.epsg
                       for p in (own / t["id"]).glob("*/B04.tif"))[:1]
    partial = 0
    for href in same_zone + _other_zone_assets(small_world, grid.epsg):
        whole = read_asset(href, grid, fill=0)
        got = read_asset_part(href, grid, fill=0)
        assert got is not None
        (r0, r1, c0, c1), data = got
        np.testing.assert_array_equal(data, whole[r0:r1, c0:c1])
        outside = np.ones_like(whole, dtype=bool)
        outside[r0:r1, c0:c1] = False
        assert not whole[outside].any()
        partial += (r1 - r0) * (c1 - c0) < grid.width * grid.height
    assert partial >= 2  # the box is smaller than the grid where the asset ends
    far = GridSpec(grid.epsg, grid.transform @ Affine.translation(0, -10_000), 8, 8)
    assert read_asset_part(same_zone[0], far, fill=0) is None
    assert not read_asset(same_zone[0], far, fill=0).any()


def test_close_datasets_closes_handles_and_reads_again_the_same(small_world):
    from terrastill.data import read as read_mod

    grid = _grid_over_the_boundary(small_world)
    files = _other_zone_assets(small_world, grid.epsg)[:2]
    before = [read_asset(href, grid, fill=0) for href in files]
    handles = list(read_mod._DATASETS.open.values())
    assert handles and read_mod.pixel_map.cache_info().currsize > 0
    assert set(files) <= set(read_mod.open_assets())
    read_mod.close_datasets()
    assert not read_mod._DATASETS.open and all(ds.closed for ds in handles)
    assert read_mod.open_assets() == []
    assert read_mod.pixel_map.cache_info().currsize == 0
    for href, arr in zip(files, before, strict=True):
        np.testing.assert_array_equal(read_asset(href, grid, fill=0), arr)


def test_open_assets_counts_every_threads_opens(small_world):
    """A prediction reading ahead opens its files in another thread: open_assets() (which
    the prediction benchmark's bare reads replay) lists them all the same."""
    from concurrent.futures import ThreadPoolExecutor

    from terrastill.data import read as read_mod

    read_mod.close_datasets()
    grid = _grid_over_the_boundary(small_world)
    files = _other_zone_assets(small_world, grid.epsg)[:3]
    with ThreadPoolExecutor(1) as pool:
        list(pool.map(lambda h: read_asset(h, grid, fill=0), files[:2]))
    read_asset(files[2], grid, fill=0)
    assert read_mod.open_assets() == files  # in the order they were opened
    assert not set(files[:2]) & set(read_mod._DATASETS.open)  # they were the other thread's
    read_mod.close_datasets()
    assert read_mod.open_assets() == []


def test_landsat_mosaic_masks_the_clouds_of_every_item(tmp_path):
    """Landsat QA has no nodata value: an item's QA covers only the pixels the item
    reaches, so the next item's QA (here: its clouds) still masks the rest of the grid."""
    from terrastill.data.read import Acquisition, read_acquisition
    from terrastill.sources import get_profile

    profile = get_profile("landsat")
    x0, y0 = 500_010.0, 5_000_010.0
    cloud = np.zeros((10, 10), dtype=np.uint16)
    cloud[2:5, 3:7] = 1 << 3  # QA_PIXEL cloud bit
    items = []
    for k, qa in enumerate([np.zeros((10, 10), np.uint16), cloud]):
        assets = {}
        for key in ("qa_pixel", "blue", "green", "red", "nir08", "swir16", "swir22"):
            path = tmp_path / f"item{k}_{key}.tif"
            data = qa if key == "qa_pixel" else np.full((10, 10), 10_000 + k, np.uint16)
            with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1,
                               dtype="uint16", crs="EPSG:32633", nodata=None if
                               key == "qa_pixel" else 0,
                               transform=Affine(30, 0, x0 + 300 * k, 0, -30, y0)) as dst:
                dst.write(data, 1)
            assets[key] = {"href": str(path)}
        items.append({"id": f"item{k}", "collection": "landsat-c2-l2", "assets": assets,
                      "properties": {"datetime": "2024-06-01T10:00:00Z", "proj:epsg": 32633}})
    grid = GridSpec(32633, Affine(30, 0, x0, 0, -30, y0), 20, 10)
    step = read_acquisition(Acquisition("landsat-c2-l2", "2024-06-01", tuple(items)), profile,
                            profile.band_names, grid, profile.default_mask)
    masked = np.isnan(step.data).all(axis=0)
    expected = np.zeros((10, 20), dtype=bool)
    expected[2:5, 13:17] = True
    np.testing.assert_array_equal(masked, expected)
    assert step.cloud_fraction == pytest.approx(12 / 200)
    assert np.isfinite(step.data[:, :, 10:]).any() and (step.data[2, 0, :10] > 0).all()


def _landsat_items(tmp_path: Path, bands: dict[int, dict[str, np.ndarray]],
                   x0: float, y0: float) -> list[dict]:
    """Landsat items of 10×10 pixels, item k shifted 5 pixels east per k, with the given
    per-band DN arrays (the others 10_000 + k; QA clear)."""
    items = []
    for k in sorted(bands):
        assets = {}
        for key in ("qa_pixel", "blue", "green", "red", "nir08", "swir16", "swir22"):
            path = tmp_path / f"item{k}_{key}.tif"
            default = np.zeros((10, 10), np.uint16) if key == "qa_pixel" else \
                np.full((10, 10), 10_000 + k, np.uint16)
            with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1,
                               dtype="uint16", crs="EPSG:32633",
                               nodata=None if key == "qa_pixel" else 0,
                               transform=Affine(30, 0, x0 + 150 * k, 0, -30, y0)) as dst:
                dst.write(bands[k].get(key, default), 1)
            assets[key] = {"href": str(path)}
        items.append({"id": f"item{k}", "collection": "landsat-c2-l2", "assets": assets,
                      "properties": {"datetime": "2024-06-01T10:00:00Z", "proj:epsg": 32633}})
    return items


def test_acquisition_mosaics_each_band_and_masks_a_pixel_any_band_lacks(tmp_path):
    """Each band is mosaicked first-valid-wins (a hole in the first item's band is filled
    by the second item); a pixel that some band has in no item is NaN in every band, as are
    the pixels outside ``need`` and those no item reaches; the rest hold every band's
    reflectance."""
    from terrastill.data.read import Acquisition, read_acquisition
    from terrastill.sources import get_profile

    profile = get_profile("landsat")
    x0, y0 = 500_010.0, 5_000_010.0
    red0 = np.full((10, 10), 20_000, np.uint16)
    red0[1, 7] = 0  # a hole the second item fills (it reaches columns 5-14)
    red0[1, 2] = 0  # a hole nothing fills: NaN in every band
    blue1 = np.full((10, 10), 30_000, np.uint16)
    items = _landsat_items(tmp_path, {0: {"red": red0}, 1: {"blue": blue1}}, x0, y0)
    grid = GridSpec(32633, Affine(30, 0, x0, 0, -30, y0), 20, 10)
    need = np.ones((10, 20), dtype=bool)
    need[8:, :] = False
    step = read_acquisition(Acquisition("landsat-c2-l2", "2024-06-01", tuple(items)), profile,
                            profile.band_names, grid, profile.default_mask, need=need)

    def refl(dn: int) -> np.float32:
        return profile.to_reflectance(np.array([dn], np.uint16), {})[0]

    names = list(profile.band_names)
    expected = np.full((len(names), 10, 20), np.nan, np.float32)
    for b, name in enumerate(names):
        first = 20_000 if name == "red" else 10_000
        second = 30_000 if name == "blue" else 10_001
        expected[b, :, :10] = refl(first)
        expected[b, :, 10:15] = refl(second)
        if name == "red":
            expected[b, 1, 7] = refl(second)
    expected[:, 1, 2] = np.nan  # red has it in no item
    expected[:, :, 15:] = np.nan  # no item reaches
    expected[:, 8:, :] = np.nan  # not needed
    np.testing.assert_array_equal(step.data, expected)
    invalid = np.isnan(expected[0])
    assert step.invalid_fraction == invalid.sum() / invalid.size
    assert step.cloud_fraction == 0.0
    assert step.hrefs["red"] == [items[0]["assets"]["red"]["href"],
                                 items[1]["assets"]["red"]["href"]]


def test_reprojected_bands_of_one_grid_share_one_gather_plan(small_world):
    """Reading several files on the same source grid over the same part of a target grid
    works out where each pixel comes from once; :func:`close_datasets` forgets it."""
    from terrastill.data import read as read_mod

    grid = _grid_over_the_boundary(small_world)
    tile = next(t for t in small_world["tiles"] if t["epsg"] != grid.epsg)
    scene = sorted((Path(small_world["root"]) / "scenes" / tile["id"]).glob("*"))[0]
    files = [str(scene / f"{b}.tif") for b in ("B02", "B03", "B04", "Fmask")]
    read_mod.close_datasets()
    for href in files:
        fill = 255 if href.endswith("Fmask.tif") else -9999
        np.testing.assert_array_equal(read_asset(href, grid, fill=fill),
                                      _warped(href, grid, fill))
    info = read_mod._gather.cache_info()
    assert (info.misses, info.hits) == (1, len(files) - 1)
    read_mod.close_datasets()
    assert read_mod._gather.cache_info().currsize == 0


def test_reads_decode_tiles_on_every_core_unless_told(monkeypatch):
    """Reads run with GDAL's multi-threaded decoding of tiled files (the same pixels in less
    time); a ``GDAL_NUM_THREADS`` environment variable still wins."""
    from rasterio.env import getenv

    from terrastill.data.read import gdal_session, read_env

    monkeypatch.delenv("GDAL_NUM_THREADS", raising=False)
    with gdal_session():
        assert getenv()["GDAL_NUM_THREADS"] == "ALL_CPUS"
    monkeypatch.setenv("GDAL_NUM_THREADS", "1")
    assert "GDAL_NUM_THREADS" not in read_env()
