#!/usr/bin/env python
"""Chip-creation throughput on the demo world: chips/s with 1 and 2 workers vs raw reads.

Runs ``make_chips`` on a demo world (built if missing) sequentially and with a 2-process
local Dask cluster, then times plain rasterio windowed reads of exactly the assets and
windows the chips used. Prints a table and a JSON line; figures are ratios within one run.

    python scripts/bench_chips.py --world demo-out/world --task flood [--peer odc-stac]

``--peer odc-stac`` also times odc-stac's ``load`` on the same windows, items and bands.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
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


def odc_stac_seconds(dataset: Path, catalog: str) -> tuple[float, int]:
    """Time odc-stac's ``load`` on exactly the chips' windows, items and bands (the peer a user
    would reach for): one geobox per chip, one load per step, every asset read with nearest
    resampling into the chip grid. Returns (seconds, loads)."""
    import warnings

    import pystac
    from odc.geo.geobox import GeoBox
    from odc.stac import load

    items = {}
    for it in pystac.ItemCollection.from_file(catalog):
        if it.get_self_href() is None:  # relative asset hrefs resolve beside the catalogue
            it.set_self_href(str(Path(catalog).resolve()))
        items[it.id] = it
    index = gpd.read_parquet(dataset / "index.parquet")
    jobs = []
    for rec in index.itertuples():
        box = GeoBox((int(rec.height), int(rec.width)), rasterio.Affine(*rec.transform[:6]),
                     rec.crs)
        for ids, hrefs in zip(json.loads(rec.step_items), json.loads(rec.step_hrefs),
                              strict=True):
            step_items = [items[i] for i in ids]
            wanted = {h for hs in hrefs.values() for h in hs}
            found = {(k, a.get_absolute_href()) for it in step_items
                     for k, a in it.assets.items() if a.get_absolute_href() in wanted}
            if {h for _, h in found} != wanted:  # the same reads, or the ratio means nothing
                raise SystemExit(f"{rec.id}: {len(wanted)} assets read but "
                                 f"{len(found)} found in {catalog}")
            keys = sorted({k for k, _ in found})
            jobs.append((step_items, keys, box))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odc-stac warns about items without raster metadata
        for step_items, keys, box in jobs:
            load(step_items, bands=keys, geobox=box, resampling="nearest",
                 groupby="solar_day").load()
    return time.perf_counter() - t0, len(jobs)


def run(world: Path, task: str = "flood", workers: tuple[int, ...] = (1, 2),
        chip_size: int = 32, peer: str | None = None) -> dict:
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
    if peer == "odc-stac":
        # in a fresh process: odc-stac configures GDAL/rasterio for the whole process, which
        # left later in-process HTTP reads (the fault-proxy tests) hanging
        import subprocess

        child = subprocess.run([sys.executable, __file__, "--odc-stac-only", str(last / "ds"),
                                str(m["catalog"])], capture_output=True, text=True, check=True)
        peer_s, loads = json.loads(child.stdout.strip().splitlines()[-1])
        results["odc_stac"] = {"loads": loads, "seconds": round(peer_s, 3),
                               "chips_per_s": round(chips / peer_s, 3) if peer_s else None}
        results["pipeline_vs_odc_stac"] = round(base / results["odc_stac"]["chips_per_s"], 3)
        results["raw_reads_vs_odc_stac"] = round(peer_s / raw_s, 3) if raw_s else None
    elif peer is not None:
        raise SystemExit(f"--peer {peer!r}: expected odc-stac")
    shutil.rmtree(last, ignore_errors=True)
    return results


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--odc-stac-only":  # the peer's own process
        print(json.dumps(odc_stac_seconds(Path(sys.argv[2]), sys.argv[3])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=None, help="world folder (built if absent)")
    ap.add_argument("--task", default="flood")
    ap.add_argument("--chip-size", type=int, default=32)
    ap.add_argument("--peer", choices=["odc-stac"], default=None,
                    help="also time a peer library's load on the same windows and dates "
                         "(pip install 'terrastill[bench]')")
    args = ap.parse_args()
    world = args.world or Path(tempfile.mkdtemp(prefix="bench-world-"))
    if not (world / "world.json").exists():
        build_world(world, WorldConfig())
    res = run(world, args.task, chip_size=args.chip_size, peer=args.peer)
    table = Table(title="chip creation throughput (one run)")
    for col in ("mode", "chips", "seconds", "chips/s"):
        table.add_column(col)
    for k in ("workers_1", "workers_2"):
        r = res[k]
        table.add_row(k, str(r["chips"]), str(r["seconds"]), str(r["chips_per_s"]))
    rr = res["raw_reads"]
    table.add_row(f"raw windowed reads ({rr['reads']})", "", str(rr["seconds"]),
                  str(rr["chips_per_s"]))
    if "odc_stac" in res:
        rp = res["odc_stac"]
        table.add_row(f"odc-stac load ({rp['loads']})", "", str(rp["seconds"]),
                      str(rp["chips_per_s"]))
    Console().print(table)
    if "odc_stac" in res:
        Console().print(f"terrastill chips / odc-stac: {res['pipeline_vs_odc_stac']}×; "
                        f"raw reads / odc-stac: {res['raw_reads_vs_odc_stac']}×")
    Console().print(f"2 workers / 1 worker: {res['speedup_2_vs_1']}×; pipeline / raw reads: "
                    f"{res['pipeline_vs_raw_read']}×")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
