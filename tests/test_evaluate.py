"""evaluate: bootstrap intervals over chips, and scoring against a dense reference raster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.errors import BadInputError
from terrastill.training.bootstrap import (
    confusion_intervals,
    per_chip_confusion,
    per_chip_regression,
    regression_intervals,
)

runner = CliRunner()


def test_per_chip_confusion_counts_each_sample_apart():
    logits = torch.zeros(2, 2, 1, 3)
    logits[0, 1] = 1.0  # sample 0 predicts class 1 everywhere, sample 1 class 0
    target = torch.tensor([[[1, 0, -1]], [[0, 0, 1]]])
    conf = per_chip_confusion(logits, target, 2)
    np.testing.assert_array_equal(conf[0], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(conf[1], [[2, 0], [1, 0]])


def test_intervals_contain_the_estimate_and_shrink_with_more_chips():
    rng = np.random.default_rng(1)

    def chips(n):
        out = np.zeros((n, 2, 2))
        for c in out:
            tp0, tp1 = rng.integers(20, 40), rng.integers(5, 30)
            c[:] = [[tp0, rng.integers(0, 10)], [rng.integers(0, 10), tp1]]
        return out

    few, many = chips(8), chips(200)
    ci_few = confusion_intervals(few, ["land", "water"], seed=0)
    ci_many = confusion_intervals(many, ["land", "water"], seed=0)
    conf = many.sum(0)
    tp = np.diag(conf)
    miou = np.mean(tp / (conf.sum(0) + conf.sum(1) - tp))
    lo, hi = ci_many["miou"]
    assert lo < miou < hi
    assert (hi - lo) < (ci_few["miou"][1] - ci_few["miou"][0])
    assert ci_many["chips"] == 200 and ci_many["unit"] == "chip"
    assert set(ci_many["iou_per_class"]) == {"land", "water"}
    # identical chips: every resample is the same matrix, the interval has no width
    same = confusion_intervals(np.repeat(few[:1], 10, axis=0), ["land", "water"])
    assert same["miou"][0] == pytest.approx(same["miou"][1])
    # ... unless the score is perfect: then the rule of three keeps the evidence honest
    perfect = confusion_intervals(np.array([[[20, 0], [0, 10]]] * 3), ["land", "water"])
    assert perfect["miou"] == [pytest.approx(1 - 3 / 30), 1.0]
    assert perfect["accuracy"] == [pytest.approx(1 - 3 / 90), 1.0]


def test_regression_intervals():
    t = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 4.0, 5.0]])
    p = t.nan_to_num(0.0) + 0.5
    sums = per_chip_regression(p, t)
    np.testing.assert_allclose(sums[:, 0], [2, 3])
    np.testing.assert_allclose(sums[:, 1], [0.5, 0.75])
    ci = regression_intervals(np.repeat(sums, 20, axis=0))
    assert ci["rmse"][0] == pytest.approx(0.5, abs=1e-6)
    assert ci["rmse"][1] == pytest.approx(0.5, abs=1e-6)


def test_event_truth_holds_by_the_chips_last_image_not_its_date(tmp_path):
    import datetime as dt
    from types import SimpleNamespace

    import pandas as pd
    from rasterio.transform import from_origin

    from terrastill.training.reference import Reference, apply_reference, last_image_dates

    day = dt.date.fromisoformat
    index = pd.DataFrame({
        "id": ["before", "after", "late", "nosteps"],
        "date": ["2024-06-21", "2024-06-21", "2024-06-10", "2024-06-25"],
        "step_dates": [["2024-06-04", "2024-06-18"], ["2024-06-18", "2024-06-20"],
                       ["2024-06-01", "2024-06-30"], []],
        "epsg": 32632, "transform": [[10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0]] * 4,
        "width": 4, "height": 4})
    assert last_image_dates(index) == [day("2024-06-18"), day("2024-06-20"), day("2024-06-30"),
                                       day("2024-06-25")]
    truth = tmp_path / "truth.tif"
    with rasterio.open(truth, "w", driver="GTiff", width=8, height=8, count=1, dtype="int16",
                       crs="EPSG:32632", transform=from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(np.ones((1, 8, 8), np.int16))

    # the attributes of a ChipDataset that apply_reference uses
    ds = SimpleNamespace(task="segmentation", split="test", index=index, ids=[], transform=None)
    flood = Reference({32632: truth}, day("2024-06-20"), day("2024-07-01"))
    # "before" is dated after the flood began but its last image (Jun 18) shows none of it
    assert apply_reference(ds, flood) == 1
    assert ds.ids == ["after", "late", "nosteps"]
    ds.index = index[index["id"] == "before"]
    with pytest.raises(BadInputError, match="last image"):
        apply_reference(ds, flood)


@pytest.mark.slow
def test_evaluate_reports_intervals_and_scores_against_the_world(flood_model, flood_dataset,
                                                                 small_world, tmp_path):
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["evaluate", str(flood_model), str(flood_dataset), "--split", "all",
                              "--out", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    sparse = json.loads(out.read_text())
    lo, hi = sparse["intervals"]["miou"]
    assert lo <= sparse["miou"] <= hi and sparse["labels"] == "chip labels"
    assert "95 % interval" in res.output and "labelled pixels" in res.output

    out_ref = tmp_path / "ref.json"
    res = runner.invoke(app, ["evaluate", str(flood_model), str(flood_dataset), "--split", "all",
                              "--reference", small_world["root"], "--out", str(out_ref)],
                        terminal_width=200)
    assert res.exit_code == 0, res.output
    dense = json.loads(out_ref.read_text())
    ref = dense["reference"]
    assert dense["labels"] == "reference" and len(ref["rasters"]) == 2  # two UTM zones
    # the flood truth holds from the flood on: chips whose last image predates it are left out
    assert ref["valid_from"] == small_world["flood_date"] and ref["chips_left_out"] > 0
    import geopandas as gpd

    index = gpd.read_parquet(flood_dataset / "index.parquet")
    last = [max(str(d) for d in steps) for steps in index["step_dates"]]
    assert ref["chips_left_out"] == sum(d < str(small_world["flood_date"]) for d in last)
    assert dense["n_chips"] + ref["chips_left_out"] == sparse["n_chips"]
    # every valid pixel of every chip is scored, not the few labelled ones
    assert dense["n_pixels"] > 5 * sparse["n_pixels"]
    assert dense["intervals"]["chips"] == dense["n_chips"]
    assert 0 <= dense["intervals"]["miou"][0] <= dense["miou"] <= dense["intervals"]["miou"][1]

    # the same through a truth raster named directly: identical figures for that zone's chips
    truth = {int(k): Path(v) for k, v in ref["rasters"].items()}
    zone = sorted(truth)[0]
    res = runner.invoke(app, ["evaluate", str(flood_model), str(flood_dataset), "--split", "all",
                              "--reference", str(truth[zone])], terminal_width=200)
    assert res.exit_code == 2 and f"EPSG:{sorted(truth)[1]}" in res.output  # other zone named
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_evaluate_refuses_a_reference_on_another_grid(flood_model, flood_dataset, small_world,
                                                      tmp_path):
    truth = sorted(Path(p) for p in small_world["tasks"]["flood"]["truth"].values())
    with rasterio.open(truth[0]) as src:
        profile, data = src.profile, src.read(1)
    coarse = tmp_path / "coarse.tif"
    profile.update(transform=profile["transform"] @ rasterio.Affine.scale(2),
                   width=data.shape[1] // 2, height=data.shape[0] // 2)
    with rasterio.open(coarse, "w", **profile) as dst:
        dst.write(data[::2, ::2], 1)
    res = runner.invoke(app, ["evaluate", str(flood_model), str(flood_dataset), "--split", "all",
                              "--reference", str(coarse), "--reference", str(truth[1])])
    assert res.exit_code == 2 and "expected the same grid" in res.output
    shifted = tmp_path / "shifted.tif"
    with rasterio.open(truth[0]) as src:
        profile = src.profile
    t = profile["transform"]
    profile.update(transform=rasterio.Affine(t.a, t.b, t.c + t.a / 2, t.d, t.e, t.f))
    with rasterio.open(shifted, "w", **profile) as dst:
        dst.write(data, 1)
    res = runner.invoke(app, ["evaluate", str(flood_model), str(flood_dataset), "--split", "all",
                              "--reference", str(shifted), "--reference", str(truth[1])])
    assert res.exit_code == 2 and "offset" in res.output
    res = runner.invoke(app, ["evaluate", str(flood_model), str(flood_dataset),
                              "--reference", str(tmp_path / "missing.tif")])
    assert res.exit_code == 2 and "missing.tif" in res.output
