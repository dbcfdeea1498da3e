"""Splat super-resolution: closed-form rendering, shift recovery, masking, the fine-truth world
and the ``superres`` command end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.errors import BadInputError
from terrastill.superres import tiling
from terrastill.superres.fit import FitOptions, fit, resolve_device
from terrastill.superres.render import (
    SplatGrid,
    axis_weights,
    observation_weights,
    render,
    render_blocked,
)
from terrastill.superres.shifts import phase_shifts
from terrastill.world.fine import degrade, psf_kernel

runner = CliRunner()
PAD, F = 12, 4


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(4, h·4 + 2·PAD, w·4 + 2·PAD) fine reflectance: 12.5 m blocks, stripes and a ramp."""
    rng = np.random.default_rng(seed)
    hh, ww = h * F + 2 * PAD, w * F + 2 * PAD
    blocks = rng.uniform(0.05, 0.4, size=(4, hh // 5 + 1, ww // 5 + 1))
    out = np.repeat(np.repeat(blocks, 5, axis=1), 5, axis=2)[:, :hh, :ww]
    out[:, :, ::9] += 0.15  # 2.5 m lines every 22.5 m
    out += np.linspace(0, 0.05, ww)[None, None, :]
    return out.astype(np.float32)


def _observe(fine: np.ndarray, shifts: np.ndarray, noise: float = 0.003,
             seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    res = 10.0 / F
    obs = np.stack([degrade(fine, F, PAD, 3.0 / res, (dx / res, -dy / res)) for dx, dy in shifts])
    return (obs + rng.normal(0, noise, obs.shape)).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray, e: int = 8) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return peak_signal_noise_ratio(a[:, e:-e, e:-e], b[:, e:-e, e:-e], data_range=0.6)


def test_axis_weights_are_the_pixel_integral_of_a_gaussian():
    centres = torch.tensor([3.0, 11.5], dtype=torch.float64)
    lo = torch.tensor([0.0, 10.0], dtype=torch.float64)
    w = axis_weights(lo, 10.0, centres, torch.tensor([1.5], dtype=torch.float64), 4.0, 3.0)
    u = np.linspace(-60, 80, 280001)
    for p, a in enumerate((0.0, 10.0)):
        for n, mu in enumerate((3.0, 11.5)):
            pdf = np.exp(-0.5 * ((u - mu - 1.5) / 4.0) ** 2) / (4.0 * math.sqrt(2 * math.pi))
            inside = (u >= a) & (u <= a + 10.0)
            numeric = np.trapezoid(pdf * inside, u) * 3.0 / 10.0
            assert w[0, p, n].item() == pytest.approx(numeric, abs=2e-4)


def test_blocked_render_equals_dense_render():
    g = SplatGrid(70, 45, 10.0, 3.0, 23.0)
    ay, ax = observation_weights(g, torch.tensor([[1.0, -2.0], [-3.0, 0.5]]), 4.24)
    w = torch.rand(3, g.ny, g.nx)
    dense = render(w, ay, ax)
    assert dense.shape == (2, 3, 70, 45)
    assert torch.allclose(render_blocked(w, ay, ax, g, 16), dense, atol=1e-5)


def test_psf_kernel_moves_content_by_the_shift():
    k = psf_kernel(1.5, 1.2, 8)
    assert k.sum() == pytest.approx(1.0)
    # out[i] = Σ w[k] in[i+k]: centred at k = -1.5, so content moves by +1.5
    assert float((np.arange(-8, 9) * k).sum()) == pytest.approx(-1.5, abs=1e-6)


def test_fit_recovers_known_shifts_and_beats_bicubic():
    from skimage.transform import resize

    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    shifts = rng.normal(0, 2.0, (6, 2))
    fine = _scene(18, 18)
    obs = _observe(fine, shifts)
    res = fit(obs, 10.0, FitOptions(adam_steps=100, lbfgs_steps=15))
    true = shifts - shifts.mean(axis=0)
    assert np.abs(res.shifts - true).mean() < 0.3
    assert 1 <= res.lbfgs["iterations"] <= 15 and res.lbfgs["evaluations"] >= 1
    assert len(res.losses) == 100 + res.lbfgs["evaluations"]
    for a in range(2):
        assert np.corrcoef(res.shifts[:, a], true[:, a])[0, 1] > 0.95
    out = res.render_fine(F)
    assert out.shape == (4, 72, 72)
    # compare in the fitted frame (the mean shift), as the evaluation does
    from scipy.ndimage import shift as nd_shift

    m = shifts.mean(axis=0) / 2.5
    truth = np.stack([nd_shift(b, (-m[1], m[0]), order=1, mode="nearest")
                      for b in fine])[:, PAD:-PAD, PAD:-PAD]
    best = int(np.argmin(np.abs(shifts - shifts.mean(0)).sum(1)))
    bicubic = resize(obs[best], (4, 72, 72), order=3)
    assert _psnr(truth, out) > _psnr(truth, bicubic) + 1.5


def test_masked_pixels_do_not_enter_the_loss():
    rng = np.random.default_rng(5)
    shifts = rng.normal(0, 2.0, (5, 2))
    fine = _scene(16, 16, seed=2)
    obs = _observe(fine, shifts)
    opts = FitOptions(adam_steps=60, lbfgs_steps=0, shift_init="zero")
    clean = fit(obs, 10.0, opts).render_fine(F)
    bad = obs.copy()
    bad[1, :, 4:12, 4:12] = 0.9  # a cloud
    masked = bad.copy()
    masked[1, :, 4:12, 4:12] = np.nan  # ... flagged by QA
    with_cloud = fit(bad, 10.0, opts).render_fine(F)
    without = fit(masked, 10.0, opts).render_fine(F)
    assert np.isfinite(without).all()
    assert np.abs(without - clean).mean() < 0.25 * np.abs(with_cloud - clean).mean()


def test_phase_correlation_finds_known_shifts():
    rng = np.random.default_rng(7)
    shifts = rng.normal(0, 3.0, (6, 2))
    obs = _observe(_scene(32, 32, seed=4), shifts, noise=0.001)
    pc = phase_shifts(obs, 10.0)
    true = shifts - shifts.mean(axis=0)
    for a in range(2):
        assert np.corrcoef(pc[:, a], true[:, a])[0, 1] > 0.9


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(BadInputError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_matches_cpu():
    rng = np.random.default_rng(3)
    shifts = rng.normal(0, 2.0, (4, 2))
    obs = _observe(_scene(16, 16), shifts)
    opts = FitOptions(adam_steps=40, lbfgs_steps=0, shift_init="zero")
    cpu = fit(obs, 10.0, opts)
    gpu = fit(obs, 10.0, FitOptions(**{**opts.__dict__, "device": "cuda"}))
    assert gpu.weights.device.type == "cuda"
    assert np.abs(cpu.shifts - gpu.shifts).max() < 0.05


def test_crops_cover_and_taper_blends():
    boxes = tiling.crops(100, 70, 40, 8)
    cover = np.zeros((100, 70), dtype=int)
    for r0, r1, c0, c1 in boxes:
        assert r1 - r0 == 40 and c1 - c0 == 40
        cover[r0:r1, c0:c1] += 1
    assert cover.min() >= 1
    assert tiling.crops(10, 10, 40, 8) == [(0, 10, 0, 10)]
    t = tiling.taper(20, 20, 4)
    assert t[10, 10] == 1.0 and 0 < t[0, 0] < t[2, 2] < 1.0


# --- the fine-truth world and the command ----------------------------------------------------

@pytest.fixture(scope="module")
def fine_world(tmp_path_factory) -> dict:
    """One 48 px S2 tile over three weeks, scenes rendered from a 2.5 m truth."""
    from terrastill.world.build import build_world, load_manifest
    from terrastill.world.config import WorldConfig

    out = tmp_path_factory.mktemp("fine-world")
    build_world(out, WorldConfig(source="s2", zones=1, tiles_x=1, tiles_y=1, tile_size=48,
                                 start="2024-07-20", end="2024-08-10", flood_date="2024-08-10",
                                 revisit=2, observations=10, fine_factor=4, workers=1))
    return load_manifest(out)


def _clear_items(world: dict) -> list[dict]:
    items = json.loads(Path(world["catalog"]).read_text())["features"]
    return [it for it in items if it["properties"]["eo:cloud_cover"] == 0
            and it["properties"]["datetime"][:10] < "2024-08-10"]


def test_fine_world_scenes_are_the_shifted_blurred_truth(fine_world):
    import rasterio

    from terrastill.sources import get_profile

    fine = fine_world["fine"]
    assert fine["factor"] == 4 and fine["resolution"] == 2.5 and fine["psf_sigma"] == 3.0
    assert fine_world["config"]["fine_factor"] == 4
    root = Path(fine_world["root"])
    profile = get_profile("s2")
    checked = 0
    for it in _clear_items(fine_world)[:3]:
        day = it["properties"]["datetime"][:10]
        epsg = str(fine_world["epsg"][0])
        with rasterio.open(root / fine["truth"][epsg][day]) as src:
            truth = src.read().astype(np.float32) * fine["scale"]
            assert src.res == (2.5, 2.5) and src.descriptions == ("blue", "green", "red", "nir")
        with rasterio.open(root / it["assets"]["B04"]["href"].removeprefix("./")) as src:
            red = profile.to_reflectance(src.read(1), it["properties"])
            assert truth.shape[1:] == (src.height * 4, src.width * 4)
        padded = np.pad(truth[2:3], ((0, 0), (PAD, PAD), (PAD, PAD)), mode="edge")
        dx, dy = fine["shifts"][day]
        right = degrade(padded, 4, PAD, 3.0 / 2.5, (dx / 2.5, -dy / 2.5))[0]
        wrong = degrade(padded, 4, PAD, 3.0 / 2.5, (-dx / 2.5, dy / 2.5))[0]
        e = 3
        err_right = np.abs(right - red)[e:-e, e:-e].mean()
        err_wrong = np.abs(wrong - red)[e:-e, e:-e].mean()
        assert err_right < 0.006  # the sensor noise
        if abs(dx) + abs(dy) > 1.5:
            assert err_right < err_wrong
        checked += 1
    assert checked >= 2


def test_ordinary_worlds_keep_their_config(tmp_path):
    from pydantic import ValidationError

    from terrastill.world.config import WorldConfig
    from terrastill.world.fine import FINE_FIELDS, config_exclude

    assert config_exclude(WorldConfig()) == FINE_FIELDS
    with pytest.raises(ValidationError, match="needs source s2"):
        WorldConfig(source="hls", fine_factor=4)
    res = runner.invoke(app, ["world", str(tmp_path / "w"), "--fine-factor", "4"])
    assert res.exit_code == 2 and "needs source s2" in res.output


def _bbox(world: dict) -> list[str]:
    x0, y0, x1, y1 = world["bbox"]
    dx, dy = (x1 - x0) * 0.1, (y1 - y0) * 0.1
    return [str(v) for v in (x0 + dx, y0 + dy, x1 - dx, y1 - dy)]


def test_superres_command_writes_cog_and_shifts(fine_world, tmp_path):
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    out = tmp_path / "sr.tif"
    res = runner.invoke(app, [
        "superres", "--catalog", fine_world["catalog"], "--bbox", *_bbox(fine_world),
        "--start", "2024-07-20", "--end", "2024-08-09", "--out", str(out), "--crop", "24",
        "--overlap", "6", "--adam-steps", "40", "--lbfgs-steps", "8", "--device", "cpu",
        "--max-cloud", "30"])
    assert res.exit_code == 0, res.output
    assert cog_validate(str(out))[0]
    summary = json.loads(out.with_name("sr.json").read_text())
    with rasterio.open(out) as src:
        assert src.res == (2.5, 2.5) and src.count == 4
        assert src.descriptions == ("red", "green", "blue", "nir")
        data = src.read()
        assert src.width == summary["grid"]["width"]
    assert np.isfinite(data).all() and 0.0 < float(np.median(data)) < 0.5
    assert summary["crops"] >= 4 and summary["skipped_crops"] == 0
    rows = list(csv.DictReader(out.with_name("sr_shifts.csv").open()))
    assert {r["crop"] for r in rows} == {str(i) for i in range(summary["crops"])}
    known = fine_world["fine"]["shifts"]
    crop0 = [r for r in rows if r["crop"] == "0"]
    got = np.array([[float(r["dx_m"]), float(r["dy_m"])] for r in crop0])
    true = np.array([known[r["date"]] for r in crop0])
    true -= true.mean(axis=0)
    assert np.abs(got - true).mean() < 1.0


def test_superres_bad_input_exits_2(fine_world, tmp_path):
    base = ["superres", "--catalog", fine_world["catalog"], "--bbox", *_bbox(fine_world),
            "--out", str(tmp_path / "sr.tif"), "--device", "cpu"]
    one_day = runner.invoke(app, [*base, "--start", "2024-07-20", "--end", "2024-07-21"])
    assert one_day.exit_code == 2 and "at least 2" in one_day.output
    memory = runner.invoke(app, [*base, "--start", "2024-07-20", "--end", "2024-08-09",
                                 "--splat-spacing", "0.5", "--memory-limit", "0.05"])
    assert memory.exit_code == 2 and "GiB" in memory.output and "--memory-limit" in memory.output
    assert not (tmp_path / "sr.tif").exists()


@pytest.mark.slow
def test_eval_superres_smoke(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "eval_superres.py"
    spec = importlib.util.spec_from_file_location("eval_superres", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--threads", "1", "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "superres_summary.json").read_text())
    assert [r["n"] for r in s["curve"]] == [1, 2, 4]
    assert all(math.isfinite(r["psnr_sr"]) and -1 <= r["ssim_sr"] <= 1 for r in s["curve"])
    assert all(r["lbfgs_evaluations"] >= 1 for r in s["curve"])
    assert s["timing"]["acquisitions"] >= 2 and s["timing"]["crop_px"] == 24
    rec = next(r for r in s["shifts"] if r["pair"] == "recovered vs known" and r["axis"] == "dx")
    assert rec["pearson_r"] > 0.5
    for name in ("superres_curve.csv", "superres_psf.csv", "superres_shifts.csv",
                 "superres_curves.png", "superres_example.png"):
        assert (tmp_path / name).stat().st_size > 0
