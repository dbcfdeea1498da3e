"""Real files from ../shared/data/real: HLS Fmask, locust observations, a corrupt GeoTIFF."""

from __future__ import annotations

import datetime as dt

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer

from terrastill.data.build import ChipJob, process_task
from terrastill.data.chips import ReadOptions
from terrastill.data.grid import GridSpec, utm_epsg
from terrastill.data.observations import ObservationOptions, load_observations
from terrastill.data.plan import ChipTask
from terrastill.data.temporal import TemporalOptions
from terrastill.sources import get_profile
from terrastill.sources.qa import decode_fmask, encode_fmask


def test_real_hls_fmask_decodes_to_the_documented_counts(real_data):
    with rasterio.open(real_data / "instageo" / "fmask.tif") as src:
        qa = src.read(1)
    d = decode_fmask(qa)
    assert int(d["cloud"].sum()) == 75
    assert int(d["shadow"].sum()) == 113
    assert int(d["adjacent"].sum()) == 1094
    assert int(d["cirrus"].sum()) == int(d["snow"].sum()) == int(d["water"].sum()) == 0
    # every pixel has aerosol bits set: a decoder treating non-zero as cloud would mask 100%
    assert (qa != 0).all()
    masked = get_profile("hls").invalid_mask(qa, ["cloud", "shadow"])
    assert int(masked.sum()) == int((d["cloud"] | d["shadow"]).sum()) < qa.size // 100


def test_fmask_encoding_round_trips():
    rng = np.random.default_rng(0)
    layers = {k: rng.random((8, 8)) < 0.3 for k in ("cloud", "shadow", "adjacent", "cirrus")}
    qa = encode_fmask(**layers, aerosol=3)
    d = decode_fmask(qa)
    for k, v in layers.items():
        assert (d[k] == v).all()
    assert d["aerosol_high"].all()


def test_real_locust_csv_loads_through_column_options(real_data):
    path = real_data / "instageo" / "test_breeding_data.csv"
    obs = load_observations(path, ObservationOptions(lon_col="x", lat_col="y"))
    assert len(obs) == 50 and obs.rejected.empty
    assert obs.class_names == ["0", "1"]
    assert set(obs.table["label"]) <= {0, 1}
    first = obs.table.iloc[0]
    assert (first.lon, first.lat, first.date) == (43.03915, 15.315846, "2023-03-08")
    assert utm_epsg(first.lon, first.lat) == 32638


def test_s2_processing_baseline_offset():
    s2 = get_profile("s2")
    dn = np.array([0, 1000, 2500], dtype=np.uint16)
    new = s2.to_reflectance(dn, {"s2:processing_baseline": "05.00"})
    old = s2.to_reflectance(dn, {"s2:processing_baseline": "03.00"})
    assert np.isnan(new[0]) and np.isnan(old[0])
    assert np.allclose(new[1:], [0.0, 0.15]) and np.allclose(old[1:], [0.1, 0.25])
    assert s2.to_reflectance(dn, {"s2:processing_baseline": "05.00",
                                  "earthsearch:boa_offset_applied": True})[2] == np.float32(0.25)


def test_a_corrupt_asset_rejects_its_chip_with_a_reason(real_data, tmp_path):
    """rasterio's truncated-tiles file opens but fails on read: the chip is rejected, no crash."""
    href = str(real_data / "rasterio" / "corrupt.tif")
    with rasterio.open(href) as src:
        b = src.bounds
        lon, lat = Transformer.from_crs(src.crs, 4326, always_xy=True).transform(
            (b.left + b.right) / 2, (b.top + b.bottom) / 2)
    epsg = utm_epsg(lon, lat)
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    grid = GridSpec(epsg, Affine(30, 0, x // 30 * 30, 0, -30, y // 30 * 30), 8, 8)
    assets = {k: {"href": href} for k in ("B02", "B03", "B04", "B8A", "B11", "B12", "Fmask")}
    item = {"id": "corrupt", "collection": "HLSS30_2.0", "assets": assets,
            "properties": {"datetime": "2024-05-01T00:00:00Z"},
            "geometry": {"type": "Polygon", "coordinates": [[[lon - 1, lat - 1], [lon + 1, lat - 1],
                                                             [lon + 1, lat + 1], [lon - 1, lat + 1],
                                                             [lon - 1, lat - 1]]]}}
    task = ChipTask("corrupt_chip", grid, dt.date(2024, 5, 1), [1],
                    [f"POINT ({lon} {lat})"], [0], [item])
    job = ChipJob(read=ReadOptions(temporal=TemporalOptions(1, 0, 1, 100)), chip_size=8)
    rec = process_task(task, job, str(tmp_path), 2)
    assert rec["status"] == "rejected"
    assert "corrupt.tif" in rec["reason"] and "cannot read asset" in rec["reason"]
    assert not (tmp_path / "chips").exists()
