"""Losses, metrics (hand-computed), fit / evaluate / resume / determinism on a synthetic folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from chipfolder import write_chip_folder
from terrastill.cli import app
from terrastill.errors import SpecMismatchError
from terrastill.models.modelfile import load_model_file, read_card
from terrastill.training.losses import DiceLoss, build_loss
from terrastill.training.metrics import (
    ClassMetrics,
    RegressionMetrics,
    auc_from_histograms,
    majority_baseline,
    scores_from_confusion,
)
from terrastill.training.module import param_groups
from terrastill.training.train import TrainOptions, evaluate, fit

# a 2-block tiny model keeps every fit here to a few seconds on 2 cores
FAST = {"encoder_overrides": {"depth": 2, "embed_dim": 48, "num_heads": 2},
        "head": {"channels": 32}, "progress": False}


# --- metrics --------------------------------------------------------------------------------

def test_segmentation_metrics_hand_computed():
    # truth / prediction over 8 pixels, two ignored (-1)
    target = torch.tensor([0, 0, 0, 1, 1, 2, -1, -1])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    logits = torch.nn.functional.one_hot(pred, 3).float() * 5
    m = ClassMetrics(3, ["a", "b", "c"])
    m.update(logits.T.reshape(1, 3, 2, 4), target.reshape(1, 2, 4))
    r = m.compute()
    # confusion rows = truth: a: [2,1,0], b: [0,1,1], c: [0,0,1]
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["iou_per_class"] == pytest.approx({"a": 2 / 3, "b": 1 / 3, "c": 1 / 2})
    assert r["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert r["accuracy"] == pytest.approx(4 / 6)
    f1 = [2 * 2 / (4 + 1), 2 * 1 / (2 + 2), 2 * 1 / (2 + 1)]
    assert r["macro_f1"] == pytest.approx(np.mean(f1))
    assert r["n_pixels"] == 6
    assert majority_baseline(np.array(r["confusion"]))["miou"] == pytest.approx((3 / 6) / 3)


def test_absent_class_is_not_averaged():
    r = scores_from_confusion(np.array([[3, 0, 0], [1, 2, 0], [0, 0, 0]]))
    assert r["iou_per_class"]["2"] is None
    assert r["miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_roc_auc():
    # binary: scores perfectly separate -> 1; hand case with one swapped pair
    m = ClassMetrics(2)
    p1 = torch.tensor([0.1, 0.2, 0.3, 0.8, 0.9, 0.95])
    logits = torch.stack([torch.zeros(6), torch.log(p1 / (1 - p1))], dim=1)
    m.update(logits, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert m.compute()["roc_auc"] == pytest.approx(1.0)
    m.reset()
    m.update(logits, torch.tensor([0, 0, 1, 0, 1, 1]))  # 8 of 9 pairs ordered right
    assert m.compute()["roc_auc"] == pytest.approx(8 / 9, abs=1e-3)
    assert auc_from_histograms(np.array([1, 0]), np.array([0, 1])) == 0.0
    assert math.isnan(auc_from_histograms(np.array([0, 0]), np.array([1, 1])))


def test_regression_metrics():
    m = RegressionMetrics()
    target = torch.tensor([[1.0, 2.0], [3.0, float("nan")]])
    m.update(torch.tensor([[1.0, 2.0], [5.0, 100.0]]), target)
    r = m.compute()
    assert r["n_pixels"] == 3
    assert r["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert r["mae"] == pytest.approx(2 / 3)
    assert r["r2"] == pytest.approx(1 - 4 / 2)


def test_losses():
    target = torch.full((1, 4, 4), -1)
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = build_loss("segmentation", "ce")(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    target = torch.randint(0, 2, (1, 4, 4))
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert DiceLoss()(perfect, target).item() < 1e-3
    for name in ("ce", "dice", "focal", "ce+dice"):
        assert build_loss("segmentation", name, [1.0, 2.0])(logits, target).item() > 0
    reg = build_loss("regression", "huber")
    assert reg(torch.zeros(1, 1, 2), torch.tensor([[1.0, float("nan")]])).item() == 0.5


def test_layer_decay_groups():
    from terrastill.models.registry import build_model, make_arch

    model = build_model(make_arch("tiny", encoder_overrides={"depth": 3}))
    groups = param_groups(model, 1.0, 0.05, 0.5)
    by_name = {}
    for g in groups:
        for p in g["params"]:
            by_name[id(p)] = g
    assert by_name[id(model.encoder.patch_embed.proj.weight)]["lr"] == pytest.approx(0.5**4)
    assert by_name[id(model.encoder.blocks[2].mlp.fc1.weight)]["lr"] == pytest.approx(0.5)
    assert by_name[id(model.head.out.weight)]["lr"] == 1.0
    assert by_name[id(model.encoder.norm.weight)]["weight_decay"] == 0.0


# --- fit / evaluate -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    return write_chip_folder(tmp_path_factory.mktemp("chips") / "flood", n_chips=20, size=16,
                             num_steps=2, seed=1)


@pytest.fixture(scope="module")
def trained(chips, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    path = fit(chips, out, TrainOptions(epochs=4, seed=0, lr=2e-3, **FAST))
    return path


def test_fit_learns_and_writes_outputs(trained):
    out = trained.parent
    for name in ("model.pt", "metrics.json", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3, 4]
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    test = m["test"]
    assert test["miou"] > test["baseline_majority"]["miou"] + 0.3, test
    assert test["roc_auc"] > 0.9
    card = read_card(trained)
    assert card.task == "segmentation" and card.class_names == ["land", "water"]
    assert card.input_spec["bands"][3] == "nir_narrow" and card.input_spec["num_steps"] == 2
    assert card.input_spec["chip_size"] == 16 and len(card.input_spec["mean"]) == 6
    assert card.params > card.encoder_params > 0 and card.macs > card.encoder_macs > 0
    assert card.depth == 2 and card.teacher is None
    assert card.metrics["test"]["miou"] == pytest.approx(test["miou"])
    assert card.created_with["terrastill"]


def test_evaluate_matches_fit_and_cli(trained, chips, tmp_path):
    r = evaluate(trained, chips, "test")
    m = json.loads((trained.parent / "metrics.json").read_text())
    assert r["miou"] == pytest.approx(m["test"]["miou"])
    res = CliRunner().invoke(app, ["evaluate", str(trained), str(chips), "--split", "val",
                                   "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["split"] == "val"


def test_evaluate_refuses_spec_mismatch(trained, tmp_path):
    other = write_chip_folder(tmp_path / "other", n_chips=4, size=16, num_steps=3)
    with pytest.raises(SpecMismatchError, match="num_steps 3"):
        evaluate(trained, other)
    res = CliRunner().invoke(app, ["evaluate", str(trained), str(other)])
    assert res.exit_code == 2
    assert "does not match the model's input spec" in res.output
    assert len(res.output.strip().splitlines()) == 1
    bands = write_chip_folder(tmp_path / "bands", n_chips=4, size=16, num_steps=2,
                              bands=["red", "green", "blue", "nir_narrow", "swir1", "swir2"])
    with pytest.raises(SpecMismatchError, match="bands"):
        evaluate(trained, bands)


def test_determinism_and_resume(chips, tmp_path):
    opts = {"epochs": 1, "seed": 3, **FAST}
    a = load_model_file(fit(chips, tmp_path / "a", TrainOptions(**opts))).model.state_dict()
    b = load_model_file(fit(chips, tmp_path / "b", TrainOptions(**opts))).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # resume a to 2 epochs: one more epoch, history continued
    fit(chips, tmp_path / "a", TrainOptions(**{**opts, "epochs": 2, "resume": True}))
    hist = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    last = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1  # 0-based: the second epoch, whatever the best one was
    c = load_model_file(tmp_path / "a" / "model.pt").model.state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_fit_other_tasks(task, tmp_path):
    root = write_chip_folder(tmp_path / task, n_chips=8, size=16, num_steps=2, task=task)
    path = fit(root, tmp_path / "out", TrainOptions(epochs=1, **FAST))
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    key = "rmse" if task == "regression" else "miou"
    assert m["val"][key] is not None
    card = read_card(path)
    assert card.task == task
    r = evaluate(path, root, "test")
    assert key in r


def test_fit_with_pretrained_weights_and_freeze(chips, tmp_path):
    from test_models import official_checkpoint

    enc = {"embed_dim": 48, "depth": 2, "num_heads": 2, "patch_size": [1, 4, 4],
           "num_frames": 3, "img_size": 32, "in_chans": 6, "mlp_ratio": 2.0}
    src, ckpt = official_checkpoint(enc)
    torch.save(ckpt, tmp_path / "w.pt")
    path = fit(chips, tmp_path / "out", TrainOptions(
        epochs=1, weights=str(tmp_path / "w.pt"), freeze_encoder=True, **FAST))
    model = load_model_file(path).model
    # frozen: the encoder blocks are still the pretrained ones
    torch.testing.assert_close(model.encoder.blocks[1].attn.qkv.weight,
                               src.blocks[1].attn.qkv.weight)
    card = read_card(path)
    assert card.training["pretrained"]["interpolated_pos_embed"] == [[3, 8, 8], [2, 4, 4]]


def test_ndwi_rule_baseline(chips):
    from terrastill.training.train import rule_baseline

    r = rule_baseline(chips, "test")
    assert r["miou"] > 0.9  # the synthetic water is spectrally obvious
    assert "green" in r["rule"]


def test_fit_with_temporal_location_encoding(chips, tmp_path):
    enc = {**FAST["encoder_overrides"], "coords_encoding": ["time", "location"],
           "coords_scale_learn": True}
    path = fit(chips, tmp_path / "tl", TrainOptions(**{**FAST, "epochs": 1,
                                                       "encoder_overrides": enc}))
    model = load_model_file(path).model
    assert model.encoder.temporal_encoding and model.encoder.location_encoding
    assert "encoder.temporal_embed_enc.scale" in model.state_dict()
    assert evaluate(path, chips, "test")["n_chips"] > 0


def test_train_cli_encoder_lr_scale_reaches_the_model_card(chips, tmp_path):
    out = tmp_path / "m"
    res = CliRunner().invoke(app, ["train", str(chips), "--model", "tiny", "--epochs", "1",
                                   "--batch-size", "8", "--encoder-lr-scale", "0.1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert read_card(out / "model.pt").training["options"]["encoder_lr_scale"] == 0.1
    bad = CliRunner().invoke(app, ["train", str(chips), "--encoder-lr-scale", "-1",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()
