"""--head-channels auto: the student's head shrinks with its depth."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.errors import BadInputError
from terrastill.models.modelfile import load_model_file, read_card
from terrastill.training.distill import make_student
from terrastill.training.head_sizing import (
    auto_head_channels,
    parse_head_channels,
    resolve_head,
    split_macs,
)

runner = CliRunner()


def test_auto_head_keeps_the_head_within_its_share(flood_model):
    teacher = load_model_file(flood_model).model
    enc_t, head_t = split_macs(teacher)
    sized = auto_head_channels(teacher, 1, 2)
    c = sized["channels"]
    assert 8 <= c < teacher.arch["head"]["channels"]
    student = make_student(teacher, 1, resolve_head(teacher, 1, {"channels": "auto"}, 2))
    assert student.arch["head"]["channels"] == c
    enc_s, head_s = split_macs(student)
    assert head_s <= head_t * enc_s / enc_t or c == max(8, 2)
    # against the teacher's own head on the same depth, total MACs fall
    plain = make_student(teacher, 1)
    assert sum(split_macs(student)) < sum(split_macs(plain))
    # at the teacher's own depth the share is the whole head: nothing to cut
    assert auto_head_channels(teacher, teacher.encoder.depth, 2)["channels"] == \
        teacher.arch["head"]["channels"]


def test_head_channels_parsing_and_the_class_floor(flood_model):
    teacher = load_model_file(flood_model).model
    assert parse_head_channels("auto") == "auto" and parse_head_channels("16") == 16
    assert parse_head_channels("teacher") is None
    for bad in ("x", "0"):
        with pytest.raises(BadInputError):
            parse_head_channels(bad)
    with pytest.raises(BadInputError, match="fewer than the 2 classes"):
        resolve_head(teacher, 1, {"channels": 1}, 2)


@pytest.mark.slow
def test_distill_with_an_auto_head(flood_model, flood_dataset, tmp_path):
    res = runner.invoke(app, ["distill", str(flood_model), str(flood_dataset), "--layers", "1",
                              "--head-channels", "1", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "--head-channels 1" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["distill", str(flood_model), str(flood_dataset), "--layers", "1",
                              "--head-channels", "auto", "--epochs", "1", "--bench-seconds",
                              "0", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    card = read_card(tmp_path / "s" / "model.pt")
    teacher = load_model_file(flood_model).model
    assert card.arch["head"]["channels"] == auto_head_channels(teacher, 1, 2)["channels"]
    assert card.teacher["macs"] / card.macs > card.teacher["encoder_macs"] / card.encoder_macs \
        * 0.5  # the head no longer keeps the total cost near the teacher's
