"""Receptive-field and distance-stratified recall diagnostics, and the ``diagnose`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.diagnostics.erf import diameters, effective_receptive_field, radial_cdf
from terrastill.diagnostics.recall import chip_distances, hidden_mask, stratify

runner = CliRunner()


def test_radial_mass_and_diameters():
    g = np.zeros((2, 21, 21))
    g[0, 10, 10] = 1.0  # all mass on the output pixel
    yy, xx = np.mgrid[0:21, 0:21]
    g[1][np.abs(np.hypot(yy - 10, xx - 10) - 5) < 0.5] = 1.0  # a ring of radius 5
    radii = np.arange(0, 15, 0.5)
    cdf = radial_cdf(g, np.array([10, 10]), np.array([10, 10]), radii)
    assert cdf[0, 0] == 1.0
    d = diameters(cdf[1], radii)
    assert 9.0 <= d["d50"] <= 11.0 and d["d99"] <= 11.0
    assert diameters(cdf[0], radii)["d99"] == 0.0


class _Conv(torch.nn.Module):
    """A 3 × 3 convolution over (B, C, T, H, W): its receptive field is known."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        b, c, t, h, w = x.shape
        return self.conv(x.reshape(b, c * t, h, w))


def test_erf_of_a_3x3_convolution_stays_within_one_pixel():
    batches = [{"image": torch.randn(3, 2, 2, 12, 12),
                "valid": torch.ones(3, 12, 12, dtype=torch.bool)}]
    res = effective_receptive_field(_Conv(), batches, 2, pixels_per_chip=3, device="cpu")
    assert res["chips"] == 3
    for c in res["classes"]:
        assert c["samples"] == 9
        assert c["d99"] <= 3.0  # the 3 × 3 neighbourhood (radius √2, on a 0.5 px grid)
        assert c["d50"] <= c["d90"] <= c["d99"]


def test_distance_stratified_recall():
    label = np.zeros((1, 10), dtype=int)
    label[0, 5:] = 1
    img = np.ones((2, 3, 1, 10), dtype=np.float32)
    img[-1, :, 0, 6:] = np.nan  # class 1 hidden from column 6 on, visible at column 5
    hidden = hidden_mask(img)
    assert hidden.tolist() == [[False] * 6 + [True] * 4]
    cls, dist, where = chip_distances(label, hidden, 2)
    assert cls.tolist() == [1, 1, 1, 1] and dist.tolist() == [1, 2, 3, 4]
    pred = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    ok = pred[where] == cls
    s = stratify(cls, dist, ok, ["land", "water"], 10.0)
    water = s["classes"][1]
    assert water["hidden_pixels"] == 4 and water["recall"] == 0.5
    assert water["distance_weighted_recall"] == pytest.approx((1 + 2) / (1 + 2 + 3 + 4))
    assert [(b["from_px"], b["pixels"], b["recall"]) for b in water["bins"]] == [
        (1.0, 1, 1.0), (2.0, 2, 0.5), (4.0, 1, 0.0)]
    assert s["classes"][0]["hidden_pixels"] == 0


