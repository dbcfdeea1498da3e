#!/usr/bin/env python
"""Linear probes of the demo world's zones from their embedding statistics.

The world, encoder and pre-flood embeddings of ``eval_change.py`` (made here when ``--work``
does not hold them) are summarised per block of the world's zones layer with
``terrastill zonal`` (coverage-weighted mean and std of every dimension), then every
truth-derived attribute is probed with ``terrastill probe``'s model (ridge R² or logistic
accuracy, 5-fold): spatial block folds and random folds side by side, plus the in-sample fit
(the reference's "upper bound") and, for classes, the majority baseline.

    python scripts/probe_zones.py --work /tmp/ec-real --out /work/evidence/issue17
    python scripts/probe_zones.py --smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = ("water_share", "urban_share", "crop_share", "forest_share", "bare_share",
           "log_area_km2", "urban")


def _eval_change() -> Any:
    spec = importlib.util.spec_from_file_location(
        "eval_change", Path(__file__).with_name("eval_change.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(work: Path, out: Path, smoke: bool) -> dict[str, Any]:
    import geopandas as gpd

    from terrastill.embeddings.probe import probe
    from terrastill.errors import BadInputError

    ec = _eval_change()
    t0 = time.perf_counter()
    prep = ec.prepare(work, smoke)
    emb = prep["emb"][("before", "float")]
    stats = out / "zone_stats.parquet"
    ec.cli("zonal", emb, prep["world"]["zones"], "--out", stats, "--id-col", "zone_id",
           "--max-area", "25", "--pca-rgb", out / "zones_pca_rgb.tif")
    rejected = len(stats.with_name(stats.stem + ".rejected.csv").read_text().splitlines()) - 1
    table = {}
    for target in TARGETS:
        row: dict[str, Any] = {}
        try:
            r = probe(stats, target, folds=5)
        except BadInputError as exc:
            table[target] = {"error": str(exc)}
            continue
        row = {"kind": r["kind"], "metric": r["metric"], "n": r["n"],
               "in_sample": r["in_sample"], "majority": r.get("majority")}
        for cv in ("spatial", "random"):
            row[cv] = r[cv]
        table[target] = row
    zones = gpd.read_parquet(prep["world"]["zones"])
    res = {"machine": "2-core AMD EPYC Zen 4 (shared with other jobs), CPU only",
           "smoke": smoke, "zones": len(zones), "kept": len(gpd.read_parquet(stats)),
           "rejected": rejected, "embedding": str(emb), "date": prep["dates"]["before"]
           .isoformat(), "features": "mean + std of every embedding dimension",
           "urban_share_of_blocks": float(zones["urban"].mean()), "probes": table,
           "seconds": round(time.perf_counter() - t0, 1)}
    (out / "probe_zones.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / "probe_zones.md").write_text(markdown(res))
    return res


def _cell(r: dict[str, Any]) -> str:
    if "error" in r:
        return "n/a"
    return f"{r['mean']:.3f} ± {r['std']:.3f}"


def markdown(res: dict[str, Any]) -> str:
    lines = [f"Linear probes of {res['kept']} zones ({res['rejected']} rejected) from "
             f"{res['features']}; 5-fold CV, mean ± std over folds.", "",
             "| Attribute | Metric | Spatial CV | Random CV | In-sample | Majority |",
             "|---|---|---|---|---|---|"]
    for target, r in res["probes"].items():
        if "error" in r:
            lines.append(f"| {target} | – | n/a: {r['error']} | | | |")
            continue
        maj = f"{r['majority']:.3f}" if r.get("majority") is not None else "–"
        lines.append(f"| {target} | {r['metric']} | {_cell(r['spatial'])} | "
                     f"{_cell(r['random'])} | {r['in_sample']:.3f} | {maj} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="results folder (default: a temporary one)")
    ap.add_argument("--work", type=Path, help="eval_change.py's work folder (reused)")
    ap.add_argument("--smoke", action="store_true", help="a tiny world")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp) / "work"
        out = args.out or Path(tmp) / "out"
        work.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        res = run(work, out, args.smoke)
        sys.stdout.write(markdown(res))


if __name__ == "__main__":
    main()
