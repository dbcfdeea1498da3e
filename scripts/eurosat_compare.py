#!/usr/bin/env python
"""Encoders compared on one labelled set, with intervals: kNN and linear-probe accuracy of each
float32 embedding table, and each encoder's paired difference against the others.

``embed-bench`` puts every compression method beside float32 *within* one encoder; this script
puts encoders beside each other (e.g. EuroSAT's spectral baseline, a random and a pretrained
encoder) with the same evaluators (kNN k = 5 on cosine with train ∪ val as the database; a
standardised logistic regression, C by inner CV on train ∪ val) in two protocols:

- ``split``: the table's split (or embed-bench's seeded stratified 60/20/20 one), every encoder
  on the same test rows: accuracy with a 95 % bootstrap interval over test rows, paired
  differences with a bootstrap interval (the same resamples for every encoder) and McNemar p;
- ``cv``: repeated stratified k-fold over *all* labelled rows (every row is tested once per
  repeat, so a small set gives all of its rows to the estimate): per-row accuracy averaged
  over repeats, intervals by bootstrap over rows.

Nothing is tuned: k, the C grid and the folds are fixed beforehand.

    python scripts/eurosat_compare.py spectral=E/spectral/embeddings.parquet \\
        random=E/random/embeddings.parquet pretrained=E/pretrained/embeddings.parquet \\
        --out E/compare
    python scripts/eurosat_compare.py --smoke --out /tmp/cmp   # seconds, synthetic tables
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

K = 5
ROUNDS = 2000


def predictions(x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, test_rows: np.ndarray,
                n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """kNN and linear-probe predictions for ``test_rows``, both fit on ``fit_rows``."""
    from terrastill.embeddings import evaluate as ev

    nbrs = ev.cosine_neighbours(x[test_rows], x[fit_rows], K)
    knn = ev.vote(nbrs, y[fit_rows], n_classes)
    lin, _ = ev.linear_probe(x[fit_rows], y[fit_rows], x[test_rows], seed=seed)
    return knn, lin


def load(tables: dict[str, Path], seed: int) -> tuple[dict[str, np.ndarray], Any]:
    """Each table's vectors, checked to hold the same rows, labels and split."""
    from terrastill.embeddings.bench import load_data

    data = {name: load_data(path, seed) for name, path in tables.items()}
    first = next(iter(data.values()))
    for name, d in data.items():
        if not (np.array_equal(d.y, first.y) and np.array_equal(d.test, first.test)
                and np.array_equal(d.db, first.db)):
            raise ValueError(f"{name}: rows, labels or split differ from "
                             f"{next(iter(data))}'s; compare tables of the same images")
    return {name: d.x for name, d in data.items()}, first


