"""embed-bench: evaluators, statistics, the CLI on synthetic tables and the real EuroSAT path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.embeddings import evaluate as ev
from terrastill.embeddings.bench import parse_bench_methods, run_bench
from terrastill.embeddings.table import write_table
from terrastill.errors import BadInputError

runner = CliRunner()
FEW = "int8,int4,binary,binary/hamming,pca:4+int8,pca:64+int8,rot:int4"


def labelled(path: Path, n: int = 240, d: int = 24, classes: int = 4, split: bool = True,
             labels: bool = True, seed: int = 0) -> Path:
    """Gaussian classes around random centres: separable, not trivially (overlap ~ noise)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.standard_normal((classes, d)) * 1.2
    x = (centres[y] + rng.standard_normal((n, d)) + 2.0).astype(np.float32)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)],
                          "geometry": [shapely.Point(i * 1e-3, 0.0) for i in range(n)]})
    frame["label"] = [f"class{v}" for v in y] if labels else None
    if split:
        frame["split"] = np.array(["train", "train", "train", "val", "test"])[
            (np.arange(n) // classes) % 5]
    return write_table(path, frame, x, {"model": {"name": "synthetic"}})


def test_mcnemar_exact_and_bootstrap():
    ref = np.array([True] * 20 + [False] * 6)
    got = np.array([True] * 20 + [True] * 6)  # 6 discordant pairs, all one way
    assert ev.mcnemar_p(ref, got) == pytest.approx(2 * 0.5 ** 6)
    assert ev.mcnemar_p(ref, ref) == 1.0
    idx = ev.bootstrap_indices(len(ref), 500, seed=1)
    lo, hi = ev.bootstrap_diff(ref, got, idx)
    assert 0 < lo <= 6 / 26 <= hi
    np.testing.assert_array_equal(idx, ev.bootstrap_indices(len(ref), 500, seed=1))


def test_knn_vote_and_neighbours():
    base = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    nb = ev.cosine_neighbours(np.array([[1.0, 0.05], [0.05, 1.0]]), base, 3)
    np.testing.assert_array_equal(nb[:, :2], [[0, 1], [2, 3]])
    # a 2–2 tie goes to the class of the nearer neighbour
    assert ev.vote(np.array([[3, 0, 2, 1]]), np.array([0, 1, 0, 1]), 2)[0] == 1
    codes = np.packbits(np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]], np.uint8), axis=1)
    np.testing.assert_array_equal(ev.hamming_neighbours(codes[:1], codes, 3), [[0, 1, 2]])
    assert ev.recall_at(np.array([[0, 1]]), np.array([[1, 2]])) == 0.5


def test_parse_bench_methods():
    names = [m.name for m in parse_bench_methods("int8, binary/hamming, int8")]
    assert names == ["float32", "int8", "binary/hamming"]
    defaults = [m.name for m in parse_bench_methods(None)]
    assert {"rot:int2", "rot:binary", "rot:binary/hamming"} <= set(defaults)
    for bad in ("int4/hamming", "binary/cosine", "int9", " , "):
        with pytest.raises(BadInputError):
            parse_bench_methods(bad)


