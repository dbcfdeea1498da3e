"""`terrastill pretrain`: the MAE objective, its official key layout, and the command end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.embeddings.mae import (
    MaskedAutoencoder,
    masked_patch_loss,
    patchify,
    random_masking,
)
from terrastill.models.encoder import PrithviViT
from terrastill.models.registry import make_arch

runner = CliRunner()
HLS = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
MICRO = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": [1, 4, 4], "num_frames": 2,
         "img_size": 8, "in_chans": 3, "mlp_ratio": 2.0}


def _write_images(folder: Path, size: int = 16, per_class: int = 4) -> Path:
    """Per-class folders of 6-band uint16 GeoTIFFs with HLS band descriptions (nodata 0)."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    for k, cls in enumerate(["Water", "Forest"]):
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            base = rng.integers(500, 3000, size=(6, 1, 1)) + 800 * k
            data = (base + rng.integers(0, 300, size=(6, size, size))).astype(np.uint16)
            data[:, 0, :3] = 0  # a few nodata pixels
            with rasterio.open(folder / cls / f"{cls}_{i}.tif", "w", driver="GTiff",
                               width=size, height=size, count=6, dtype="uint16", nodata=0,
                               crs="EPSG:32632",
                               transform=Affine(10, 0, 600000 + 200 * i, 0, -10, 5000000)) as dst:
                dst.write(data)
                dst.descriptions = tuple(HLS)
    return folder


def test_masking_keeps_a_quarter_of_the_tokens() -> None:
    gen = torch.Generator().manual_seed(1)
    ids_keep, mask, ids_restore = random_masking(5, 50, 0.75, generator=gen)
    keep = round(0.25 * 50)
    assert ids_keep.shape == (5, keep)
    assert (mask.sum(1) == 50 - keep).all()
    # the kept ids are exactly the unmasked tokens, and samples differ
    for b in range(5):
        assert set(ids_keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    assert not torch.equal(mask[0], mask[1])
    assert torch.equal(torch.gather(torch.argsort(ids_restore, 1), 1, ids_restore),
                       torch.arange(50).expand(5, -1))
    again = random_masking(5, 50, 0.75, generator=torch.Generator().manual_seed(1))[1]
    assert torch.equal(mask, again)  # seeded


def test_loss_ignores_nan_pixels() -> None:
    torch.manual_seed(0)
    pred = torch.randn(2, 4, 12)
    target = torch.randn(2, 4, 12)
    valid = torch.ones(2, 4, 12, dtype=torch.bool)
    valid[0, 1, :5] = False
    target = torch.where(valid, target, torch.full_like(target, float("nan")))
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.float32)
    loss = masked_patch_loss(pred, target, valid, mask)
    w = valid.float() * mask.unsqueeze(-1)
    expected = (((pred - torch.nan_to_num(target)) ** 2) * w).sum() / w.sum()
    assert torch.isfinite(loss) and torch.allclose(loss, expected)
    other = pred.clone()
    other[0, 1, :5] += 100.0  # predictions for NaN pixels do not count
    other[0, 2] += 100.0  # nor those of visible (unmasked) patches
    assert torch.allclose(masked_patch_loss(other, target, valid, mask), loss)
    assert torch.isfinite(masked_patch_loss(pred, target, valid, mask, norm_pix=True))
    # end to end: NaN input gives a finite loss and finite gradients
    mae = MaskedAutoencoder(MICRO)
    x = torch.randn(2, 3, 2, 8, 8)
    x[0, :, :, :2, :2] = float("nan")
    out, _, _ = mae(x)
    out.backward()
    assert torch.isfinite(out)
    assert all(torch.isfinite(p.grad).all() for p in mae.parameters() if p.grad is not None)


