"""The teacher on the demo world's flood task, through the real pipeline (world → chips →
fit): clearly better than the majority class, and as good as the NDWI > 0 water rule."""

from __future__ import annotations

from terrastill.training.train import evaluate, rule_baseline


def test_teacher_beats_majority_and_matches_the_ndwi_rule(flood_model, flood_dataset):
    scores = {}
    for split in ("val", "test"):
        m = evaluate(flood_model, flood_dataset, split)
        rule = rule_baseline(flood_dataset, split)
        if m["n_pixels"] == 0:
            continue
        scores[split] = (m["miou"], m["baseline_majority"]["miou"], rule["miou"])
        assert m["miou"] >= m["baseline_majority"]["miou"] + 0.25, scores
        # water is spectrally obvious: the learned model must not do worse than the rule
        assert m["miou"] >= rule["miou"] - 0.05, scores
    assert scores, "no labelled pixels in val or test"
