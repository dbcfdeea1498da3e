"""``terrastill predict``: grid alignment, COGs, seams, truth agreement, bad input, cancel."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.errors import BadInputError, NoImageryError, OutputError, SpecMismatchError
from terrastill.inference.aoi import bbox_aoi
from terrastill.inference.blend import StripAccumulator, window_weight
from terrastill.inference.predict import Cancelled, PredictRequest, predict
from terrastill.inference.truth import compare_to_reference

runner = CliRunner()


def after_flood(world: dict) -> dt.date:
    return dt.date.fromisoformat(world["tasks"]["flood"]["date"]) + dt.timedelta(days=6)


@pytest.fixture(scope="module")
def product(small_world, flood_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    req = PredictRequest(model=flood_model, aois=[bbox_aoi(small_world["bbox"])],
                         date=after_flood(small_world), out_dir=out,
                         catalog=small_world["catalog"], overlap=0.5,
                         write_probabilities=True, write_truecolor=True)
    return predict(req)


def test_products_are_valid_cogs_per_zone_with_a_sidecar(product):
    assert len(product.classes) == 2  # the world straddles two UTM zones
    assert len(product.probabilities) == len(product.truecolor) == 2
    for p in product.classes + product.probabilities + product.truecolor:
        assert cog_validate(str(p), quiet=True)[0], p
    with rasterio.open(product.classes[0]) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        assert src.colormap(1)[1][:3] != src.colormap(1)[0][:3]
        classes = set(np.unique(src.read(1)))
    assert classes <= {0, 1, 255} and {0, 1} <= classes
    side = json.loads(product.sidecar.read_text())
    assert side["items"] and side["acquisition_dates"] and side["parameters"]["overlap"] == 0.5
    assert side["timings"]["inference"] > 0 and side["windows"] == product.windows


def test_prediction_grid_is_aligned_with_the_source_imagery(product, small_world):
    for cog in product.classes:
        with rasterio.open(cog) as pred:
            epsg, t = pred.crs.to_epsg(), pred.transform
        tiles = [tile for tile in small_world["tiles"] if tile["epsg"] == epsg]
        assert tiles
        for tile in tiles:
            st = tile["transform"]
            assert t.a == st[0] and t.e == st[4]
            # same pixel phase: the origins differ by a whole number of pixels
            assert ((t.c - st[2]) / st[0]) % 1 == 0 and ((t.f - st[5]) / st[4]) % 1 == 0


def test_prediction_reproduces_the_truth(product, small_world):
    """Dense truth, although the model only ever saw point labels (pixel-weighted over zones)."""
    truth = small_world["tasks"]["flood"]["truth"]
    scores = [compare_to_reference(cog, Path(truth[cog.name.split("_")[-2]]), ["land", "water"])
              for cog in product.classes]
    n = sum(s["pixels"] for s in scores)
    assert n > 5000
    miou = sum(s["miou"] * s["pixels"] for s in scores) / n
    accuracy = sum(s["accuracy"] * s["pixels"] for s in scores) / n
    assert miou > 0.75 and accuracy > 0.93, scores


def test_overlap_blending_leaves_no_seams(product):
    """Probability jumps across window borders are no larger than elsewhere."""
    side = json.loads(product.sidecar.read_text())
    size = 16
    stride = int(round(size * (1 - side["parameters"]["overlap"])))
    for probs in product.probabilities:
        with rasterio.open(probs) as src:
            p = src.read(2).astype(float)  # water probability (percent)
            valid = p != 255
        diffs = np.abs(np.diff(p, axis=1))
        ok = valid[:, 1:] & valid[:, :-1]
        width = p.shape[1]
        starts = list(range(0, max(1, width - size + 1), stride))
        borders = {s + size for s in starts if 0 < s + size < width} | {s for s in starts if s}
        is_border = np.zeros(width - 1, dtype=bool)
        for b in borders:
            is_border[b - 1] = True
        at_border = diffs[:, is_border][ok[:, is_border]]
        elsewhere = diffs[:, ~is_border][ok[:, ~is_border]]
        assert at_border.size > 50 and elsewhere.size > 50
        assert at_border.mean() <= 1.5 * elsewhere.mean() + 1.0, (at_border.mean(),
                                                                  elsewhere.mean())


def test_strip_accumulator_equals_a_full_array_blend():
    rng = np.random.default_rng(0)
    h, w, size, stride = 40, 37, 16, 8
    full_v = np.zeros((2, h, w), np.float32)
    full_w = np.zeros((h, w), np.float32)
    got_v = np.zeros((2, h, w), np.float32)
    got_w = np.zeros((h, w), np.float32)

    def flush(row0, values, weights):
        n = min(values.shape[1], h - row0)
        got_v[:, row0:row0 + n] = values[:, :n]
        got_w[row0:row0 + n] = weights[:n]

    acc = StripAccumulator(2, w, h, size, flush)
    weight = window_weight(size)
    rows = [*range(0, h - size + 1, stride), h - size]
    cols = [*range(0, w - size + 1, stride), w - size]
    for r in sorted(set(rows)):
        for c in sorted(set(cols)):
            v = rng.random((2, size, size)).astype(np.float32)
            acc.add(r, c, v, weight)
            full_v[:, r:r + size, c:c + size] += v * weight
            full_w[r:r + size, c:c + size] += weight
    acc.close()
    assert acc.values.shape[1] == size  # memory: one window height, whatever the grid
    np.testing.assert_allclose(got_v, full_v, rtol=1e-5)
    np.testing.assert_allclose(got_w, full_w, rtol=1e-5)


def test_predict_every_chip_of_a_dataset(flood_model, flood_dataset, tmp_path):
    res = runner.invoke(app, ["predict", str(flood_model), "--chips", str(flood_dataset),
                              "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "p").glob("*.tif"))
    assert len(files) == len(list((flood_dataset / "chips").glob("*.tif")))
    with rasterio.open(files[0]) as a, rasterio.open(flood_dataset / "chips" / files[0].name) as b:
        assert a.transform == b.transform and a.crs == b.crs


def _cli(model: Path, world: dict, out: Path, *extra: str):
    return runner.invoke(app, ["predict", str(model), "--catalog", world["catalog"], "--out",
                               str(out), *extra])


BAD = {
    "inverted bbox": (["--bbox", "12.1", "45.2", "12.0", "45.3", "--date", "2024-06-26"],
                      "empty or inverted"),
    "bbox out of range": (["--bbox", "190", "45.2", "191", "45.3", "--date", "2024-06-26"],
                          "outside lon"),
    "too large": (["--bbox", "11", "44", "13", "46", "--date", "2024-06-26"],
                  "exceeds the limit"),
    "bad date": (["--bbox", "11.97", "45.29", "12.0", "45.3", "--date", "26/06/2024"],
                 "expected an ISO date"),
    "no date": (["--bbox", "11.97", "45.29", "12.0", "45.3"], "--date is required"),
    "no imagery": (["--bbox", "11.97", "45.29", "12.0", "45.3", "--date", "2023-01-10"],
                   "no acquisition within ±60 days"),
    "no aoi": (["--date", "2024-06-26"], "no area of interest"),
    "bad precision": (["--bbox", "11.97", "45.29", "12.0", "45.3", "--date", "2024-06-26",
                       "--precision", "fp8"], "--precision"),
    "bad overlap": (["--bbox", "11.97", "45.29", "12.0", "45.3", "--date", "2024-06-26",
                     "--overlap", "1.5"], "--overlap"),
    "bad block size": (["--bbox", "11.97", "45.29", "12.0", "45.3", "--date", "2024-06-26",
                        "--block-windows", "0"], "--block-windows"),
    "bad read-ahead": (["--bbox", "11.97", "45.29", "12.0", "45.3", "--date", "2024-06-26",
                        "--read-ahead", "-1"], "--read-ahead"),
    "aoi file missing": (["--aoi", "/nonexistent/aoi.geojson", "--date", "2024-06-26"],
                         "AOI file not found"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_and_writes_nothing(case, flood_model, small_world, tmp_path):
    args, expected = BAD[case]
    out = tmp_path / "out"
    res = _cli(flood_model, small_world, out, *args)
    assert res.exit_code == 2, res.output
    assert expected in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists() or not any(out.iterdir())


def test_no_imagery_names_the_nearest_acquisitions(flood_model, small_world, tmp_path):
    start = dt.date.fromisoformat(small_world["start"])
    req = PredictRequest(model=flood_model, aois=[bbox_aoi(small_world["bbox"])],
                         date=start - dt.timedelta(days=20), out_dir=tmp_path,
                         catalog=small_world["catalog"], tolerance=2)
    with pytest.raises(NoImageryError, match="nearest acquisitions: 2024-05"):
        predict(req)


def test_model_and_catalogue_sources_must_match(flood_model, small_world, tmp_path):
    cat = json.loads(Path(small_world["catalog"]).read_text())
    for f in cat["features"]:
        f["collection"] = "sentinel-2-l2a"
        for a in f["assets"].values():
            a["href"] = str(Path(small_world["catalog"]).parent / a["href"])
    other = tmp_path / "s2.json"
    other.write_text(json.dumps(cat))
    req = PredictRequest(model=flood_model, aois=[bbox_aoi(small_world["bbox"])],
                         date=after_flood(small_world), out_dir=tmp_path / "o",
                         catalog=str(other))
    with pytest.raises(SpecMismatchError, match="model expects source 'hls'"):
        predict(req)


def test_unwritable_output_is_a_clear_error(flood_model, small_world, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    req = PredictRequest(model=flood_model, aois=[bbox_aoi(small_world["bbox"])],
                         date=after_flood(small_world), out_dir=blocker / "sub",
                         catalog=small_world["catalog"])
    with pytest.raises(OutputError, match="not writable"):
        predict(req)
    assert isinstance(OutputError("x"), BadInputError)


def test_cancel_stops_and_leaves_no_products(flood_model, small_world, tmp_path):
    cancel = threading.Event()
    seen = []

    def progress(stage, frac):
        seen.append(stage)
        cancel.set()

    req = PredictRequest(model=flood_model, aois=[bbox_aoi(small_world["bbox"])],
                         date=after_flood(small_world), out_dir=tmp_path, batch_size=2,
                         catalog=small_world["catalog"])
    with pytest.raises(Cancelled):
        predict(req, progress, cancel)
    assert seen and not list(tmp_path.glob("*.tif")) and not list(tmp_path.glob(".tmp-*"))


def test_bf16_precision_runs_and_stays_close(flood_model, small_world, tmp_path):
    b = small_world["bbox"]
    aoi = bbox_aoi([b[0], b[1], b[0] + (b[2] - b[0]) / 3, b[3]])
    runs = {}
    for precision in ("fp32", "bf16"):
        req = PredictRequest(model=flood_model, aois=[aoi], date=after_flood(small_world),
                             out_dir=tmp_path / precision, catalog=small_world["catalog"],
                             precision=precision)
        res = predict(req)
        assert json.loads(res.sidecar.read_text())["parameters"]["precision"] == precision
        with rasterio.open(res.classes[0]) as src:
            runs[precision] = src.read(1)
    assert (runs["fp32"] == runs["bf16"]).mean() > 0.97


@pytest.mark.parametrize("block, ahead", [(1, 0), (7, 2)])
def test_shared_block_reads_give_the_same_product(product, flood_model, small_world, tmp_path,
                                                  block, ahead):
    """Windows read one by one (block 1, the plain chip path) or in odd-sized blocks by a
    read-ahead thread give exactly the product of the default blocks (which also wrote the
    true colour, asked for here only by default: not at all)."""
    req = PredictRequest(model=flood_model, aois=[bbox_aoi(small_world["bbox"])],
                         date=after_flood(small_world), out_dir=tmp_path,
                         catalog=small_world["catalog"], overlap=0.5,
                         write_probabilities=True, block_windows=block, read_ahead=ahead)
    res = predict(req)
    side = json.loads(res.sidecar.read_text())
    assert side["parameters"]["block_windows"] == block
    assert side["parameters"]["read_ahead"] == ahead
    assert res.truecolor == [] and side["products"]["truecolor"] == []
    assert side["skipped_windows"] == json.loads(product.sidecar.read_text())["skipped_windows"]
    for a, b in zip(sorted(res.classes + res.probabilities),
                    sorted(product.classes + product.probabilities), strict=True):
        with rasterio.open(a) as x, rasterio.open(b) as y:
            np.testing.assert_array_equal(x.read(), y.read())


@pytest.mark.slow
def test_dask_workers_assemble_the_same_product(product, flood_model, small_world, tmp_path):
    req = PredictRequest(model=flood_model, aois=[bbox_aoi(small_world["bbox"])],
                         date=after_flood(small_world), out_dir=tmp_path,
                         catalog=small_world["catalog"], overlap=0.5, workers=2)
    res = predict(req)
    for a, b in zip(sorted(res.classes), sorted(product.classes), strict=True):
        with rasterio.open(a) as x, rasterio.open(b) as y:
            np.testing.assert_array_equal(x.read(1), y.read(1))
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_precision_calibration_is_recorded_and_read_by_auto(flood_model, flood_dataset,
                                                            tmp_path, monkeypatch):
    from terrastill.inference import precision
    from terrastill.inference.precision import calibrate_precision
    from terrastill.inference.predict import use_bf16
    from terrastill.models.modelfile import read_card

    model = tmp_path / "m.pt"
    shutil.copyfile(flood_model, model)
    verdict = calibrate_precision(model, flood_dataset)
    card = read_card(model)
    assert card.precision == verdict and verdict["metric"] == "miou"
    assert verdict["bf16_ok"] == (abs(verdict["bf16_delta_pp"]) <= 0.5)
    monkeypatch.setattr(precision, "bf16_faster", lambda *a, **k: True)
    model_obj = object()
    assert use_bf16("auto", card, "cpu", model_obj) == verdict["bf16_ok"]
    assert use_bf16("auto", card) is False  # no model to time: stay exact
    card.precision = {**verdict, "bf16_ok": False}
    assert use_bf16("auto", card, "cpu", model_obj) is False and use_bf16("bf16", card) is True


def test_auto_precision_times_each_model_once_per_machine(flood_model, tmp_path, monkeypatch):
    """bf16 is chosen only where it measured faster here; the timing is cached per model and
    machine, so the second call does not time again."""
    from terrastill.inference import precision
    from terrastill.models.modelfile import load_model_file

    monkeypatch.setenv("TERRASTILL_CACHE_DIR", str(tmp_path / "cache"))
    loaded = load_model_file(flood_model)
    speed = precision.measure_speed(loaded.model, "cpu", batch_size=2, seconds=0.05)
    assert speed["fp32"] > 0 and speed["bf16"] > 0
    calls = []

    def fake(model, device="cpu", **kw):
        calls.append(device)
        return {"fp32": 10.0, "bf16": 10.2}  # within the margin: not worth it

    monkeypatch.setattr(precision, "measure_speed", fake)
    assert precision.bf16_faster(loaded.model, loaded.card) is False
    assert precision.bf16_faster(loaded.model, loaded.card) is False and len(calls) == 1
    cached = json.loads(precision.cache_path().read_text())
    assert next(iter(cached.values())) == {"fp32": 10.0, "bf16": 10.2, "faster": False,
                                        "model": loaded.card.name}
    other = loaded.card.__class__(**{**vars(loaded.card), "name": "another"})
    monkeypatch.setattr(precision, "measure_speed", lambda *a, **k: {"fp32": 10.0,
                                                                     "bf16": 20.0})
    assert precision.bf16_faster(loaded.model, other) is True  # another model: timed anew
    assert len(json.loads(precision.cache_path().read_text())) == 2


def test_predict_over_a_named_band_geotiff(flood_model, flood_dataset, tmp_path):
    """A chip file is a GeoTIFF with t0:blue... descriptions: --image on it must give the same
    classes as --chips (one window, same tensors)."""
    chip = sorted((flood_dataset / "chips").glob("*.tif"))[0]
    res = runner.invoke(app, ["predict", str(flood_model), "--image", str(chip), "--out",
                              str(tmp_path / "img"), "--name", "scene", "--truecolor"])
    assert res.exit_code == 0, res.output
    with rasterio.open(chip) as src, \
            rasterio.open(tmp_path / "img" / f"scene_{_epsg(chip)}_truecolor.tif") as tc:
        last = max(int(d.split(":")[0][1:]) for d in src.descriptions)
        red = src.read(src.descriptions.index(f"t{last}:red") + 1)
        shown = tc.read(1)
        assert tc.descriptions[0] == "red" and np.isfinite(shown).any()
        # the true colour is the last step's reflectance wherever the window was valid
        np.testing.assert_allclose(shown[np.isfinite(shown)], red[np.isfinite(shown)],
                                   rtol=1e-5)
    ref = runner.invoke(app, ["predict", str(flood_model), "--chips", str(flood_dataset),
                              "--out", str(tmp_path / "chips")])
    assert ref.exit_code == 0, ref.output
    with rasterio.open(tmp_path / "img" / f"scene_{_epsg(chip)}_classes.tif") as a, \
            rasterio.open(tmp_path / "chips" / chip.name) as b:
        assert a.transform == b.transform
        np.testing.assert_array_equal(a.read(1), b.read(1))
    with rasterio.open(chip) as src:
        names = ",".join(f"t{i // 6}:b{i}" for i in range(src.count))
    bad = runner.invoke(app, ["predict", str(flood_model), "--image", str(chip), "--out",
                              str(tmp_path / "bad"), "--image-bands", names])
    assert bad.exit_code == 2 and "no band named 't0:blue'" in bad.output


def _epsg(path: Path) -> int:
    with rasterio.open(path) as src:
        return src.crs.to_epsg()


def test_temporal_location_models_get_their_encodings(flood_dataset, small_world, tmp_path):
    """A Prithvi-EO-2.0-TL-style model is called with (year, day) per step and (lat, lon)."""
    from terrastill.inference.predict import _load
    from terrastill.training.train import TrainOptions, fit

    enc = {"depth": 2, "embed_dim": 48, "num_heads": 2, "coords_encoding": ["time", "location"]}
    model = fit(flood_dataset, tmp_path / "tl", TrainOptions(
        model="tiny", epochs=1, progress=False, encoder_overrides=enc, head={"channels": 32}))
    seen = []
    loaded = _load(str(model.resolve()), "cpu")
    hook = loaded.model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw), with_kwargs=True)
    try:
        b = small_world["bbox"]
        req = PredictRequest(model=model, aois=[bbox_aoi([b[0], b[1], b[0] + 0.01, b[3]])],
                             date=after_flood(small_world), out_dir=tmp_path / "p",
                             catalog=small_world["catalog"], device="cpu")
        assert predict(req).classes
        res = runner.invoke(app, ["predict", str(model), "--chips", str(flood_dataset),
                                  "--out", str(tmp_path / "c"), "--device", "cpu"])
        assert res.exit_code == 0, res.output
    finally:
        hook.remove()
    assert seen and all("temporal_coords" in kw and "location_coords" in kw for kw in seen)
    tc, lc = seen[0]["temporal_coords"], seen[0]["location_coords"]
    assert tc.shape[1:] == (2, 2) and float(tc[0, -1, 0]) == 2024.0
    assert 45 < float(lc[0, 0]) < 46 and 11 < float(lc[0, 1]) < 13


def test_killed_prediction_reruns_to_identical_products(flood_model, small_world, tmp_path):
    """SIGKILL during a multi-window prediction: no product appears half-written, and the
    re-run writes the same bytes as an uninterrupted run (temporary files are cleaned)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["predict", str(flood_model), "--bbox", *map(str, small_world["bbox"]), "--date",
            after_flood(small_world).isoformat(), "--catalog", small_world["catalog"],
            "--batch-size", "1", "--precision", "fp32"]
    ref = runner.invoke(app, [*args, "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "terrastill.cli", *args, "--out", str(out)],
                            env={**os.environ, "TERRASTILL_PROGRESS": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".tmp-*")):
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("prediction_*_classes.tif")), "killed too late"
    again = runner.invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert not list(out.glob(".tmp-*"))
    for cog in sorted((tmp_path / "ref").glob("*.tif")):
        assert (out / cog.name).read_bytes() == cog.read_bytes(), cog.name
