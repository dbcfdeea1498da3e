#!/usr/bin/env python
"""Chip-creation throughput on the demo world: chips/s with 1 and 2 workers vs raw reads.

Runs ``make_chips`` on a demo world (built if missing) sequentially and with a 2-process
local Dask cluster, then times plain rasterio windowed reads of exactly the assets and
windows the chips used. Prints a table and a JSON line; figures are ratios within one run.

    python scripts/bench_chips.py --world demo-out/world --task flood
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import rasterio
from rasterio.windows import from_bounds
from rich.console import Console
from rich.table import Table

from terrastill.data.build import ChipJob, make_chips
from terrastill.data.chips import ReadOptions
from terrastill.data.observations import ObservationOptions
from terrastill.data.temporal import TemporalOptions
from terrastill.world.build import build_world, load_manifest
from terrastill.world.config import WorldConfig


def raw_read_seconds(dataset: Path) -> tuple[float, int]:
    """Time plain windowed reads of every asset window the dataset's chips used."""
    index = gpd.read_parquet(dataset / "index.parquet")
    reads = []
    for rec in index.itertuples():
        t = rec.transform
        bounds = (t[2], t[5] + t[4] * rec.height, t[2] + t[0] * rec.width, t[5])
        for step in json.loads(rec.step_hrefs):
            for hrefs in step.values():
                reads += [(h, bounds) for h in hrefs]
    t0 = time.perf_counter()
    for href, bounds in reads:
        with rasterio.open(href) as src:
            src.read(1, window=from_bounds(*bounds, transform=src.transform), boundless=False)
    return time.perf_counter() - t0, len(reads)


def run(world: Path, task: str = "flood", workers: tuple[int, ...] = (1, 2),
        chip_size: int = 32) -> dict:
    """Benchmark chip creation on ``world``; returns the figures."""
    m = load_manifest(world)
    t = m["tasks"][task]
    job = ChipJob(read=ReadOptions(temporal=TemporalOptions(3, 14, 7, 60)), chip_size=chip_size,
                  min_valid=0.3)
    obs = ObservationOptions(classes=t["classes"])
    results: dict = {"task": task}
    last = None
    for n in workers:
        out = Path(tempfile.mkdtemp(prefix=f"bench-chips-{n}-"))
        t0 = time.perf_counter()
        res = make_chips(t["observations"], out / "ds", m["catalog"], job, obs, workers=n)
        dt = time.perf_counter() - t0
        results[f"workers_{n}"] = {"chips": res.chips, "seconds": round(dt, 3),
                                   "chips_per_s": round(res.chips / dt, 3)}
        if last is not None:
            shutil.rmtree(last, ignore_errors=True)
        last = out
    assert last is not None
    raw_s, n_reads = raw_read_seconds(last / "ds")
    chips = results[f"workers_{workers[0]}"]["chips"]
    results["raw_reads"] = {"reads": n_reads, "seconds": round(raw_s, 3),
                            "chips_per_s": round(chips / raw_s, 3) if raw_s else None}
    base = results[f"workers_{workers[0]}"]["chips_per_s"]
    for n in workers[1:]:
        results[f"speedup_{n}_vs_{workers[0]}"] = round(
            results[f"workers_{n}"]["chips_per_s"] / base, 3)
    results["pipeline_vs_raw_read"] = round(base / results["raw_reads"]["chips_per_s"], 3)
    shutil.rmtree(last, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=None, help="world folder (built if absent)")
    ap.add_argument("--task", default="flood")
    ap.add_argument("--chip-size", type=int, default=32)
    args = ap.parse_args()
    world = args.world or Path(tempfile.mkdtemp(prefix="bench-world-"))
    if not (world / "world.json").exists():
        build_world(world, WorldConfig())
    res = run(world, args.task, chip_size=args.chip_size)
    table = Table(title="chip creation throughput (one run)")
    for col in ("mode", "chips", "seconds", "chips/s"):
        table.add_column(col)
    for k in ("workers_1", "workers_2"):
        r = res[k]
        table.add_row(k, str(r["chips"]), str(r["seconds"]), str(r["chips_per_s"]))
    rr = res["raw_reads"]
    table.add_row(f"raw windowed reads ({rr['reads']})", "", str(rr["seconds"]),
                  str(rr["chips_per_s"]))
    Console().print(table)
    Console().print(f"2 workers / 1 worker: {res['speedup_2_vs_1']}×; pipeline / raw reads: "
                    f"{res['pipeline_vs_raw_read']}×")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
