"""Distillation: student construction, the loss on hand-computed cases, the depth choice rule,
an end-to-end fixed and ``auto`` run on a synthetic chip folder, and CLI bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from chipfolder import write_chip_folder
from terrastill.cli import app
from terrastill.errors import BadInputError
from terrastill.models.modelfile import load_model_file, read_card
from terrastill.models.registry import build_model, make_arch
from terrastill.training.depth_search import candidate_depths, choose_depth, within_tolerance
from terrastill.training.distill import (
    DistillOptions,
    distill,
    distillation_loss,
    feature_loss,
    kl_to_teacher,
    make_student,
    parse_feature_pairs,
    resolve_feature_pairs,
)
from terrastill.training.losses import build_loss
from terrastill.training.train import TrainOptions, fit

FAST_ENC = {"depth": 3, "embed_dim": 48, "num_heads": 2}
FAST = {"encoder_overrides": FAST_ENC, "head": {"channels": 32}, "progress": False}


def _teacher_model(depth: int = 4, task: str = "segmentation"):
    torch.manual_seed(0)
    arch = make_arch("tiny", task, 3, num_steps=2, chip_size=16, head={"channels": 16},
                     encoder_overrides={"depth": depth, "embed_dim": 32, "num_heads": 2})
    return build_model(arch).eval()


# --- student construction -------------------------------------------------------------------

def test_student_copies_teacher_first_blocks():
    teacher = _teacher_model(depth=4)
    student = make_student(teacher, 2)
    assert student.encoder.depth == 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        assert key in t_state, key
        assert torch.equal(value, t_state[key]), key
    assert not any(k.startswith("encoder.blocks.2.") for k in s_state)
    assert any(k.startswith("encoder.blocks.2.") for k in t_state)
    # same tokens out of block 1 as the teacher's block 1
    x = torch.randn(2, 6, 2, 16, 16)
    _, (sf,) = student.forward_features(x, return_blocks=[1])
    _, (tf,) = teacher.forward_features(x, return_blocks=[1])
    torch.testing.assert_close(sf, tf)
    # the teacher is untouched
    assert teacher.encoder.depth == 4


def test_student_lighter_head_is_fresh_where_shapes_differ():
    teacher = _teacher_model(depth=3)
    student = make_student(teacher, 1, head={"channels": 8})
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert student.arch["head"]["channels"] == 8
    assert s_state["head.neck.0.weight"].shape != t_state["head.neck.0.weight"].shape
    for key in ("encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight",
                "encoder.norm.weight"):
        assert torch.equal(s_state[key], t_state[key])
    assert student(torch.randn(1, 6, 2, 16, 16)).shape == (1, 3, 16, 16)


def test_student_depth_out_of_range():
    teacher = _teacher_model(depth=3)
    with pytest.raises(BadInputError, match=r"1\.\.3"):
        make_student(teacher, 4)
    with pytest.raises(BadInputError):
        make_student(teacher, 0)


def test_feature_pairs_parse_and_resolve():
    assert parse_feature_pairs("0:2, -1:-1") == [(0, 2), (-1, -1)]
    assert parse_feature_pairs(None) == []
    assert resolve_feature_pairs([(0, 2), (-1, -1)], 2, 6) == [(0, 2), (1, 5)]
    with pytest.raises(BadInputError):
        parse_feature_pairs("1-2")
    with pytest.raises(BadInputError):
        resolve_feature_pairs([(3, 1)], 2, 6)


# --- the loss -------------------------------------------------------------------------------

def _softmax(v):
    e = [math.exp(a) for a in v]
    return [a / sum(e) for a in e]


def _kl(pt, ps):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps, strict=True))


def test_distillation_loss_hand_computed():
    # two pixels, two classes; pixel 0 labelled 0, pixel 1 unlabelled (-1) but valid input
    s = [[2.0, 0.0], [0.5, 1.5]]
    t = [[3.0, -1.0], [-1.0, 1.0]]
    student = torch.tensor(s).T.reshape(1, 2, 1, 2)
    teacher = torch.tensor(t).T.reshape(1, 2, 1, 2)
    target = torch.tensor([[[0, -1]]])
    valid = torch.tensor([[[True, True]]])
    alpha, temp = 0.3, 2.0
    ce = -math.log(_softmax(s[0])[0])  # only the labelled pixel
    kl = [_kl(_softmax([v / temp for v in t[i]]), _softmax([v / temp for v in s[i]]))
          for i in range(2)]
    expected = alpha * ce + (1 - alpha) * temp**2 * (kl[0] + kl[1]) / 2
    loss, parts = distillation_loss("segmentation", student, teacher, target,
                                    build_loss("segmentation"), alpha, temp, valid)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert parts["task"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["kd"].item() == pytest.approx(temp**2 * (kl[0] + kl[1]) / 2, rel=1e-5)

    # an invalid input pixel drops out of the KL mean (its label is -1 anyway)
    valid2 = torch.tensor([[[True, False]]])
    loss2, _ = distillation_loss("segmentation", student, teacher, target,
                                 build_loss("segmentation"), alpha, temp, valid2)
    assert loss2.item() == pytest.approx(alpha * ce + (1 - alpha) * temp**2 * kl[0], rel=1e-5)


def test_kl_on_unlabelled_pixels_and_identity():
    logits = torch.randn(2, 4, 5, 5)
    assert kl_to_teacher(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    # nothing labelled: the task term is 0 and the teacher term still teaches
    target = torch.full((2, 5, 5), -1)
    student = torch.zeros(2, 4, 5, 5, requires_grad=True)
    loss, parts = distillation_loss("segmentation", student, logits, target,
                                    build_loss("segmentation"), 0.5, 2.0,
                                    torch.ones(2, 5, 5, dtype=torch.bool))
    assert parts["task"].item() == 0.0 and parts["kd"].item() > 0
    loss.backward()
    assert student.grad.abs().sum() > 0
    # no valid pixel at all: zero, differentiable
    z = kl_to_teacher(student, logits, 2.0, torch.zeros(2, 5, 5, dtype=torch.bool))
    assert z.item() == 0.0


def test_regression_loss_hand_computed():
    student = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    teacher = torch.tensor([1.5, 2.0, 5.0]).reshape(1, 1, 1, 3)
    target = torch.tensor([[[2.0, float("nan"), 3.0]]])
    valid = torch.tensor([[[True, True, False]]])
    task = ((1 - 2) ** 2 + 0) / 2  # finite targets: pixels 0 and 2
    kd = (0.5**2 + 0) / 2  # valid pixels: 0 and 1
    loss, parts = distillation_loss("regression", student, teacher, target,
                                    build_loss("regression"), 0.25, 2.0, valid)
    assert parts["task"].item() == pytest.approx(task)
    assert parts["kd"].item() == pytest.approx(kd)
    assert loss.item() == pytest.approx(0.25 * task + 0.75 * kd)


def test_classification_loss_and_feature_loss():
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 2.0, 0.0]])
    loss, _ = distillation_loss("classification", s, t, torch.tensor([0]),
                                    build_loss("classification"), 0.5, 1.0)
    ce = -math.log(_softmax([1.0, 0.0, -1.0])[0])
    kl = _kl(_softmax([0.0, 2.0, 0.0]), _softmax([1.0, 0.0, -1.0]))
    assert loss.item() == pytest.approx(0.5 * ce + 0.5 * kl, rel=1e-5)
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    b = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    assert feature_loss([a], [b], "mse").item() == pytest.approx(0.25)
    assert feature_loss([a], [b], "cosine").item() == pytest.approx(0.0, abs=1e-6)
    c = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert feature_loss([a], [c], "cosine").item() == pytest.approx(1.0)


# --- the depth choice -----------------------------------------------------------------------

SEARCH = [(4, 0.900), (1, 0.800), (3, 0.893), (2, 0.885), (5, float("nan"))]


def test_choose_smallest_depth_within_tolerance():
    c = choose_depth(SEARCH, 0.895, tolerance=1.0)
    assert c.depth == 2 and c.within_tolerance and c.within == (2, 3, 4)
    assert choose_depth(SEARCH, 0.895, tolerance=0.2).depth == 3
    assert choose_depth(SEARCH, 0.895, tolerance=0.0).depth == 4
    assert choose_depth(SEARCH, 0.895, tolerance=10.0).depth == 1


def test_choose_depth_none_within_takes_best():
    c = choose_depth(SEARCH, 0.95, tolerance=1.0)
    assert c.depth == 4 and not c.within_tolerance and c.within == ()
    c = choose_depth([(1, 0.5), (2, 0.5)], 0.9, 1.0)
    assert c.depth == 1  # ties: the smaller


def test_choose_depth_lower_is_better():
    rows = [(1, 1.20), (2, 1.04), (3, 0.99)]
    assert choose_depth(rows, 1.0, tolerance=5.0, mode="min").depth == 2
    assert choose_depth(rows, 1.0, tolerance=1.0, mode="min").depth == 3
    assert within_tolerance(1.05, 1.0, 5.0, "min")
    assert not within_tolerance(None, 1.0, 5.0, "min")


def test_candidate_depths():
    assert candidate_depths(6) == [1, 2, 3, 4, 5]
    assert candidate_depths(6, "4,1,2,2") == [1, 2, 4]
    assert candidate_depths(1) == [1]
    with pytest.raises(BadInputError):
        candidate_depths(6, "0,7")
    with pytest.raises(BadInputError):
        candidate_depths(6, "a")


# --- end to end -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    chips = write_chip_folder(root / "chips", n_chips=8, size=16, seed=1)
    path = fit(chips, root / "teacher", TrainOptions(model="tiny", epochs=1, batch_size=4, **FAST))
    return chips, path


def test_distill_fixed_depth_writes_student_card(teacher, tmp_path):
    chips, tpath = teacher
    opts = DistillOptions(layers=1, epochs=1, batch_size=4, progress=False, bench_seconds=0.05,
                          feature_pairs="-1:-1", alpha=0.4, temperature=3.0)
    res = distill(tpath, chips, tmp_path / "s", opts)
    card = read_card(res.model_path)
    assert card.depth == 1 and card.arch["encoder"]["depth"] == 1
    assert card.teacher["path"] == str(tpath)
    assert card.teacher["depth"] == 3
    assert card.teacher["name"] == read_card(tpath).name
    assert "val" in card.teacher["metrics"] and "miou" in card.teacher["metrics"]["val"]
    d = card.training["distillation"]
    assert d["alpha"] == 0.4 and d["temperature"] == 3.0 and d["feature_pairs"] == [[0, 2]]
    assert "miou" in card.metrics["val"]
    assert card.encoder_macs < card.teacher["encoder_macs"]
    assert card.input_spec == read_card(tpath).input_spec
    loaded = load_model_file(res.model_path)
    assert loaded.model.encoder.depth == 1
    summary = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert summary["ratios"]["encoder_macs"] > 2
    assert res.search is None


def test_distill_auto_search_report(teacher, tmp_path):
    chips, tpath = teacher
    opts = DistillOptions(layers="auto", tolerance=100.0, epochs=1, search_epochs=1,
                          batch_size=4, progress=False, bench_seconds=0.05, search_all=True)
    out = tmp_path / "auto"
    res = distill(tpath, chips, out, opts)
    assert [r["depth"] for r in res.search] == [1, 2]
    assert res.depth == 1  # tolerance 100 pp: the smallest always qualifies
    rows = json.loads((out / "search.json").read_text())
    assert [r["role"] for r in rows] == ["teacher", "candidate", "candidate", "student"]
    assert {"depth", "params", "macs", "encoder_macs", "img_s", "metric"} <= set(rows[0])
    assert (out / "search.csv").read_text().startswith("role,depth,params")
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    # resumable: finished candidates are read back, not trained again
    (out / "model.pt").unlink()
    opts2 = dataclasses_replace(opts, search_all=False)
    res2 = distill(tpath, chips, out, opts2)
    assert [r["depth"] for r in res2.search] == [1]  # stops at the first within tolerance
    assert res2.search[0]["train_seconds"] == res.search[0]["train_seconds"]


def test_distill_auto_final_run_continues_the_chosen_candidate(teacher, tmp_path):
    import torch

    from terrastill.models.modelfile import load_model_file

    chips, tpath = teacher
    opts = DistillOptions(layers="auto", tolerance=100.0, epochs=3, search_epochs=1,
                          batch_size=4, progress=False, bench_seconds=0.0)
    out = tmp_path / "auto"
    res = distill(tpath, chips, out, opts)
    weights = out / "search" / "depth-1" / "weights.pt"
    assert res.depth == 1 and weights.is_file()
    warm = res.summary["distillation"]["warm_start"]
    assert warm == {"from": "search/depth-1", "search_epochs": 1, "epochs_after": 2}
    assert len(res.summary["history"]) == 2  # epochs counts the candidate's search epoch
    # with lr 0 the final student is exactly what it started from: the candidate's weights
    # (marked here so that they cannot be mistaken for a fresh student's), or a fresh student
    state = torch.load(weights, weights_only=True)
    marked = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in state.items()}
    torch.save(marked, weights)
    for warm_start in (True, False):
        (out / "model.pt").unlink()
        distill(tpath, chips, out, dataclasses_replace(opts, lr=0.0, warm_start=warm_start))
        # parameters only: batch-norm statistics move in training mode even at lr 0
        final = dict(load_model_file(out / "model.pt").model.named_parameters())
        same = all(torch.equal(p, marked[k]) for k, p in final.items())
        assert same is warm_start


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


# --- CLI ------------------------------------------------------------------------------------

def _one_line_error(result):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output


def test_distill_cli_bad_input(teacher, tmp_path):
    chips, tpath = teacher
    runner = CliRunner()
    cases = [
        [str(tmp_path / "none.pt"), str(chips)],
        [str(tpath), str(tmp_path / "nochips")],
        [str(tpath), str(chips), "--layers", "abc"],
        [str(tpath), str(chips), "--layers", "9"],
        [str(tpath), str(chips), "--alpha", "1.5"],
        [str(tpath), str(chips), "--temperature", "0"],
        [str(tpath), str(chips), "--candidates", "0,9"],
        [str(tpath), str(chips), "--feature-pairs", "x"],
        [str(tpath), str(chips), "--layers", "1", "--feature-pairs", "3:0"],
        [str(chips / "dataset.json"), str(chips)],
    ]
    for args in cases:
        result = runner.invoke(app, ["distill", *args, "--out", str(tmp_path / "o")])
        _one_line_error(result)
    # a dataset that does not match the teacher's input spec
    other = write_chip_folder(tmp_path / "other", n_chips=4, size=16, num_steps=2)
    result = runner.invoke(app, ["distill", str(tpath), str(other), "--out", str(tmp_path / "o")])
    _one_line_error(result)
    assert not (tmp_path / "o" / "model.pt").exists()


def test_distill_cli_fixed_depth(teacher, tmp_path):
    chips, tpath = teacher
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["distill", str(tpath), str(chips), "--out", str(out),
                                      "--layers", "1", "--epochs", "1", "--batch-size", "4",
                                      "--bench-seconds", "0.05", "--feature-pairs", "-1:-1",
                                      "--feature-loss", "cosine"])
    assert result.exit_code == 0, result.output
    assert "teacher vs student" in result.output
    card = read_card(out / "model.pt")
    assert card.depth == 1 and card.training["distillation"]["feature_loss"] == "cosine"
    assert card.created_with["command"].startswith("terrastill")
