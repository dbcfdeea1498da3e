"""World presets: the hls-production layout (tiled, compressed, overviews, one COG per band)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import rasterio
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.world.presets import PRESETS

runner = CliRunner()
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_unknown_preset_is_refused(tmp_path):
    res = runner.invoke(app, ["world", str(tmp_path / "w"), "--preset", "hls-prod"])
    assert res.exit_code == 2 and "hls-production" in res.output
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


@pytest.mark.slow
def test_hls_production_preset_writes_tiled_granule_like_cogs(tmp_path):
    out = tmp_path / "w"
    # the preset's layout at a quarter of a granule's width (command-line options override it)
    res = runner.invoke(app, ["world", str(out), "--preset", "hls-production", "--tile-size",
                              "1024", "--observations", "10"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "world.json").read_text())
    cfg = manifest["config"]
    assert cfg["tile_size"] == 1024 and cfg["block_size"] == 512 and cfg["zones"] == 1
    assert cfg["start"] == PRESETS["hls-production"]["start"] and manifest["acquisitions"] >= 4
    item = next(iter((out / "scenes").glob("*/*")))
    bands = sorted(p.stem for p in item.glob("*.tif"))
    assert {"B02", "B03", "B04", "Fmask"} <= set(bands)  # one COG per band, as HLS ships
    with rasterio.open(item / "B04.tif") as src:
        assert src.block_shapes == [(512, 512)] and src.compression.name == "deflate"
        assert src.overviews(1) == [2] and src.shape == (1024, 1024)
        assert src.res == (30.0, 30.0)


def test_default_world_config_is_unchanged_by_the_block_size_field():
    from terrastill.world.config import WorldConfig

    assert WorldConfig().block_size is None


def test_bench_predict_aois_of_a_one_zone_world():
    spec = importlib.util.spec_from_file_location("bench_predict", SCRIPTS / "bench_predict.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_predict"] = mod
    spec.loader.exec_module(mod)
    bbox = [10.0, 45.0, 11.0, 46.0]
    assert list(mod.aois(bbox, 0.5, zones=1)) == ["centre"]
    assert mod.aois(bbox, 0.5, zones=1)["centre"] == pytest.approx([10.25, 45.25, 10.75, 45.75])
