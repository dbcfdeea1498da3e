"""predict --image on real, untagged, oddly scaled and broken rasters: it runs or it says why
in one line, and leaves no folder behind when it cannot."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from terrastill.cli import app

runner = CliRunner()
HLS = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
NAMES = ",".join(f"t{t}:{b}" for t in range(3) for b in HLS)
# the real chip's first step is all -9999: the two-step test model reads its last two steps
LAST_TWO = ",".join([f"unused_{b}" for b in HLS] + [f"t{t}:{b}" for t in range(2) for b in HLS])


def _georeferenced(src_path: Path, out: Path, descriptions: bool = False) -> Path:
    """A copy of the real InstaGeo chip on a 30 m UTM grid (it has none), no nodata tag."""
    with rasterio.open(src_path) as src:
        data = src.read()
        prof = src.profile
    prof.update(crs="EPSG:32638", transform=Affine(30, 0, 500000, 0, -30, 2000000),
                nodata=None, driver="GTiff")
    with rasterio.open(out, "w", **prof) as dst:
        dst.write(data)
        if descriptions:
            for i, name in enumerate(NAMES.split(","), start=1):
                dst.set_band_description(i, name)
    return out


@pytest.fixture
def real_chip(real_data, tmp_path) -> Path:
    return _georeferenced(real_data / "instageo" / "chip_178_022.tif", tmp_path / "chip.tif")


def test_an_untagged_int16_image_runs_with_a_scale_warning(flood_model, real_chip, tmp_path):
    out = tmp_path / "p"
    res = runner.invoke(app, ["predict", str(flood_model), "--image", str(real_chip),
                              "--image-bands", NAMES, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "pass --scale" in res.output and "--scale 0.0001" in res.output
    assert list(out.glob("*_classes.tif"))


def test_nodata_option_masks_the_fill_value(flood_model, real_chip, tmp_path):
    with rasterio.open(real_chip, "r+") as dst:
        data = dst.read()
        data[8, :10, :10] = -9999  # a gap in one band of the second step
        dst.write(data)
    out = tmp_path / "p"
    res = runner.invoke(app, ["predict", str(flood_model), "--image", str(real_chip),
                              "--image-bands", LAST_TWO, "--nodata", "-9999", "--scale",
                              "0.0001", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "pass --scale" not in res.output and "warning" not in res.output
    with rasterio.open(real_chip) as src:
        missing = (src.read()[6:] == -9999).any(axis=0)
    with rasterio.open(next(out.glob("*_classes.tif"))) as dst:
        classes = dst.read(1)
    assert missing.any() and (classes[missing] == 255).all()
    assert (classes[~missing] != 255).any()


def test_an_image_without_a_crs_is_refused_and_leaves_no_folder(flood_model, real_data,
                                                                tmp_path):
    out = tmp_path / "p"
    res = runner.invoke(app, ["predict", str(flood_model), "--image",
                              str(real_data / "instageo" / "chip_178_022.tif"),
                              "--image-bands", NAMES, "--out", str(out)])
    assert res.exit_code == 2 and "needs a CRS" in res.output, res.output
    assert not out.exists()


@pytest.mark.parametrize("cut", [300, 40_000])
def test_a_corrupt_image_is_one_line_and_exit_2(flood_model, flood_dataset, tmp_path, cut):
    chip = sorted((flood_dataset / "chips").glob("*.tif"))[0]
    broken = tmp_path / "broken.tif"
    shutil.copyfile(chip, broken)
    size = broken.stat().st_size
    broken.write_bytes(broken.read_bytes()[:min(cut, size // 2)])
    out = tmp_path / "p"
    res = runner.invoke(app, ["predict", str(flood_model), "--image", str(broken), "--out",
                              str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "broken.tif" in lines[-1]
    assert not out.exists()


def test_a_mostly_nodata_product_says_why(flood_model, real_data, tmp_path):
    # read as named, the model's first step is the real chip's all -9999 first step
    chip = _georeferenced(real_data / "instageo" / "chip_178_022.tif", tmp_path / "c.tif",
                          descriptions=True)
    res = runner.invoke(app, ["predict", str(flood_model), "--image", str(chip), "--nodata",
                              "-9999", "--scale", "0.0001", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert "of the prediction is nodata" in res.output and "value -9999" in res.output


def test_windows_sit_on_the_images_own_pixels():
    from terrastill.inference.image import image_windows

    t = Affine(10.016, 0, 516579.572, 0, -10.002, 5429420.966)  # EuroSAT-like, unaligned
    grid, windows = image_windows(32632, t, 64, 64, 16, 0.25)
    assert grid.transform == t
    for w in windows:
        col, row = ~t @ (w.transform.c, w.transform.f)
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
        assert 0 <= round(col) <= 48 and 0 <= round(row) <= 48
    assert np.isclose(windows[-1].transform.c, t.c + 48 * t.a)
