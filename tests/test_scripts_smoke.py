"""Every script under scripts/ runs in CI in a seconds-long mode, so none can rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
TESTS = ROOT / "tests"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve annotations through the module
    spec.loader.exec_module(mod)
    return mod


def test_every_script_is_run_by_a_test():
    """A script is covered when some test module loads it by name and runs it; a new script
    without such a test fails here (the check that would have caught a renamed import)."""
    sources = {p.name: p.read_text() for p in TESTS.glob("test_*.py")}
    missing = []
    for script in sorted(SCRIPTS.glob("*.py")):
        name = script.stem
        pattern = re.compile(rf"""(load\(\s*["']{name}["']|["']{name}\.py["'])""")
        if not any(pattern.search(text) for text in sources.values()):
            missing.append(script.name)
    assert not missing, f"scripts without a smoke test: {missing}"


@pytest.mark.slow
def test_bench_distill_smoke(small_world, tmp_path):
    mod = load("bench_distill")
    out = tmp_path / "out"
    assert mod.main(["--smoke", "--world", str(small_world["root"]), "--work",
                     str(tmp_path / "work"), "--out", str(out),
                     "--reference", f"flood={small_world['root']}"]) == 0
    res = json.loads((out / "results.json").read_text())
    (task,) = res["tasks"]
    assert task["task"] == "flood"
    teacher, auto = task["rows"][0], task["rows"][1]
    assert teacher["model"] == "teacher" and auto["model"].startswith("auto")
    assert teacher["depth"] == 2 and auto["depth"] == 1
    assert task["ratios"]["macs"] > 1 and auto["cpu_img_s"] > 0
    assert "auto student vs teacher" in (out / "table.md").read_text()
    # the world's truth judged the depth search and scores every model on the test chips
    cands = [r for r in task["search"] if r["role"] == "candidate"]
    assert cands and all(r["evidence"].startswith("dense reference") for r in cands), cands
    assert all(0 <= r["ref_miou"] <= 1 and r["ref_pixels"] > 0 for r in task["rows"])
    assert "dense_reference_within_1pp" in task["ratios"]["targets_met"]


@pytest.mark.pgstac
@pytest.mark.slow
def test_start_stac_server_smoke(capsys):
    from stac_server import find_pg_bin, postgis_available

    pg_bin = find_pg_bin()
    if pg_bin is None or not postgis_available(pg_bin):
        pytest.skip("PostgreSQL/PostGIS not installed: run scripts/setup_pgstac.sh")
    assert load("start_stac_server").main(["--smoke"]) == 0
    assert re.search(r"/search returned [1-9]\d* item", capsys.readouterr().out)


@pytest.mark.pgstac
@pytest.mark.slow
def test_reliability_report_smoke(small_world, tmp_path, capsys):
    from stac_server import find_pg_bin, postgis_available

    pg_bin = find_pg_bin()
    if pg_bin is None or not postgis_available(pg_bin):
        pytest.skip("PostgreSQL/PostGIS not installed: run scripts/setup_pgstac.sh")
    out = tmp_path / "matrix.json"
    code = load("reliability_report").main(["--smoke", "--world", str(small_world["root"]),
                                            "--json", str(out)])
    assert code == 0, capsys.readouterr()
    cells = json.loads(out.read_text())
    assert {(c["stage"], c["rate"]) for c in cells} == {
        (s, r) for s in ("search", "asset-read", "chips/api") for r in (0.0, 1.0)}
    assert all(c["silent_corruptions"] == 0 for c in cells)
    clean = [c for c in cells if c["rate"] == 0.0]
    assert all(c["runs"] >= 1 and c["crashes"] == 0 for c in clean)