def test_embed_bench_cli_on_synthetic_table(tmp_path):
    src = labelled(tmp_path / "emb.parquet")
    out = tmp_path / "bench"
    res = runner.invoke(app, ["embed-bench", str(src), "--out", str(out), "--methods", FEW,
                              "--bootstrap", "300", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"results.csv", "results.md", "results.json",
                                              "pareto.png"}
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert list(rows) == ["float32", *FEW.split(",")]
    f32, i8 = rows["float32"], rows["int8"]
    assert float(f32["knn_acc"]) > 0.7 and float(f32["linear_acc"]) > 0.7  # chance: 0.25
    for name in ("knn", "linear"):  # int8 inside the bootstrap interval of float32
        assert float(i8[f"{name}_ci_lo"]) <= 0.0 <= float(i8[f"{name}_ci_hi"])
        assert float(i8[f"{name}_mcnemar_p"]) > 0.05
    assert int(i8["bytes_per_embedding"]) == 24 and float(i8["ratio"]) == 4.0
    assert rows["binary/hamming"]["evaluator"] == "hamming"
    assert int(rows["binary"]["bytes_per_embedding"]) == 3
    assert 0 < float(rows["pca:4+int8"]["pca_explained_variance"]) < 1
    assert rows["pca:64+int8"]["status"].startswith("skipped: K = 64")
    assert float(rows["int8"]["recall_at_10"]) >= float(rows["int4"]["recall_at_10"])
    summary = json.loads((out / "results.json").read_text())
    assert summary["counts"] == {"train": 144, "db": 192, "test": 48}
    assert summary["methods"][0]["worst_class_knn"] is None
    md = (out / "results.md").read_text()
    assert "| int8 | 24 | 4× |" in md and "48 test" in md
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # deterministic with --seed
    again = runner.invoke(app, ["embed-bench", str(src), "--out", str(tmp_path / "b2"),
                                "--methods", FEW, "--bootstrap", "300", "--seed", "1"])
    assert again.exit_code == 0
    assert (tmp_path / "b2/results.csv").read_text() == (out / "results.csv").read_text()


def test_embed_bench_without_split_makes_a_stratified_one(tmp_path):
    src = labelled(tmp_path / "emb.parquet", split=False)
    summary = run_bench(src, parse_bench_methods("int8"), seed=2, bootstrap=50)
    assert summary["split"].startswith("stratified") and summary["counts"]["test"] == 48


@pytest.mark.parametrize("case", ["no-labels", "bad-method", "compressed", "k-too-big"])
def test_embed_bench_bad_input(tmp_path, case):
    src = labelled(tmp_path / "emb.parquet", labels=case != "no-labels")
    args = ["embed-bench", str(src), "--out", str(tmp_path / "out"), "--methods", "int8"]
    word = {"no-labels": "table has no labels", "bad-method": "int5",
            "compressed": "compressed table", "k-too-big": "--k"}[case]
    if case == "bad-method":
        args[-1] = "int5"
    elif case == "compressed":
        runner.invoke(app, ["compress", str(src), "-m", "int8", "--out", str(tmp_path / "c")])
        args[1] = str(tmp_path / "c")
    elif case == "k-too-big":
        args += ["--k", "100000"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and word in " ".join(lines), res.output
    assert not (tmp_path / "out").exists()


def test_embed_bench_on_real_eurosat_band_means(real_data, tmp_path):
    """The real-data path: per-band means of the 13 EuroSAT bands as a cheap embedding."""
    from terrastill.embeddings.images import (
        list_images,
        parse_band_names,
        read_image,
        stratified_split,
    )

    records = list_images(real_data / "eurosat")
    bands = parse_band_names("eurosat")
    images = [read_image(r, bands, given=bands, scale=1e-4) for r in records]
    x = np.array([np.nanmean(im.array, axis=(1, 2)) for im in images], np.float32)
    labels = [r.label for r in records]
    frame = pd.DataFrame({"id": [r.id for r in records],
                          "geometry": [im.footprint for im in images], "label": labels,
                          "split": stratified_split(labels, seed=0)})
    src = write_table(tmp_path / "eurosat.parquet", frame, x, {"model": {"name": "band-mean"}})
    summary = run_bench(src, parse_bench_methods("int8,binary/hamming,pca:8+int8"), seed=0,
                        bootstrap=200)
    rows = {r["method"]: r for r in summary["methods"]}
    assert summary["dim"] == 13 and len(summary["classes"]) == 10 and summary["rows"] == 216
    assert rows["float32"]["knn_acc"] > 0.3 and rows["float32"]["linear_acc"] > 0.3  # chance 0.1
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["int8"]["knn_ci_lo"] <= 0 <= rows["int8"]["knn_ci_hi"]
    assert rows["pca:8+int8"]["pca_explained_variance"] > 0.9
