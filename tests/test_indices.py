"""Derived index channels: formulas, chips --indices, and one code path from train to embed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.data.indices import (
    IndexLayer,
    compute_indices,
    input_config,
    normalized_difference,
    resolve_indices,
)
from terrastill.data.normalize import normalize_chip
from terrastill.errors import BadInputError, SpecMismatchError

runner = CliRunner()
S2_SIX = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
OPTS = ["--source", "hls", "--classes", "land,water", "--chip-size", "16", "--num-steps", "2",
        "--temporal-step", "9", "--temporal-tolerance", "4", "--max-cloud", "60",
        "--min-valid", "0.3", "--split-block", "1000"]


def test_formulas_pick_the_profiles_band_names():
    specs = resolve_indices("ndwi, MNDWI,ndvi,ndbi,ndwi", S2_SIX, "s2")
    assert [(s["name"], s["a"], s["b"]) for s in specs] == [
        ("ndwi", "green", "nir_narrow"), ("mndwi", "green", "swir1"),
        ("ndvi", "nir_narrow", "red"), ("ndbi", "swir1", "nir_narrow")]
    # S2's 10 m B08 is preferred where the chosen bands include it
    assert resolve_indices("ndwi", [*S2_SIX, "nir"])[0]["b"] == "nir"


@pytest.mark.parametrize("names, bands, words", [
    ("ndwi,ndxx", S2_SIX, ["ndxx", "unknown index"]),
    ("ndbi", ["blue", "green", "red"], ["ndbi", "swir1", "blue, green, red"]),
    ("ndwi", ["vv", "vh"], ["ndwi", "green"]),
])
def test_unknown_index_or_missing_band_is_named(names, bands, words):
    with pytest.raises(BadInputError) as err:
        resolve_indices(names, bands, "s2")
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def test_normalized_difference_division_by_zero_is_nodata():
    a = torch.tensor([0.3, 0.0, 0.2, -0.02, float("nan")])
    b = torch.tensor([0.1, 0.0, -0.2, 0.01, 0.1])
    out = normalized_difference(a, b)
    assert out[0].item() == pytest.approx(0.5)
    assert torch.isnan(out[1]) and torch.isnan(out[2]) and torch.isnan(out[4])
    assert out[3].item() == 1.0  # (−0.03)/(−0.01) = 3, clipped to the index's range


def _inputs(mean, std, names=("ndwi", "mndwi", "ndvi")):
    specs = resolve_indices(list(names), S2_SIX)
    return input_config(S2_SIX, mean, std, specs, [0.1, -0.2, 0.3], [0.4, 0.5, 0.6]), specs


def test_index_layer_equals_the_formula_on_raw_reflectance():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.4, size=(2, 6, 8, 8)).astype(np.float32)  # (T, C, H, W)
    raw[1, 1, 2, 3] = np.nan  # a missing green pixel at step 1
    raw[0, 1, 0, 0] = raw[0, 3, 0, 0] = 0.0  # green + nir = 0: ndwi undefined
    mean, std = [0.1, 0.12, 0.1, 0.25, 0.2, 0.15], [0.05, 0.06, 0.07, 0.1, 0.08, 0.0]
    inputs, specs = _inputs(mean, std)
    layer = IndexLayer(inputs)
    x, _ = normalize_chip(raw, mean, std)  # (C, T, H, W)
    out = layer(x[None])[0]
    assert out.shape == (9, 2, 8, 8)
    torch.testing.assert_close(out[:6], x)
    want = compute_indices(torch.from_numpy(raw), S2_SIX, specs, dim=1)  # (T, K, H, W)
    want = (want - torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    want = torch.nan_to_num(want.transpose(0, 1), nan=0.0)
    finite = torch.isfinite(torch.from_numpy(raw)).all(1)  # (T, H, W)
    torch.testing.assert_close(out[6:][:, finite], want[:, finite], atol=1e-5, rtol=1e-5)
    assert out[6, 0, 0, 0] == 0.0  # division by zero → nodata → 0 like any missing input
    assert out[6, 1, 2, 3] == 0.0 and out[7, 1, 2, 3] == 0.0  # the missing pixel
    # an already-expanded input passes; any other width is refused in one line
    assert layer(out[None]).shape == (1, 9, 2, 8, 8)
    with pytest.raises(SpecMismatchError, match="takes 6 input bands"):
        layer(torch.zeros(1, 7, 2, 8, 8))
    # bf16 autocast does not touch the index arithmetic
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(layer(x[None])[0], out)


# --- chips --indices → train → predict / embed ------------------------------------------

@pytest.fixture(scope="module")
def index_chips(small_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "chips"
    res = runner.invoke(app, ["chips", small_world["tasks"]["flood"]["observations"],
                              "--catalog", small_world["catalog"], "--out", str(out), *OPTS,
                              "--indices", "ndwi,mndwi,ndvi"])
    assert res.exit_code == 0, res.output
    return out


def test_chips_record_indices_and_their_train_statistics(index_chips):
    meta = json.loads((index_chips / "dataset.json").read_text())
    assert [i["name"] for i in meta["indices"]] == ["ndwi", "mndwi", "ndvi"]
    assert len(meta["stats"]["mean"]) == 6  # the chips keep the raw bands
    import pandas as pd

    index = pd.read_parquet(index_chips / "index.parquet")
    vals = []
    for cid in index.loc[index["split"] == "train", "id"]:
        with rasterio.open(index_chips / "chips" / f"{cid}.tif") as src:
            assert src.count == 2 * 6
            a = src.read().astype(np.float64).reshape(2, 6, src.height, src.width)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals.append(np.clip((a[:, 1] - a[:, 3]) / (a[:, 1] + a[:, 3]), -1, 1).ravel())
    v = np.concatenate(vals)
    v = v[np.isfinite(v)]
    assert meta["index_stats"]["mean"][0] == pytest.approx(v.mean(), abs=1e-5)
    assert meta["index_stats"]["std"][0] == pytest.approx(v.std(), abs=1e-5)
    # a re-split recomputes them over the new train split
    res = runner.invoke(app, ["split", str(index_chips), "--block-size", "2000", "--seed", "3"])
    assert res.exit_code == 0, res.output
    again = json.loads((index_chips / "dataset.json").read_text())
    assert len(again["index_stats"]["mean"]) == 3


@pytest.mark.parametrize("extra, words", [
    (["--indices", "ndwi,ndzz"], ["--indices ndzz", "unknown index"]),
    (["--bands", "blue,green,red", "--indices", "ndvi"], ["--indices ndvi", "nir_narrow"]),
])
def test_chips_bad_index_exits_2_and_writes_nothing(small_world, tmp_path, extra, words):
    out = tmp_path / "o"
    res = runner.invoke(app, ["chips", small_world["tasks"]["flood"]["observations"],
                              "--catalog", small_world["catalog"], "--out", str(out), *OPTS,
                              *extra])
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert all(w in res.output for w in words), res.output
    assert line and not out.exists()


@pytest.fixture(scope="module")
def index_model(index_chips, tmp_path_factory) -> Path:
    from terrastill.training.train import TrainOptions, fit

    out = tmp_path_factory.mktemp("idx-model")
    return fit(index_chips, out, TrainOptions(model="tiny", epochs=1, progress=False,
                                              batch_size=8))


def test_model_carries_the_indices_and_takes_raw_bands(index_model, index_chips, tmp_path):
    from terrastill.models.modelfile import load_model_file

    loaded = load_model_file(index_model)
    card = loaded.card
    assert card.arch["encoder"]["in_chans"] == 9
    assert card.arch["bands"][-3:] == ["ndwi", "mndwi", "ndvi"]
    assert [i["name"] for i in card.input_spec["indices"]] == ["ndwi", "mndwi", "ndvi"]
    assert card.input_spec["bands"] == S2_SIX and len(card.input_spec["mean"]) == 6
    assert card.macs > 0
    # predict --chips: the same raw-band tensors as training
    res = runner.invoke(app, ["predict", str(index_model), "--chips", str(index_chips),
                              "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "p").glob("*.tif"))) == len(
        list((index_chips / "chips").glob("*.tif")))


def test_embed_and_predict_compute_the_indices_through_one_path(index_model, index_chips,
                                                                small_world, tmp_path):
    from terrastill.data.dataset import ChipDataset
    from terrastill.embeddings.encoders import model_file_encoder
    from terrastill.inference.aoi import bbox_aoi
    from terrastill.inference.predict import PredictRequest, predict
    from terrastill.models.modelfile import load_model_file

    loaded = load_model_file(index_model)
    model = loaded.model
    x = ChipDataset(index_chips, "all")[0]["image"][None]  # (1, 6, T, H, W)
    expanded = model.inputs(x)
    with torch.no_grad():
        direct, _ = model.encoder.forward_features(expanded)  # what forward() feeds it
        # the encoder alone (as `terrastill embed` calls it) expands the raw bands itself
        alone, _ = model.encoder.forward_features(x)
    torch.testing.assert_close(alone, direct)
    enc = model_file_encoder(index_model, "cpu", "fp32")
    with rasterio.open(next((index_chips / "chips").glob("*.tif"))) as src:
        arr = src.read().astype(np.float32).reshape(2, 6, src.height, src.width)
    vec = enc.vectors(arr[None])
    assert vec.shape == (1, 96) and np.isfinite(vec).all()
    # predict over the AOI (the service runs the same function)
    date = dt.date.fromisoformat(small_world["tasks"]["flood"]["date"]) + dt.timedelta(days=6)
    w, s, e, n = small_world["bbox"]
    req = PredictRequest(model=index_model, aois=[bbox_aoi((w, s, w + (e - w) / 4,
                                                            s + (n - s) / 2))],
                         date=date, out_dir=tmp_path / "aoi", catalog=small_world["catalog"])
    result = predict(req)
    assert result.classes and result.pixels > 0
    with rasterio.open(result.classes[0]) as src:
        cls = src.read(1)
    assert ((cls == 0) | (cls == 1)).any()
