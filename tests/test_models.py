"""Encoder, heads, registry, model file and pretrained-weight loading (official layout)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from terrastill.errors import BadInputError, NotFoundError
from terrastill.models.encoder import PrithviViT, count_macs, num_params
from terrastill.models.model import truncate
from terrastill.models.modelfile import (
    ModelCard,
    default_class_colors,
    load_model_file,
    read_card,
    save_model_file,
)
from terrastill.models.pos_embed import interpolate_pos_embed, sincos_1d, sincos_3d
from terrastill.models.registry import build_model, list_models, make_arch
from terrastill.models.weights import load_pretrained, match_bands

HLS = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
SMALL_ENC = {"embed_dim": 32, "depth": 3, "num_heads": 2, "patch_size": [1, 4, 4],
             "num_frames": 2, "img_size": 16, "in_chans": 6, "mlp_ratio": 2.0}


def small_arch(task="segmentation", k=3, **enc):
    cfg = {**SMALL_ENC, **enc}
    return make_arch("tiny", task, k, bands=HLS, encoder_overrides=cfg)


def x_for(arch, b=2):
    e = arch["encoder"]
    return torch.randn(b, e["in_chans"], e["num_frames"], e["img_size"], e["img_size"])


# --- position embedding ---------------------------------------------------------------------

def test_sincos_3d_layout_matches_prithvi():
    d, (t, h, w) = 32, (2, 3, 4)
    pe = sincos_3d(d, (t, h, w))
    assert pe.shape == (1, 1 + t * h * w, d)
    assert torch.all(pe[0, 0] == 0)  # cls row
    wd, hd = d // 16 * 6, d // 16 * 6
    # token (ti, yi, xi) sits at 1 + ti*h*w + yi*w + xi: [w code | h code | t code]
    ti, yi, xi = 1, 2, 3
    row = pe[0, 1 + ti * h * w + yi * w + xi].numpy()
    np.testing.assert_allclose(row[:wd], sincos_1d(wd, np.array([xi]))[0], atol=1e-6)
    np.testing.assert_allclose(row[wd:wd + hd], sincos_1d(hd, np.array([yi]))[0], atol=1e-6)
    np.testing.assert_allclose(row[wd + hd:], sincos_1d(d - wd - hd, np.array([ti]))[0],
                               atol=1e-6)


def test_pos_embed_interpolation_keeps_cls_and_corners():
    pe = sincos_3d(32, (2, 4, 4))
    out = interpolate_pos_embed(pe, (2, 4, 4), (3, 8, 8))
    assert out.shape == (1, 1 + 3 * 64, 32)
    assert torch.equal(out[:, 0], pe[:, 0])
    # aligned corners: first and last tokens are unchanged
    torch.testing.assert_close(out[0, 1], pe[0, 1])
    torch.testing.assert_close(out[0, -1], pe[0, -1])
    assert torch.equal(interpolate_pos_embed(pe, (2, 4, 4), (2, 4, 4)), pe)


# --- encoder and heads ----------------------------------------------------------------------

def test_encoder_parameter_names_follow_prithvi():
    enc = PrithviViT(**SMALL_ENC, coords_encoding=["time", "location"], coords_scale_learn=True)
    names = set(enc.state_dict())
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed",
                "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
                "blocks.0.attn.proj.weight", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight",
                "blocks.0.mlp.fc2.weight", "norm.weight", "norm.bias",
                "temporal_embed_enc.scale", "location_embed_enc.scale"):
        assert key in names, key
    assert enc.patch_embed.proj.weight.shape == (32, 6, 1, 4, 4)
    assert not enc.pos_embed.requires_grad and "pos_embed" not in dict(enc.named_parameters())
    x = torch.randn(2, 6, 2, 16, 16)
    tc = torch.tensor([[[2024.0, 100.0], [2024.0, 116.0]]] * 2)
    lc = torch.tensor([[10.0, 20.0]] * 2)
    out = enc(x, tc, lc)
    assert out.shape == (2, 1 + 2 * 16, 32)
    assert not torch.allclose(out, enc(x))  # the encodings do something


@pytest.mark.parametrize("task,shape", [("segmentation", (2, 3, 16, 16)),
                                        ("regression", (2, 1, 16, 16)),
                                        ("classification", (2, 3))])
def test_head_output_shapes(task, shape):
    arch = small_arch(task)
    model = build_model(arch)
    assert model(x_for(arch)).shape == shape


def test_head_patch_not_power_of_two():
    arch = small_arch("segmentation", img_size=14, patch_size=[1, 7, 7])
    model = build_model(arch)
    assert model(x_for(arch)).shape == (2, 3, 14, 14)


def test_forward_features_and_truncate():
    torch.manual_seed(0)
    arch = small_arch()
    model = build_model(arch).eval()
    x = x_for(arch)
    out, feats = model.forward_with_features(x, return_blocks=[0, -1])
    assert out.shape == (2, 3, 16, 16) and len(feats) == 2 and feats[0].shape == (2, 1 + 32, 32)
    student = truncate(model, 2).eval()
    assert student.depth == 2 and len(student.encoder.blocks) == 2
    assert student.arch["encoder"]["depth"] == 2 and model.depth == 3
    # the student equals the teacher's first two blocks + the teacher's norm and head
    with torch.no_grad():
        h = model.encoder.embed(x)
        for blk in model.encoder.blocks[:2]:
            h = blk(h)
        expected = model.head(model.encoder.norm(h), model.encoder.token_grid(x.shape), x)
        torch.testing.assert_close(student(x), expected)
    with pytest.raises(ValueError):
        truncate(model, 0)


def test_macs_counted():
    arch = small_arch()
    model = build_model(arch)
    macs = count_macs(model, x_for(arch, 1))
    enc_macs = count_macs(model.encoder, x_for(arch, 1))
    assert 0 < enc_macs < macs
    # a linear layer lower bound: qkv+proj+mlp of every token in every block
    d, n, depth = 32, 33, 3
    assert enc_macs >= depth * n * (3 * d * d + d * d + 2 * 2 * d * d)
    # attention (Q·Kᵀ and A·V: 2·N²·D per block) is counted, which torch's counter alone
    # misses for the fused CPU kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encoder.eval()(x_for(arch, 1))
    assert enc_macs - counter.get_total_flops() // 2 == depth * 2 * n * n * d


def test_registry_published_sizes():
    names = list_models()
    for n in ("prithvi-eo-1.0-100m", "prithvi-eo-2.0-300m", "prithvi-eo-2.0-300m-tl",
              "prithvi-eo-2.0-600m", "prithvi-eo-2.0-600m-tl", "tiny", "small"):
        assert n in names
    expect = {"prithvi-eo-1.0-100m": (80e6, 95e6), "prithvi-eo-2.0-300m": (290e6, 320e6),
              "prithvi-eo-2.0-600m": (600e6, 660e6)}
    for name, (lo, hi) in expect.items():
        with torch.device("meta"):
            model = build_model(make_arch(name, "segmentation", 2))
        n = num_params(model.encoder)
        assert lo < n < hi, (name, n)
    with pytest.raises(BadInputError):
        make_arch("no-such-model")
    with pytest.raises(BadInputError):
        make_arch("prithvi-eo-2.0-300m", chip_size=40)  # not a multiple of 16


# --- model file -----------------------------------------------------------------------------

def test_model_file_round_trip(tmp_path):
    torch.manual_seed(1)
    arch = small_arch()
    model = build_model(arch).eval()
    card = ModelCard(name="m", task="segmentation", arch=model.arch,
                     input_spec={"bands": HLS, "num_steps": 2, "chip_size": 16,
                                 "mean": [0.0] * 6, "std": [1.0] * 6},
                     class_names=["land", "water", "forest"], metrics={"val": {"miou": 0.5}})
    path = save_model_file(tmp_path / "model.pt", model, card)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left
    loaded = load_model_file(path)
    assert not loaded.model.training
    x = x_for(arch)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    c = read_card(path)
    assert c.class_colors == ["#e8e3c8", "#1f78b4", "#1b5e20"]
    assert c.metrics == {"val": {"miou": 0.5}} and c.arch == model.arch
    assert ModelCard.from_dict(c.to_dict()) == c
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "terrastill-model" and raw["version"] == 1
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(BadInputError):
        load_model_file(tmp_path / "junk.pt")
    with pytest.raises(NotFoundError):
        read_card(tmp_path / "missing.pt")


def test_default_class_colors_distinct():
    colors = default_class_colors(["water", "forest", "cropland", "urban", "bare", "land",
                                   "mystery", "other mystery"])
    assert colors[:6] == ["#1f78b4", "#1b5e20", "#c8d84a", "#d62728", "#d2b48c", "#e8e3c8"]
    assert len(set(colors)) == len(colors)


# --- pretrained weights in the official layout -----------------------------------------------

def official_checkpoint(enc_cfg, v1=False, seed=0):
    """A state dict laid out like the published Prithvi MAE checkpoints."""
    torch.manual_seed(seed)
    enc = PrithviViT(**enc_cfg)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = enc.state_dict()
    d = enc_cfg["embed_dim"]
    if v1:  # Prithvi-EO-1.0: bare names, decoder_* and mask_token beside them
        out = dict(sd)
        out["mask_token"] = torch.zeros(1, 1, 16)
        out["decoder_embed.weight"] = torch.randn(16, d)
        out["decoder_blocks.0.norm1.weight"] = torch.ones(16)
        out["decoder_pred.weight"] = torch.randn(96, 16)
    else:  # Prithvi-EO-2.0: encoder.* / decoder.*
        out = {f"encoder.{k}": v for k, v in sd.items()}
        out["decoder.mask_token"] = torch.zeros(1, 1, 16)
        out["decoder.decoder_embed.weight"] = torch.randn(16, d)
        out["decoder.decoder_blocks.0.attn.qkv.weight"] = torch.randn(48, 16)
    return enc, out


@pytest.mark.parametrize("v1", [False, True])
def test_official_layout_loading_with_pos_interpolation(tmp_path, v1):
    src_cfg = {**SMALL_ENC, "num_frames": 2, "img_size": 16}
    src, ckpt = official_checkpoint(src_cfg, v1=v1)
    path = tmp_path / "Prithvi_small.pt"
    torch.save(ckpt, path)
    # fine-tune at another chip size (32) and T (3)
    arch = small_arch(img_size=32, num_frames=3)
    model = build_model(arch)
    report = load_pretrained(model, path, src_bands=HLS, src_config=src_cfg)
    enc_sd = model.encoder.state_dict()
    for k, v in src.state_dict().items():
        if k != "pos_embed":
            torch.testing.assert_close(enc_sd[k], v, rtol=0, atol=0, msg=k)
    assert report.interpolated_pos_embed == ((2, 4, 4), (3, 8, 8))
    expected = interpolate_pos_embed(src.pos_embed, (2, 4, 4), (3, 8, 8))
    torch.testing.assert_close(model.encoder.pos_embed, expected)
    assert report.missing == []
    assert any("decoder" in k or "mask_token" in k for k in report.dropped)
    assert model(x_for(arch)).shape == (2, 3, 32, 32)
    # without a source config the grid is inferred from the token count
    model2 = build_model(arch)
    r2 = load_pretrained(model2, path, src_bands=HLS)
    assert r2.interpolated_pos_embed == ((2, 4, 4), (3, 8, 8))


def test_safetensors_and_wrapped_checkpoints(tmp_path):
    from safetensors.torch import save_file

    src, ckpt = official_checkpoint(SMALL_ENC)
    save_file({k: v.contiguous() for k, v in ckpt.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": ckpt, "epoch": 3}, tmp_path / "w.ckpt")
    for name in ("w.safetensors", "w.ckpt"):
        model = build_model(small_arch())
        load_pretrained(model, tmp_path / name)
        torch.testing.assert_close(model.encoder.blocks[1].mlp.fc2.weight,
                                   src.blocks[1].mlp.fc2.weight)


def test_band_matching_by_name(tmp_path, caplog):
    src, ckpt = official_checkpoint(SMALL_ENC)
    torch.save(ckpt, tmp_path / "w.pt")
    dst = ["red", "B8A", "green", "thermal"]  # reordered, an alias, one the checkpoint lacks
    arch = make_arch("tiny", "segmentation", 2, bands=dst, num_steps=2, chip_size=16,
                     encoder_overrides={**SMALL_ENC, "in_chans": 4})
    model = build_model(arch)
    with caplog.at_level(logging.WARNING):
        report = load_pretrained(model, tmp_path / "w.pt", src_bands=HLS)
    w = model.encoder.patch_embed.proj.weight
    sw = src.patch_embed.proj.weight
    assert w.shape == (32, 4, 1, 4, 4)
    torch.testing.assert_close(w[:, 0], sw[:, 2])
    torch.testing.assert_close(w[:, 1], sw[:, 3])
    torch.testing.assert_close(w[:, 2], sw[:, 1])
    torch.testing.assert_close(w[:, 3], sw.mean(dim=1))
    assert report.missing_bands == ["thermal"]
    assert set(report.extra_bands) == {"blue", "swir1", "swir2"}
    assert "thermal" in caplog.text and "dropped" in caplog.text
    # the helper on its own
    out = match_bands(sw, HLS, ["swir2", "blue"])
    torch.testing.assert_close(out, sw[:, [5, 0]])


def test_mismatched_checkpoint_is_refused(tmp_path):
    _, ckpt = official_checkpoint({**SMALL_ENC, "embed_dim": 48, "num_heads": 3})
    torch.save(ckpt, tmp_path / "w.pt")
    with pytest.raises(BadInputError, match="embed dim"):
        load_pretrained(build_model(small_arch()), tmp_path / "w.pt")
    with pytest.raises(NotFoundError):
        load_pretrained(build_model(small_arch()), tmp_path / "nope.pt")


def _populate_hf_cache(cache, repo_id, filename, payload_path):
    """Lay a file out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/file)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(payload_path.read_bytes())


def test_hub_download_offline_from_cache(tmp_path, monkeypatch):
    src, ckpt = official_checkpoint(SMALL_ENC)
    torch.save(ckpt, tmp_path / "w.pt")
    cache = tmp_path / "hf"
    _populate_hf_cache(cache, "someorg/Prithvi-small", "Prithvi_small.pt", tmp_path / "w.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = build_model(small_arch())
    report = load_pretrained(model, "someorg/Prithvi-small:Prithvi_small.pt")
    assert report.path.startswith(str(cache))
    torch.testing.assert_close(model.encoder.norm.weight, src.norm.weight)
    # hf:// form and explicit cache dir
    monkeypatch.delenv("HF_HUB_CACHE")
    model = build_model(small_arch())
    load_pretrained(model, "hf://someorg/Prithvi-small/Prithvi_small.pt", cache_dir=cache)
    # a registry name whose file is not cached: a clear offline error, no network
    with pytest.raises(NotFoundError, match="offline"):
        load_pretrained(build_model(small_arch()), "prithvi-eo-2.0-300m", cache_dir=cache)
    with pytest.raises(BadInputError, match="unknown repository"):
        load_pretrained(build_model(small_arch()), "someorg/Prithvi-small", cache_dir=cache)
