"""Fine-tuning from a pretrained encoder: the encoder's learning-rate scale, and the data
efficiency script's recipes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from terrastill.training.module import param_groups

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _by_param(groups):
    return {id(p): g for g in groups for p in g["params"]}


def _model():
    from terrastill.models.registry import build_model, make_arch

    return build_model(make_arch("tiny", encoder_overrides={"depth": 3}))


def test_encoder_lr_scale_slows_every_encoder_parameter_only():
    model = _model()
    plain = _by_param(param_groups(model, 1.0, 0.05, 1.0))
    scaled = _by_param(param_groups(model, 1.0, 0.05, 0.5, encoder_lr_scale=0.1))
    for name, p in model.named_parameters():
        assert plain[id(p)]["lr"] == 1.0
        if name.startswith("encoder."):
            assert scaled[id(p)]["lr"] < 0.1 + 1e-12  # × 0.1, and layer decay on top
        else:
            assert scaled[id(p)]["lr"] == 1.0  # the fresh head keeps the full rate
    enc = model.encoder
    assert scaled[id(enc.patch_embed.proj.weight)]["lr"] == pytest.approx(0.1 * 0.5 ** 4)
    assert scaled[id(enc.norm.weight)]["lr"] == pytest.approx(0.1)  # last layer id, scaled
    assert scaled[id(enc.norm.weight)]["weight_decay"] == 0.0
    # unscaled, the groups are the ones they always were: one per (layer, decay or not), so
    # the optimiser state of a checkpoint to --resume still fits
    from terrastill.training.module import layer_id

    keys = {(layer_id(n, 3), p.ndim <= 1 or n.endswith(("cls_token", "scale")))
            for n, p in model.named_parameters()}
    assert len(param_groups(model, 1.0, 0.05, 0.5)) == len(keys)
    assert len(param_groups(model, 1.0, 0.05, 0.5, encoder_lr_scale=0.1)) > len(keys)


def test_module_passes_the_scale_to_its_optimiser():
    from types import SimpleNamespace

    from terrastill.models.registry import make_arch
    from terrastill.training.module import SegmentationModule

    arch = make_arch("tiny", "segmentation", 2, encoder_overrides={"depth": 2})
    mod = SegmentationModule(arch, ["a", "b"], encoder_lr_scale=0.25)
    mod.trainer = SimpleNamespace(estimated_stepping_batches=10)  # what the schedule reads
    opt = mod.configure_optimizers()["optimizer"]
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(mod.model.encoder.blocks[0].attn.qkv.weight)] == pytest.approx(0.25e-3)
    assert lrs[id(mod.model.head.out.weight)] == pytest.approx(1e-3)
    assert SegmentationModule(arch, ["a", "b"]).hparams.encoder_lr_scale == 1.0


def _script():
    spec = importlib.util.spec_from_file_location("data_efficiency",
                                                  SCRIPTS / "data_efficiency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_data_efficiency_recipes_parse_and_bad_ones_exit_2(tmp_path, capsys):
    mod = _script()
    assert mod.parse_recipes("1:1,0.1:1,1:0.75") == {
        "pretrained": (1.0, 1.0), "pretrained-e0.1-d1": (0.1, 1.0),
        "pretrained-e1-d0.75": (1.0, 0.75)}
    assert mod.parse_recipes("none") == {}
    for bad in ("0.1", "x:1", "0:1", "1:2", ","):
        with pytest.raises(SystemExit) as exc:
            mod.main(["--out", str(tmp_path / "o"), "--recipes", bad])
        assert exc.value.code == 2
        assert "--recipes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        mod.main(["--out", str(tmp_path / "o"), "--pretrained", str(tmp_path / "none.pt")])
    assert exc.value.code == 2
    assert not (tmp_path / "o").exists()
