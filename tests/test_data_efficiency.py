"""scripts/data_efficiency.py's report: paired differences with t-intervals and a pooled row."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test_scripts_smoke import load


def _script():
    return load("data_efficiency")


def test_paired_interval_is_students_t():
    mod = _script()
    mean, lo, hi = mod.paired_interval(np.array([0.1, 0.2, 0.3]))
    # mean 0.2, sd 0.1, n 3: half-width t(0.975, 2) = 4.3027 × 0.1 / sqrt(3)
    assert mean == pytest.approx(0.2)
    assert hi - mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert mean - lo == pytest.approx(hi - mean)
    one = mod.paired_interval(np.array([0.4]))
    assert one[0] == pytest.approx(0.4) and math.isnan(one[1]) and math.isnan(one[2])


def test_report_gives_intervals_and_the_pooled_small_sizes(tmp_path):
    mod = _script()
    rows = []
    deltas = {"10": [0.1, 0.2, 0.3], "50": [0.0, 0.1, -0.1], "100": [0.5, 0.5, 0.5]}
    for size, ds in deltas.items():
        for seed, d in enumerate(ds):
            base = {"size": size, "seed": seed, "chips": 3, "observations": int(size),
                    "water_iou": None, "pixels": 10, "seconds": 0.0}
            rows.append({**base, "arm": "scratch", "weights": None, "encoder_lr_scale": 1.0,
                         "layer_decay": 1.0, "miou": 0.5})
            rows.append({**base, "arm": "pretrained", "weights": "m.pt",
                         "encoder_lr_scale": 1.0, "layer_decay": 1.0, "miou": 0.5 + d})
    md = mod.report(rows, tmp_path)
    lines = md.splitlines()
    ten = next(line for line in lines if line.startswith("| 10:"))
    _, lo, hi = mod.paired_interval(np.array(deltas["10"]))
    assert f"[{lo:+.3f}, {hi:+.3f}]" in ten and "| 3 | 3 |" in ten
    pooled = next(line for line in lines if line.startswith("| pooled, ≤ 50"))
    mean, lo, hi = mod.paired_interval(np.array(deltas["10"] + deltas["50"]))
    assert f"{mean:+.3f}" in pooled and f"[{lo:+.3f}, {hi:+.3f}]" in pooled
    assert "| 4 | 6 pairs |" in pooled  # size 100 stays out of the pooled row
    assert (tmp_path / "data_efficiency.md").read_text() == md


@pytest.mark.slow
def test_frozen_recipe_trains_only_the_head(small_world, flood_model, tmp_path):
    """``--recipes 1:1,frozen`` on the tiny test world, from a trained encoder: the frozen arm
    (train --freeze-encoder) keeps the encoder bit for bit while the 1:1 arm changes it, and
    the report names the recipe."""
    import json

    import torch

    from terrastill.models.modelfile import load_model_file

    mod = _script()
    assert mod.parse_recipes("0.1:1,frozen") == {"pretrained-e0.1-d1": (0.1, 1.0),
                                                  "pretrained-frozen": (mod.FROZEN, 1.0)}
    assert mod.main(["--smoke", "--world", str(small_world["root"]), "--out", str(tmp_path),
                     "--pretrained", str(flood_model), "--recipes", "1:1,frozen",
                     "--no-scratch"]) == 0
    rows = json.loads((tmp_path / "data_efficiency.json").read_text())
    assert {r["arm"]: r["freeze_encoder"] for r in rows} == {"pretrained": False,
                                                            "pretrained-frozen": True}
    start = load_model_file(flood_model).model.state_dict()

    def encoder(arm: str) -> dict[str, torch.Tensor]:
        """The encoder's learnt parameters (not the fixed sin-cos ``pos_embed`` buffer, which is
        rebuilt for these chips' time steps)."""
        model = load_model_file(tmp_path / f"teacher-5-{arm}-s0" / "model.pt").model
        return {k: v for k, v in model.named_parameters() if k.startswith("encoder.")}

    frozen, tuned = encoder("pretrained-frozen"), encoder("pretrained")
    assert frozen and all(torch.equal(v, start[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, start[k]) for k, v in tuned.items())
    md = (tmp_path / "data_efficiency.md").read_text()
    assert "pretrained-frozen: from" in md and "encoder frozen" in md
