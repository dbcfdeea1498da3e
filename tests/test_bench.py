"""Benchmark: Earth arithmetic, CSV schema, skip-completed (resumable) runs, OOM batch halving,
the dataloader modes, and CLI bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from chipfolder import write_chip_folder
from terrastill.bench import throughput as tp
from terrastill.bench.earth import LAND_AREA_KM2, earth_columns, earth_cost, km2_per_chip
from terrastill.bench.hardware import hardware_id, hardware_info
from terrastill.cli import app
from terrastill.models.modelfile import ModelCard, fill_card_stats, save_model_file
from terrastill.models.registry import build_model, make_arch


def test_earth_arithmetic():
    assert km2_per_chip(32, 30.0) == pytest.approx(0.9216)  # (32 px · 30 m)² = 0.96 km²
    assert km2_per_chip(32, 30.0, overlap=0.5) == pytest.approx(0.9216 / 4)
    c = earth_cost(100.0, 32, 30.0, price_per_hour=3.0)
    assert c.km2_per_s == pytest.approx(92.16)
    assert c.hours == pytest.approx(LAND_AREA_KM2 / 92.16 / 3600)
    assert c.cost == pytest.approx(c.hours * 3.0)
    cols = earth_columns(100.0, 32, 30.0, 3.0)
    assert cols["earth_hours_overlap50"] == pytest.approx(4 * cols["earth_hours"])
    assert earth_cost(100.0, 32, 30.0).cost is None
    with pytest.raises(ValueError):
        km2_per_chip(32, 30.0, overlap=1.0)


def test_hardware_info():
    info = hardware_info()
    assert info["torch"] == str(torch.__version__)
    assert info["cpu_count"] >= 1 and info["cpu"]
    assert len(hardware_id(info)) == 10


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    arch = make_arch("tiny", "segmentation", 2, num_steps=3, chip_size=16,
                     head={"channels": 16},
                     encoder_overrides={"depth": 1, "embed_dim": 32, "num_heads": 2})
    model = build_model(arch).eval()
    chips = write_chip_folder(tmp_path_factory.mktemp("benchchips") / "chips", n_chips=6,
                              size=16)
    meta = json.loads((chips / "dataset.json").read_text())
    spec = {k: meta[k] for k in ("source", "bands", "num_steps", "chip_size", "resolution")}
    spec.update(mean=meta["stats"]["mean"], std=meta["stats"]["std"])
    card = ModelCard(name="tiny-bench", task="segmentation", arch=model.arch, input_spec=spec,
                     class_names=["land", "water"])
    fill_card_stats(card, model)
    path = save_model_file(tmp_path_factory.mktemp("benchmodel") / "model.pt", model, card)
    return path, chips


def _opts(path, out, **kw):
    base = dict(models=[str(path)], precisions=["fp32", "fp16"], compiles=[False],
                batch_sizes=[1, 2], seconds=0.05, warmup=1, out=out, price_per_hour=2.0)
    base.update(kw)
    return tp.BenchOptions(**base)


def test_bench_csv_schema_and_skip_completed(model_file, tmp_path):
    path, _ = model_file
    out = tmp_path / "r.csv"
    rows = tp.run_bench(_opts(path, out))
    assert len(rows) == 4
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == tp.CSV_COLUMNS
        saved = list(reader)
    assert len(saved) == 4
    ok = [r for r in saved if r["status"] == "ok"]
    assert {r["batch_size"] for r in ok} == {"1", "2"}
    for r in ok:
        assert r["precision"] == "fp32" and r["mode"] == "model" and r["compile"] == "off"
        assert float(r["img_s"]) > 0
        assert float(r["latency_p50_ms"]) <= float(r["latency_p95_ms"]) <= float(
            r["latency_p99_ms"]) + 1e-9
        assert float(r["peak_mem_mb"]) > 0 and r["mem_kind"] == "cpu_peak_rss"
        assert int(r["images"]) >= 3 * int(r["batch_size"])
        assert r["chip_size"] == "16" and float(r["gsd_m"]) == 30.0
        assert float(r["km2_per_s"]) == pytest.approx(float(r["img_s"]) * 0.48**2, rel=1e-3)
        assert float(r["earth_hours_overlap50"]) == pytest.approx(
            4 * float(r["earth_hours"]), rel=1e-3)
        assert float(r["earth_cost"]) == pytest.approx(2.0 * float(r["earth_hours"]), rel=1e-3)
        assert int(r["params"]) > 0 and int(r["encoder_macs"]) > 0
    unsupported = [r for r in saved if r["status"] == "unsupported"]
    assert len(unsupported) == 2 and all(r["precision"] == "fp16" for r in unsupported)
    hw = json.loads((tmp_path / "r.hardware.json").read_text())
    assert saved[0]["hardware_id"] in hw

    # the same run again: everything is skipped, nothing appended
    again = tp.run_bench(_opts(path, out))
    assert all(r.get("skipped") for r in again) and len(again) == 4
    assert len(tp.read_results(out)) == 4
    # one more batch size: only the new configuration is measured
    more = tp.run_bench(_opts(path, out, batch_sizes=[1, 2, 3], precisions=["fp32"]))
    assert [bool(r.get("skipped")) for r in more] == [True, True, False]
    assert len(tp.read_results(out)) == 5


def test_bench_refuses_foreign_csv(model_file, tmp_path):
    path, _ = model_file
    out = tmp_path / "other.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(tp.BadInputError, match="not a terrastill bench CSV"):
        tp.run_bench(_opts(path, out, precisions=["fp32"], batch_sizes=[1]))


def test_oom_halves_batch(model_file, monkeypatch):
    path, _ = model_file
    bm = tp.load_bench_model(str(path))
    real = tp.measure
    seen = []

    def fake(bm_, *, batch_size, **kw):
        seen.append(batch_size)
        if batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(bm_, batch_size=batch_size, **kw)

    monkeypatch.setattr(tp, "measure", fake)
    timing, used, status = tp.measure_with_backoff(
        bm, batch_size=8, device="cpu", precision="fp32", compile=False, seconds=0.02,
        warmup=0)
    assert seen == [8, 4, 2] and used == 2 and status == "ok"
    assert timing.images % 2 == 0

    def always(bm_, *, batch_size, **kw):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(tp, "measure", always)
    timing, used, status = tp.measure_with_backoff(
        bm, batch_size=2, device="cpu", precision="fp32", compile=False, seconds=0.02,
        warmup=0)
    assert timing is None and used == 1 and status == "oom"


def test_other_errors_are_not_swallowed_as_oom(model_file, monkeypatch):
    path, _ = model_file
    bm = tp.load_bench_model(str(path))

    def broken(bm_, *, batch_size, **kw):
        raise ValueError("shape mismatch")

    monkeypatch.setattr(tp, "measure", broken)
    with pytest.raises(ValueError):
        tp.measure_with_backoff(bm, batch_size=2, device="cpu", precision="fp32",
                                compile=False, seconds=0.02, warmup=0)


def test_dataloader_modes(model_file, tmp_path):
    path, chips = model_file
    out = tmp_path / "d.csv"
    rows = tp.run_bench(_opts(path, out, precisions=["fp32"], batch_sizes=[2],
                              dataloader=chips))
    assert [r["mode"] for r in rows] == ["model", "read", "pipeline"]
    assert all(r["status"] == "ok" for r in rows)
    shares = tp.pipeline_shares(rows)
    assert len(shares) == 1 and 0.0 <= shares[0]["input_share"] <= 1.0


def test_registry_model_and_unknown(tmp_path):
    bm = tp.load_bench_model("tiny")
    assert bm.chip_size == 32 and bm.macs > bm.encoder_macs > 0
    with pytest.raises(tp.NotFoundError):
        tp.load_bench_model("no-such-model")
    with pytest.raises(tp.NotFoundError):
        tp.load_bench_model(str(tmp_path / "missing.pt"))


def _one_line_error(result):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output


def test_bench_cli(model_file, tmp_path):
    path, _ = model_file
    runner = CliRunner()
    out = tmp_path / "cli.csv"
    ok = runner.invoke(app, ["bench", str(path), "--batch-sizes", "1", "--seconds", "0.05",
                             "--warmup", "1", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "img/s" in ok.output and out.is_file()
    bad = [
        ["bench", str(path), "--precision", "fp8", "--out", str(out)],
        ["bench", str(path), "--compile", "maybe", "--out", str(out)],
        ["bench", str(path), "--batch-sizes", "a,b", "--out", str(out)],
        ["bench", str(path), "--batch-sizes", "0", "--out", str(out)],
        ["bench", "no-such-model", "--out", str(out)],
        ["bench", str(path), "--dataloader", str(tmp_path), "--out", str(out)],
    ]
    for args in bad:
        _one_line_error(runner.invoke(app, args))
