"""The depth search says when its evidence cannot resolve the tolerance, and can use a dense
reference instead of the few validation labels."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.models.modelfile import read_card

runner = CliRunner()


@pytest.mark.slow
def test_search_on_labels_warns_and_on_the_reference_decides(flood_model, flood_dataset,
                                                             small_world, tmp_path):
    args = ["distill", str(flood_model), str(flood_dataset), "--layers", "auto",
            "--candidates", "1,2", "--search-all", "--search-epochs", "1", "--epochs", "1",
            "--bench-seconds", "0", "--tolerance", "0.5"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "labels")], terminal_width=200)
    assert res.exit_code == 0, res.output
    ev = read_card(tmp_path / "labels" / "model.pt").training["distillation"]["search_evidence"]
    assert ev["source"] == "val labels" and ev["teacher_interval"] is not None
    # a few dozen labelled pixels cannot pin mIoU down to half a point
    assert ev["resolves_tolerance"] is False and "not resolved" in ev["note"]
    assert "warning:" in res.output and "95 %" in res.output

    res = runner.invoke(app, [*args, "--reference", small_world["root"], "--out",
                              str(tmp_path / "ref")], terminal_width=200)
    assert res.exit_code == 0, res.output
    ev_ref = read_card(tmp_path / "ref" / "model.pt").training["distillation"][
        "search_evidence"]
    assert ev_ref["source"].startswith("dense reference")
    assert ev_ref["labelled_pixels"] > 5 * ev["labelled_pixels"]
    rows = json.loads((tmp_path / "ref" / "search.json").read_text())
    cands = [r for r in rows if r["role"] == "candidate"]
    assert len(cands) == 2 and all(r["evidence"] == ev_ref["source"] for r in cands)
    assert all(r["metric_interval"][0] <= r["metric"] <= r["metric_interval"][1]
               for r in cands)
    assert "judged on the dense reference" in res.output