def interval(values: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``values`` over resamples ``idx``."""
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def split_protocol(xs: dict[str, np.ndarray], data: Any, seed: int) -> dict[str, Any]:
    n_classes = len(data.classes)
    correct = {}
    for name, x in xs.items():
        knn, lin = predictions(x, data.y, data.db, data.test, n_classes, seed)
        correct[name] = {"knn": knn == data.y[data.test], "linear": lin == data.y[data.test]}
    idx = np.random.default_rng(seed).integers(0, len(data.test), (ROUNDS, len(data.test)))
    return summarise(correct, idx, {"test_rows": int(len(data.test)), "db_rows":
                                    int(len(data.db)), "split": data.split_source})


def cv_protocol(xs: dict[str, np.ndarray], data: Any, seed: int, folds: int,
                repeats: int) -> dict[str, Any]:
    from sklearn.model_selection import RepeatedStratifiedKFold

    y = data.y
    n_classes = len(data.classes)
    folds = int(min(folds, np.bincount(y).min()))
    rskf = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    hits = {name: {"knn": np.zeros(len(y)), "linear": np.zeros(len(y))} for name in xs}
    for fit_rows, test_rows in rskf.split(np.zeros(len(y)), y):
        for name, x in xs.items():
            knn, lin = predictions(x, y, fit_rows, test_rows, n_classes, seed)
            hits[name]["knn"][test_rows] += knn == y[test_rows]
            hits[name]["linear"][test_rows] += lin == y[test_rows]
    correct = {name: {k: v / repeats for k, v in h.items()} for name, h in hits.items()}
    idx = np.random.default_rng(seed).integers(0, len(y), (ROUNDS, len(y)))
    return summarise(correct, idx, {"rows": int(len(y)), "folds": folds, "repeats": repeats})


def summarise(correct: dict[str, dict[str, np.ndarray]], idx: np.ndarray,
              info: dict[str, Any]) -> dict[str, Any]:
    """Accuracy with intervals per encoder, paired differences for every pair (A − B)."""
    from terrastill.embeddings.evaluate import mcnemar_p

    acc = {}
    for name, c in correct.items():
        acc[name] = {}
        for ev_name, v in c.items():
            v = v.astype(np.float64)
            acc[name][ev_name] = {"acc": float(v.mean()), "ci": interval(v, idx)}
    diffs = []
    names = list(correct)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for ev_name in ("knn", "linear"):
                va = correct[a][ev_name].astype(np.float64)
                vb = correct[b][ev_name].astype(np.float64)
                row = {"a": a, "b": b, "evaluator": ev_name, "diff": float((va - vb).mean()),
                       "ci": interval(va - vb, idx)}
                if set(np.unique(np.concatenate([va, vb]))) <= {0.0, 1.0}:
                    row["mcnemar_p"] = mcnemar_p(vb.astype(bool), va.astype(bool))
                diffs.append(row)
    return {"info": info, "accuracy": acc, "differences": diffs}


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for proto, res in result.items():
        info = ", ".join(f"{k} {v}" for k, v in res["info"].items())
        lines += [f"### {proto} ({info})", "",
                  "| encoder | kNN % [95 % CI] | linear % [95 % CI] |", "|---|---|---|"]
        for name, a in res["accuracy"].items():
            cells = [f"{100 * a[e]['acc']:.1f} [{100 * a[e]['ci'][0]:.1f}, "
                     f"{100 * a[e]['ci'][1]:.1f}]" for e in ("knn", "linear")]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
        lines += ["", "| A − B | evaluator | Δ pp [95 % CI] | McNemar p |", "|---|---|---|---:|"]
        for d in res["differences"]:
            p = f"{d['mcnemar_p']:.2f}" if "mcnemar_p" in d else "–"
            lines.append(f"| {d['a']} − {d['b']} | {d['evaluator']} | {100 * d['diff']:+.1f} "
                         f"[{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] | {p} |")
        lines.append("")
    return "\n".join(lines)


def smoke_tables(root: Path) -> dict[str, Path]:
    """Two synthetic labelled tables of the same 60 rows: one informative, one noise."""
    import pandas as pd
    from shapely.geometry import box

    from terrastill.embeddings.table import write_table

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(60)], "label": [f"c{v}" for v in y],
                          "geometry": [box(i, 0, i + 1, 1) for i in range(60)]})
    out = {}
    for name, signal in (("good", 3.0), ("noise", 0.0)):
        x = rng.normal(size=(60, 8)) + signal * np.eye(8)[y]
        path = root / name / "embeddings.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_table(path, frame, x.astype(np.float32), {"encoder": name})
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="*", help="NAME=embeddings.parquet, two or more")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="synthetic tables, seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        tables = smoke_tables(args.out / "tables")
    else:
        tables = {}
        for item in args.tables:
            name, sep, path = item.partition("=")
            if not sep or not name or not Path(path).is_file():
                ap.error(f"{item!r}: expected NAME=PATH of an existing embeddings table")
            tables[name] = Path(path)
        if len(tables) < 2:
            ap.error("give two or more NAME=PATH tables")
    from terrastill.errors import BadInputError

    try:
        xs, data = load(tables, args.seed)
    except (ValueError, BadInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"split": split_protocol(xs, data, args.seed),
              "cv": cv_protocol(xs, data, args.seed, args.folds, args.repeats)}
    md = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(result, indent=2))
    (args.out / "compare.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