def _ambiguous_chips(n: int = 6, size: int = 12, seed: int = 0):
    """Chips of land (left) and water (right) whose water has a known 3 × 3 block that looks
    like land (turbid water): the ambiguous pixels. Column 0 of the target step is masked."""
    rng = np.random.default_rng(seed)
    land, water = np.array([0.20, 0.25, 0.30]), np.array([0.05, 0.04, 0.02])
    chips, blocks = [], []
    for _ in range(n):
        label = np.zeros((size, size), dtype=np.int64)
        label[:, size // 2:] = 1
        spec = np.where(label[None] == 1, water[:, None, None], land[:, None, None])
        r, c = int(rng.integers(0, size - 3)), int(rng.integers(size // 2 + 2, size - 3))
        block = np.zeros((size, size), dtype=bool)
        block[r:r + 3, c:c + 3] = True
        spec = np.where(block[None], land[:, None, None], spec)
        bands = (spec + rng.normal(0, 0.005, spec.shape)).astype(np.float32)
        hidden = np.zeros((size, size), dtype=bool)
        hidden[:, 0] = True
        bands[:, hidden] = np.nan
        pred = label.copy()
        pred[block] = 0  # the model follows the spectrum there
        chips.append((bands, label, hidden, pred))
        blocks.append(block)
    return chips, blocks


def test_ambiguous_pixels_are_the_ones_the_spectrum_cannot_tell():
    from terrastill.diagnostics.ambiguity import cross_fitted_probability

    chips, blocks = _ambiguous_chips()
    feats, labs, groups, truth = [], [], [], []
    for g, ((bands, label, hidden, _), block) in enumerate(zip(chips, blocks, strict=True)):
        vis = ~hidden
        feats.append(bands[:, vis].T)
        labs.append(label[vis])
        groups.append(np.full(int(vis.sum()), g))
        truth.append(block[vis])
    a = cross_fitted_probability(np.concatenate(feats), np.concatenate(labs),
                                 np.concatenate(groups), 2, threshold=0.5)
    assert a.grouping == "chip" and a.folds == 5
    assert np.array_equal(a.ambiguous, np.concatenate(truth))
    assert np.isfinite(a.prob).all() and 0.9 < a.accuracy < 1.0
    assert a.ambiguous.sum() == 6 * 9


def test_recall_of_masked_and_of_ambiguous_pixels_is_reported_separately():
    from terrastill.diagnostics.run import _recalls

    chips, _ = _ambiguous_chips()
    masked, amb, info = _recalls(chips, ["land", "water"], 10.0, 0.5, 0)
    assert info["ambiguous_pixels"] == {"land": 0, "water": 6 * 9}
    assert info["grouping"] == "chip" and info["threshold"] == 0.5
    assert info["own_class_probability_quantiles"]["0.001"] < 0.5 < info[
        "own_class_probability_quantiles"]["0.5"]
    # masked: column 0 (land) next to visible land, all predicted right
    land = masked["classes"][0]
    assert land["hidden_pixels"] == 6 * 12 and land["recall"] == 1.0
    assert masked["classes"][1]["hidden_pixels"] == 0
    # ambiguous: the water blocks, predicted land (recall 0), 1-2 px from clear water
    water = amb["classes"][1]
    assert water["hidden_pixels"] == 6 * 9 and water["recall"] == 0.0
    assert [b["from_px"] for b in water["bins"]] == [1.0, 2.0]
    assert sum(b["pixels"] for b in water["bins"]) == 6 * 9
    assert [b["pixels"] for b in water["bins"]] == [6 * 8, 6]  # the centre is 2 px in
    assert amb["classes"][0]["hidden_pixels"] == 0


def test_diagnose_rejects_a_threshold_outside_0_1(tmp_path):
    res = runner.invoke(app, ["diagnose", str(tmp_path / "m.pt"), str(tmp_path), "--out",
                              str(tmp_path / "d"), "--ambiguous-threshold", "1.5"])
    assert res.exit_code == 2 and "--ambiguous-threshold 1.5" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_diagnose_command(flood_model, flood_dataset, small_world, tmp_path):
    out = tmp_path / "diag"
    res = runner.invoke(app, ["diagnose", str(flood_model), str(flood_dataset),
                              "--out", str(out), "--chips-max", "60", "--pixels-per-chip", "1",
                              "--device", "cpu", "--reference", small_world["root"],
                              "--occlude", "8"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "diagnose.json").read_text())
    assert 0 < s["chips_used"] <= 60 and s["class_names"] == ["land", "water"]
    for c in s["erf"]["classes"]:
        assert c["samples"] > 0 and 0 <= c["d50"] <= c["d90"] <= c["d99"]
        assert c["d99"] <= 2 * np.hypot(16, 16)
    for name in ("erf.csv", "recall.csv", "erf.png", "recall.png"):
        assert (out / name).stat().st_size > 0
    hidden = sum(c["hidden_pixels"] for c in s["recall"]["classes"])
    assert hidden > 0, "the occluded squares hide labelled pixels"
    amb = s["ambiguity"]
    assert amb["grouping"] == "chip" and amb["scored_pixels"] > 0
    assert [c["hidden_pixels"] for c in s["recall_ambiguous"]["classes"]] == [
        amb["ambiguous_pixels"][n] for n in ("land", "water")]
    kinds = {line.split(",")[0] for line in (out / "recall.csv").read_text().splitlines()[1:]}
    assert "masked" in kinds


def test_diagnose_refuses_a_model_without_segmentation_head(flood_dataset, tmp_path):
    from terrastill.data.dataset import read_dataset_meta
    from terrastill.models.modelfile import ModelCard, save_model_file
    from terrastill.models.registry import build_model, make_arch

    meta = read_dataset_meta(flood_dataset)
    arch = make_arch("tiny", task="classification", num_classes=2, bands=meta["bands"],
                     num_steps=meta["num_steps"], chip_size=meta["chip_size"])
    model = build_model(arch)
    card = ModelCard(name="clf", task="classification", arch=model.arch,
                     input_spec={"bands": meta["bands"], "num_steps": meta["num_steps"],
                                 "chip_size": meta["chip_size"], "source": meta.get("source"),
                                 "mean": meta["stats"]["mean"], "std": meta["stats"]["std"]},
                     class_names=["land", "water"])
    path = save_model_file(tmp_path / "clf.pt", model, card)
    res = runner.invoke(app, ["diagnose", str(path), str(flood_dataset), "--out",
                              str(tmp_path / "d"), "--device", "cpu"])
    assert res.exit_code == 2 and "no segmentation head" in res.output


@pytest.mark.slow
def test_eval_diagnose_smoke(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "eval_diagnose.py"
    spec = importlib.util.spec_from_file_location("eval_diagnose", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "diagnose_summary.json").read_text())
    assert len(s["rows"]) == 3 and s["occlude_px"] == 8
    for r in s["rows"]:
        assert r["hidden_water_px"] > 0 and 0 <= r["hidden_water_recall"] <= 1
        assert 0 < r["erf_d50_water_m"] <= r["erf_d90_water_m"]
    assert (tmp_path / "diagnose_models.png").stat().st_size > 0
