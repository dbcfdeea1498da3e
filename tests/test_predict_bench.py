"""scripts/bench_predict.py: bare reads with the reader's threaded decoding, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import rasterio.env

from test_scripts_smoke import load


def _load():
    return load("bench_predict")


def test_bare_reads_time_both_ways_of_decoding(small_world, monkeypatch):
    """Bare reads run plain (one decoding thread) or with the reader's GDAL options
    (tiles decoded on every core), each timing every file."""
    mod = _load()
    monkeypatch.delenv("GDAL_NUM_THREADS", raising=False)
    files = sorted(str(p) for p in (Path(small_world["root"]) / "scenes").glob("*/*/B04.tif"))
    seen: list[str | None] = []
    real_open = mod.rasterio.open

    def spy(*args, **kwargs):
        seen.append(rasterio.env.getenv().get("GDAL_NUM_THREADS"))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(mod.rasterio, "open", spy)
    assert mod.bare_read_seconds(files[:3], small_world["bbox"]) > 0
    assert mod.bare_read_seconds(files[:3], small_world["bbox"], threads=True) > 0
    assert seen == [None] * 3 + ["ALL_CPUS"] * 3


def test_negative_read_ahead_is_refused(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_predict.py"
    res = subprocess.run([sys.executable, str(script), "m.pt", "--world", str(tmp_path),
                          "--read-ahead", "-1"], capture_output=True, text=True)
    assert res.returncode == 2 and "--read-ahead -1" in res.stderr
