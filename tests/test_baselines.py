"""CNN baselines (unet-r18, deeplabv3-r50): architecture, train/predict/bench, distillation."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.errors import BadInputError, SpecMismatchError
from terrastill.models.cnn import CNNModel
from terrastill.models.registry import build_model, list_models, make_arch
from terrastill.models.resnet import ResNet

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet_trunks_match_torchvisions_parameter_counts():
    # torchvision resnet18 / resnet50 (11,689,512 / 25,557,032) minus their fc layer
    assert _params(ResNet("resnet18", 3)) == 11_689_512 - 513_000
    assert _params(ResNet("resnet50", 3)) == 25_557_032 - 2_049_000


def test_resnet50_macs_match_the_published_figure():
    from terrastill.models.encoder import count_macs

    torch.set_num_threads(1)
    trunk = ResNet("resnet50", 3).eval()
    macs = count_macs(trunk, torch.zeros(1, 3, 224, 224))
    fc = 2048 * 1000
    assert macs + fc == pytest.approx(4.09e9, rel=0.01)  # torchvision: 4.09 GFLOPS (MACs)


@pytest.mark.parametrize("name", ["unet-r18", "deeplabv3-r50"])
@pytest.mark.parametrize("size", [32, 40])
def test_any_channels_steps_and_size(name, size):
    torch.manual_seed(0)
    bands = ["blue", "green", "red", "nir_narrow"]
    arch = make_arch(name, "segmentation", 3, bands=bands, num_steps=2, chip_size=size)
    m = build_model(arch)
    assert isinstance(m, CNNModel) and name in list_models()
    assert m.encoder.backbone.conv1.in_channels == 4 * 2  # T steps stacked on channels
    x = torch.randn(2, 4, 2, size, size, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 3, size, size)
    y.sum().backward()  # trainable end to end
    assert x.grad is not None and torch.isfinite(x.grad).all()
    m.eval()
    with pytest.raises(SpecMismatchError, match="trained on 4 channels × T=2"):
        m(torch.randn(1, 6, 2, size, size))
    # other tasks
    reg = build_model(make_arch(name, "regression", 1, bands=bands, num_steps=2, chip_size=size))
    assert reg.eval()(x.detach()).shape == (2, 1, size, size)
    cls = build_model(make_arch(name, "classification", 5, bands=bands, num_steps=2,
                                chip_size=size))
    assert cls.eval()(x.detach()).shape == (2, 5)


def test_deeplab_uses_output_stride_8_and_aspp():
    m = build_model(make_arch("deeplabv3-r50", "segmentation", 2, num_steps=1, chip_size=64))
    feats = m.encoder(torch.zeros(1, 6, 1, 64, 64))
    assert feats[-1].shape[-2:] == (8, 8) and feats[-1].shape[1] == 2048
    assert [c[0].dilation for c in m.head.aspp.convs[1:]] == [(12, 12), (24, 24), (36, 36)]
    unet = build_model(make_arch("unet-r18", "segmentation", 2, num_steps=1, chip_size=64))
    assert unet.encoder(torch.zeros(1, 6, 1, 64, 64))[-1].shape[-2:] == (2, 2)


def test_model_file_round_trips_the_architecture(tmp_path):
    from terrastill.models.modelfile import (
        ModelCard,
        fill_card_stats,
        load_model_file,
        save_model_file,
    )

    torch.manual_seed(1)
    m = build_model(make_arch("unet-r18", "segmentation", 2, num_steps=3, chip_size=32)).eval()
    card = ModelCard(name="u", task="segmentation", arch=m.arch, input_spec={},
                     class_names=["land", "water"])
    fill_card_stats(card, m)
    assert card.macs > card.encoder_macs > 0 and card.depth == 4
    save_model_file(tmp_path / "m.pt", m, card)
    loaded = load_model_file(tmp_path / "m.pt")
    assert loaded.card.arch["family"] == "cnn" and loaded.card.arch["name"] == "unet-r18"
    x = torch.randn(2, 6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), m(x))


def test_bench_takes_baseline_registry_names():
    from terrastill.bench.throughput import load_bench_model

    bm = load_bench_model("unet-r18")
    assert bm.in_chans == 6 and bm.num_frames == 1 and bm.macs > bm.encoder_macs > 0
    assert bm.depth == 4


def test_cnn_names_are_refused_where_a_vit_is_needed():
    from terrastill.models.registry import get_spec

    with pytest.raises(BadInputError, match="CNN baseline"):
        get_spec("unet-r18")
    m = build_model(make_arch("unet-r18", "segmentation", 2, num_steps=1, chip_size=32))
    with pytest.raises(BadInputError, match="feature distillation"):
        m.forward_with_features(torch.zeros(1, 6, 1, 32, 32), [0])


def test_tile_bootstrap_of_the_dense_truth_miou():
    import numpy as np

    from terrastill.inference.truth import block_confusions, bootstrap_miou, confusion, scores

    rng = np.random.default_rng(0)
    ref = (rng.random((64, 96)) < 0.3).astype(np.int64)
    ref[:8, :8] = -1  # no reference: the tile holds nothing and is left out
    ref[40:, :] = np.where(rng.random((24, 96)) < 0.5, ref[40:, :], -1)
    pred = np.where(rng.random(ref.shape) < 0.9, ref.clip(0), 1 - ref.clip(0))
    pred[0, 0] = 2  # "no answer" (nodata): left out, as in compare_to_reference
    confs = block_confusions(pred, ref, 2, 32)
    assert confs.shape == (6, 2, 2)
    np.testing.assert_array_equal(confs.sum(0), confusion(pred, ref, 2))
    point = scores(confs.sum(0), ["land", "water"])["miou"]
    lo, hi = bootstrap_miou(confs, ["land", "water"], n=300, seed=1)
    assert lo < point < hi and hi - lo < 0.2
    same = np.repeat(confs[:1], 5, axis=0)  # identical tiles: no spread
    lo, hi = bootstrap_miou(same, ["land", "water"], n=50)
    assert lo == pytest.approx(hi)


# --- train / evaluate / predict / bench / distill on the small world ------------------------

def _chips(flood_dataset: Path, tmp: Path, indices: bool = False) -> Path:
    """A copy of the flood chips (optionally with ndwi/mndwi/ndvi recorded)."""
    from terrastill.data.build import add_index_stats
    from terrastill.data.dataset import read_index

    out = tmp / "chips"
    shutil.copytree(flood_dataset, out)
    if indices:
        meta = json.loads((out / "dataset.json").read_text())
        add_index_stats(out, meta, read_index(out), ["ndwi", "mndwi", "ndvi"])
        (out / "dataset.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def trained(flood_dataset, tmp_path_factory) -> dict[str, Path]:
    """A unet-r18 and a tiny ViT teacher (2 epochs each) on chips with three indices."""
    tmp = tmp_path_factory.mktemp("baselines")
    chips = _chips(flood_dataset, tmp, indices=True)
    out: dict[str, Path] = {"chips": chips}
    for name, extra in (("unet-r18", ["--lr", "3e-3"]), ("tiny", [])):
        res = runner.invoke(app, ["train", str(chips), "--model", name, "--epochs", "2",
                                  "--batch-size", "8", "--out", str(tmp / name), *extra])
        assert res.exit_code == 0, res.output
        out[name] = tmp / name / "model.pt"
    return out


@pytest.mark.slow
def test_train_evaluate_predict_and_bench_a_baseline(trained, small_world, tmp_path):
    from terrastill.models.modelfile import read_card

    card = read_card(trained["unet-r18"])
    assert card.arch["family"] == "cnn" and card.arch["encoder"]["in_chans"] == 9
    assert card.macs > 0 and card.params > 14_000_000
    res = runner.invoke(app, ["evaluate", str(trained["unet-r18"]), str(trained["chips"]),
                              "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["miou"] > 0
    res = runner.invoke(app, ["predict", str(trained["unet-r18"]), "--chips",
                              str(trained["chips"]), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "p").glob("*.tif"))
    # an AOI prediction (what the service runs) on a date after the flood
    w, s, e, n = small_world["bbox"]
    res = runner.invoke(app, ["predict", str(trained["unet-r18"]), "--catalog",
                              small_world["catalog"], "--bbox", str(w), str(s),
                              str(w + (e - w) / 4), str(s + (n - s) / 2), "--date",
                              small_world["tasks"]["flood"]["date"], "--out",
                              str(tmp_path / "aoi")])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "aoi").glob("*.tif"))
    # bench: "cost to map the Earth" rows for the baseline beside the ViT
    csv = tmp_path / "bench.csv"
    res = runner.invoke(app, ["bench", str(trained["unet-r18"]), str(trained["tiny"]),
                              "--batch-sizes", "2", "--seconds", "0.2", "--warmup", "1",
                              "--out", str(csv), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    import pandas as pd

    rows = pd.read_csv(csv)
    assert len(rows) == 2 and (rows["status"] == "ok").all()
    assert (rows["macs"] > 0).all() and (rows["km2_per_s"] > 0).all()
    assert rows["earth_hours"].notna().all()


@pytest.mark.slow
def test_distil_a_vit_teacher_into_a_cnn_student(trained, tmp_path):
    res = runner.invoke(app, ["distill", str(trained["tiny"]), str(trained["chips"]),
                              "--student", "unet-r18", "--epochs", "1", "--batch-size", "8",
                              "--bench-seconds", "0", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    from terrastill.models.modelfile import load_model_file

    loaded = load_model_file(tmp_path / "s" / "model.pt")
    card = loaded.card
    assert card.arch["family"] == "cnn" and card.teacher["path"] == str(trained["tiny"])
    assert card.training["distillation"]["student"] == "unet-r18"
    assert card.arch["inputs"] == read_arch(trained["tiny"])["inputs"]  # same index inputs
    assert card.input_spec["mean"] == read_card_spec(trained["tiny"])["mean"]
    # a CNN student can start from a CNN model file with matching classes and inputs
    res = runner.invoke(app, ["distill", str(trained["tiny"]), str(trained["chips"]),
                              "--student", str(trained["unet-r18"]), "--epochs", "1",
                              "--batch-size", "8", "--bench-seconds", "0",
                              "--out", str(tmp_path / "s2")])
    assert res.exit_code == 0, res.output


def read_arch(path: Path) -> dict:
    from terrastill.models.modelfile import read_card

    return read_card(path).arch


def read_card_spec(path: Path) -> dict:
    from terrastill.models.modelfile import read_card

    return read_card(path).input_spec


def _cnn_file(tmp: Path, bands: list[str], classes: list[str]) -> Path:
    from terrastill.models.modelfile import ModelCard, save_model_file

    m = build_model(make_arch("unet-r18", "segmentation", len(classes), bands=bands,
                              num_steps=2, chip_size=16))
    card = ModelCard(name="x", task="segmentation", arch=m.arch, input_spec={"bands": bands},
                     class_names=classes)
    return save_model_file(tmp / f"cnn-{len(bands)}-{len(classes)}.pt", m, card)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["classes", "channels", "cnn teacher", "feature pairs",
                                  "weights channels"])
def test_bad_student_or_weights_exit_2_in_one_line(case, trained, tmp_path):
    six = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
    teacher, chips = str(trained["tiny"]), str(trained["chips"])
    base = ["--epochs", "1", "--bench-seconds", "0", "--out", str(tmp_path / "o")]
    if case == "classes":
        args = ["distill", teacher, chips, "--student",
                str(_cnn_file(tmp_path, [*six, "ndwi", "mndwi", "ndvi"], ["a", "b", "c"])),
                *base]
        words = ["3 output classes", "teacher 2"]
    elif case == "channels":
        args = ["distill", teacher, chips, "--student", str(_cnn_file(tmp_path, six,
                                                                       ["land", "water"])),
                *base]
        words = ["trained on 6 input channels", "teacher takes 9"]
    elif case == "cnn teacher":
        args = ["distill", str(trained["unet-r18"]), chips, *base]
        words = ["CNN teacher", "--student"]
    elif case == "feature pairs":
        args = ["distill", teacher, chips, "--student", "unet-r18", "--feature-pairs", "0:0",
                *base]
        words = ["--feature-pairs", "logits"]
    else:
        args = ["train", chips, "--model", "unet-r18", "--weights",
                str(_cnn_file(tmp_path, six, ["land", "water"])), "--epochs", "1",
                "--out", str(tmp_path / "o")]
        words = ["trained on 6 input channels", "asked for 9"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    msg = res.output.strip()
    assert all(w in msg for w in words), msg
    assert len(msg.splitlines()) == 1, msg
    assert not (tmp_path / "o" / "model.pt").exists()


@pytest.mark.slow
def test_bench_baselines_smoke(tmp_path):
    import subprocess

    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_baselines.py"),
                          "--smoke", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = json.loads((tmp_path / "baselines.json").read_text())
    names = [r["model"] for r in table["rows"]]
    assert names == ["deeplabv3-r50", "unet-r18", "tiny", "tiny-student", "unet-r18-student"]
    for r in table["rows"]:
        lo, hi = r["miou_ci95"]
        assert 0 <= lo <= hi <= 1 and 0 <= r["miou"] <= 1
        assert r["macs"] > 0 and r["img_s_fp32"] > 0 and r["km2_per_s"] > 0
    assert (tmp_path / "baselines.md").read_text().count("\n|") >= 6


def test_embed_refuses_a_cnn_model_file(tmp_path):
    from terrastill.embeddings.encoders import model_file_encoder
    from terrastill.errors import BadInputError

    path = _cnn_file(tmp_path, ["blue", "green", "red", "nir_narrow", "swir1", "swir2"],
                     ["land", "water"])
    with pytest.raises(BadInputError, match="no patch tokens to embed"):
        model_file_encoder(path, device="cpu")
