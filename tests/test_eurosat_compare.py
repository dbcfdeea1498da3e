"""scripts/eurosat_compare.py: encoders side by side with intervals, bad input exits 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_scripts_smoke import load


def test_eurosat_compare_smoke_separates_signal_from_noise(tmp_path):
    mod = load("eurosat_compare")
    assert mod.main(["--smoke", "--out", str(tmp_path), "--repeats", "2"]) == 0
    res = json.loads((tmp_path / "compare.json").read_text())
    for proto in ("split", "cv"):
        acc = res[proto]["accuracy"]
        assert acc["good"]["knn"]["acc"] > 0.9 > 0.6 > acc["noise"]["knn"]["acc"]
        lo, hi = acc["noise"]["linear"]["ci"]
        assert lo <= acc["noise"]["linear"]["acc"] <= hi
        (knn,) = [d for d in res[proto]["differences"] if d["evaluator"] == "knn"]
        assert knn["a"] == "good" and knn["ci"][0] > 0  # the interval excludes 0
    assert res["cv"]["info"] == {"rows": 60, "folds": 5, "repeats": 2}
    assert "mcnemar_p" in res["split"]["differences"][0]
    assert "| good − noise | knn |" in (tmp_path / "compare.md").read_text()


def test_interval_is_the_bootstrap_percentiles():
    mod = load("eurosat_compare")
    v = np.array([0.0, 1.0, 1.0, 1.0])
    idx = np.array([[0, 0, 0, 0], [1, 2, 3, 1], [0, 1, 2, 3]])
    lo, hi = mod.interval(v, idx)
    assert lo == pytest.approx(np.percentile([0.0, 1.0, 0.75], 2.5))
    assert hi == pytest.approx(np.percentile([0.0, 1.0, 0.75], 97.5))


def test_eurosat_compare_bad_input_exits_2(tmp_path, capsys):
    mod = load("eurosat_compare")
    with pytest.raises(SystemExit) as exc:
        mod.main(["a=/nonexistent.parquet", "b=/nonexistent2.parquet", "--out",
                  str(tmp_path / "o")])
    assert exc.value.code == 2
    assert not (tmp_path / "o").exists()
    tables = mod.smoke_tables(tmp_path / "t")
    with pytest.raises(SystemExit) as exc:
        mod.main([f"good={tables['good']}", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "two or more" in capsys.readouterr().err