def test_patchify_follows_the_token_order() -> None:
    x = torch.arange(2 * 3 * 2 * 8 * 8, dtype=torch.float32).reshape(2, 3, 2, 8, 8)
    p = patchify(x, (1, 4, 4))
    assert p.shape == (2, 2 * 2 * 2, 16 * 3)
    # token 1 (t 0, row 0, col 1): pixel (0, 4) of every band, channel-last
    assert torch.equal(p[0, 1, :3], x[0, :, 0, 0, 4])
    # token 4 (t 1, row 0, col 0)
    assert torch.equal(p[1, 4, :3], x[1, :, 1, 0, 0])


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(MICRO)
    x = torch.randn(4, 3, 2, 8, 8).cumsum(-1) / 3  # smooth rows: learnable structure
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)

    def loss_now() -> float:
        with torch.no_grad():
            return float(mae(x, generator=torch.Generator().manual_seed(7))[0])

    start = loss_now()
    for step in range(40):
        loss, _, _ = mae(x, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < 0.7 * start


def test_state_dict_uses_the_official_layout() -> None:
    from terrastill.models.weights import to_encoder_state

    mae = MaskedAutoencoder(MICRO)
    keys = set(mae.state_dict())
    for key in ("encoder.blocks.0.attn.qkv.weight", "encoder.patch_embed.proj.weight",
                "encoder.cls_token", "encoder.pos_embed", "encoder.norm.weight",
                "decoder.decoder_embed.weight", "decoder.mask_token",
                "decoder.decoder_pos_embed", "decoder.decoder_blocks.0.attn.qkv.weight",
                "decoder.decoder_blocks.0.mlp.fc2.bias", "decoder.decoder_norm.weight",
                "decoder.decoder_pred.weight"):
        assert key in keys, key
    assert all(k.startswith(("encoder.", "decoder.")) for k in keys)
    enc_state, dropped = to_encoder_state(mae.state_dict())
    assert set(enc_state) == set(PrithviViT(**MICRO).state_dict())
    assert dropped and all(k.startswith("decoder.") for k in dropped)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mae-images")
    images = _write_images(root / "imgs")
    out = root / "out"
    res = runner.invoke(app, ["pretrain", "--images", str(images), "--scale", "0.0001",
                              "--model", "tiny", "--epochs", "2", "--batch-size", "4",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_pretrain_images_end_to_end(image_run: Path) -> None:
    from terrastill.models.modelfile import load_model_file

    for name in ("model.pt", "mae.pt", "losses.csv", "loss.png", "windows.npz"):
        assert (image_run / name).is_file(), name
    loaded = load_model_file(image_run / "model.pt")
    card = loaded.card
    assert card.task == "embedding"
    spec = card.input_spec
    assert spec["source"] == "images" and spec["bands"] == HLS and spec["num_steps"] == 1
    assert spec["chip_size"] == 16 and len(spec["mean"]) == 6 and 0 < spec["mean"][0] < 1
    assert card.training["samples"] == 8 and card.training["mask_ratio"] == 0.75
    assert len(card.training["loss_curve"]) == 2 and card.params > 0 and card.macs > 0
    tokens = loaded.model(torch.zeros(2, 6, 1, 16, 16))
    assert tokens.shape == (2, 1 + 16, 96)
    rows = list(csv.DictReader((image_run / "losses.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)


def test_mae_weights_load_into_a_fine_tuning_model(image_run: Path) -> None:
    from terrastill.models.model import TerraModel
    from terrastill.models.weights import load_pretrained, read_checkpoint

    raw = read_checkpoint(image_run / "mae.pt")
    assert "decoder.decoder_pred.weight" in raw and "encoder.blocks.0.attn.qkv.weight" in raw
    # the flood chips' shape: 2 steps, 16 px, bands in another order
    bands = ["red", "green", "blue", "nir_narrow", "swir1", "swir2"]
    model = TerraModel(make_arch("tiny", "segmentation", 2, bands=bands, num_steps=2,
                                 chip_size=16))
    report = load_pretrained(model, image_run / "mae.pt")
    assert len(report.loaded) > 0 and not report.missing_bands
    assert report.interpolated_pos_embed == ((1, 4, 4), (2, 4, 4))
    state = model.encoder.state_dict()
    assert torch.equal(state["blocks.3.mlp.fc1.weight"], raw["encoder.blocks.3.mlp.fc1.weight"])
    w = raw["encoder.patch_embed.proj.weight"]  # bands matched by name: red is column 2
    assert torch.equal(state["patch_embed.proj.weight"][:, 0], w[:, 2])
    assert torch.equal(state["patch_embed.proj.weight"][:, 2], w[:, 0])


def test_pretraining_continues_from_weights(image_run: Path, tmp_path: Path) -> None:
    from terrastill.models.modelfile import load_model_file, read_card

    out = tmp_path / "again"
    res = runner.invoke(app, ["pretrain", "--images", str(image_run.parent / "imgs"),
                              "--scale", "0.0001", "--epochs", "1", "--batch-size", "8",
                              "--weights", str(image_run / "mae.pt"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    loaded = read_card(out / "model.pt").training["pretrained"]["loaded"]
    assert loaded == len(load_model_file(image_run / "model.pt").model.encoder.state_dict())


def test_embedding_model_is_refused_by_evaluate(image_run: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["evaluate", str(image_run / "model.pt"), str(tmp_path)])
    assert res.exit_code == 2 and "encoder-only embedding model" in res.output


@pytest.mark.parametrize("how", ["predict", "predict-chips", "predict-image", "distill"])
def test_embedding_model_is_refused_where_a_head_is_needed(image_run: Path, flood_dataset,
                                                           small_world, tmp_path: Path,
                                                           how: str) -> None:
    model, out = str(image_run / "model.pt"), str(tmp_path / "out")
    image = next((image_run.parent / "imgs").rglob("*.tif"))
    args = {
        "predict": ["predict", model, "--bbox", *map(str, small_world["bbox"]), "--date",
                    "2024-06-20", "--catalog", small_world["catalog"], "--out", out],
        "predict-chips": ["predict", model, "--chips", str(flood_dataset), "--out", out],
        "predict-image": ["predict", model, "--image", str(image), "--out", out],
        "distill": ["distill", model, str(flood_dataset), "--layers", "1", "--out", out],
    }[how]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "encoder-only embedding model" in res.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _world_args(small_world: dict, out: Path, *extra: str) -> list[str]:
    minx, miny, maxx, maxy = small_world["bbox"]
    return ["pretrain", "--catalog", small_world["catalog"], "--bbox", str(minx), str(miny),
            str(maxx), str(maxy), "--start", "2024-05-01", "--end", "2024-07-15",
            "--num-steps", "2", "--temporal-step", "9", "--temporal-tolerance", "4",
            "--max-cloud", "60", "--chip-size", "16", "--samples", "6", "--batch-size", "3",
            "--model", "tiny", "--out", str(out), *extra]


@pytest.mark.slow
def test_pretrain_catalog_resume_and_train_weights(small_world, flood_dataset,
                                                   tmp_path: Path) -> None:
    from terrastill.models.modelfile import load_model_file
    from terrastill.training.train import TrainOptions, fit

    out = tmp_path / "mae"
    res = runner.invoke(app, _world_args(small_world, out, "--epochs", "1"))
    assert res.exit_code == 0, res.output
    first = list(csv.DictReader((out / "losses.csv").open()))
    assert len(first) == 1 and (out / "checkpoints" / "last.ckpt").is_file()
    card = load_model_file(out / "model.pt").card
    assert card.input_spec["source"] == "hls" and card.input_spec["num_steps"] == 2
    assert card.input_spec["chip_size"] == 16 and card.input_spec["catalog"]
    assert card.training["windows"]["samples"] == 6
    cache_mtime = (out / "windows.npz").stat().st_mtime_ns
    # an interrupted run (1 of 2 epochs done) continues: epoch 1 is not repeated
    res = runner.invoke(app, _world_args(small_world, out, "--epochs", "2", "--resume"))
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "losses.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert rows[0]["train_loss"] == first[0]["train_loss"]
    assert (out / "windows.npz").stat().st_mtime_ns == cache_mtime  # windows not re-read
    card = load_model_file(out / "model.pt").card
    assert card.training["resumed"] and card.training["epochs"] == 2
    # the encoder fine-tunes from the terrastill model file
    path = fit(flood_dataset, tmp_path / "teacher",
               TrainOptions(model="tiny", epochs=1, weights=str(out / "model.pt"),
                            progress=False))
    pretrained = load_model_file(path).card.training["pretrained"]
    assert pretrained["loaded"] > 0 and pretrained["interpolated_pos_embed"] is None


def _assert_refused(res, out: Path, *words: str) -> None:
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert text.count("error:") == 1
    for w in words:
        assert w in text, text
    assert not (out / "model.pt").exists()


def test_images_not_a_multiple_of_the_patch_are_refused(tmp_path: Path) -> None:
    images = _write_images(tmp_path / "imgs", size=18, per_class=1)
    out = tmp_path / "out"
    res = runner.invoke(app, ["pretrain", "--images", str(images), "--out", str(out)])
    _assert_refused(res, out, "18 px", "patch size 4")


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["pretrain", "--images", str(tmp_path), "--model", "huge",
                              "--out", str(out)])
    _assert_refused(res, out, "unknown model 'huge'")


def test_start_after_end_is_refused(small_world, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _world_args(small_world, out)
    args[args.index("--start") + 1] = "2024-08-01"
    _assert_refused(runner.invoke(app, args), out, "--start 2024-08-01 is after --end")


def test_range_shorter_than_the_steps_is_refused(small_world, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _world_args(small_world, out)
    args[args.index("--end") + 1] = "2024-05-05"
    _assert_refused(runner.invoke(app, args), out, "too short for 2 steps")


def test_no_usable_window_is_refused(small_world, tmp_path: Path) -> None:
    # 64 px windows over 64 px tiles always reach past the imagery: nothing is 0 % masked
    out = tmp_path / "out"
    args = _world_args(small_world, out)
    args[args.index("--max-cloud") + 1] = "0"
    args[args.index("--chip-size") + 1] = "64"
    args[args.index("--samples") + 1] = "2"
    _assert_refused(runner.invoke(app, args), out, "no usable window", "exceed 0% masked")


def test_windows_are_flipped_and_rotated_only_when_asked() -> None:
    from terrastill.embeddings.pretrain import WindowDataset

    arr = np.arange(2 * 1 * 3 * 4 * 4, dtype=np.float32).reshape(2, 1, 3, 4, 4)  # N,T,C,H,W
    plain = WindowDataset(arr, [0.0] * 3, [1.0] * 3)
    assert torch.equal(plain[0], plain[0]) and plain[0].shape == (3, 1, 4, 4)
    aug = WindowDataset(arr, [0.0] * 3, [1.0] * 3, augment=True)
    torch.manual_seed(0)
    seen = {tuple(aug[0].flatten().tolist()) for _ in range(40)}
    assert len(seen) > 3  # several of the 8 flips/rotations
    for v in seen:  # each is the same window, moved: the same values
        assert sorted(v) == sorted(plain[0].flatten().tolist())
