#!/usr/bin/env python
"""Chip-creation throughput on the demo world: chips/s with 1 and 2 workers vs raw reads.

Runs ``make_chips`` on a demo world (built if missing) sequentially and with a 2-process
local Dask cluster, then times plain rasterio windowed reads of exactly the assets and
windows the chips used. Prints a table and a JSON line; figures are ratios within one run.

    python scripts/bench_chips.py --world demo-out/world --task flood [--peer odc-stac]
    python scripts/bench_chips.py --world W --whole-only --repeats 5 --baseline-src OLD/src

``--peer odc-stac`` also times odc-stac's ``load`` on the same windows, items and bands.

The whole process against its own read loop: the real ``terrastill chips`` command in a
fresh process (interpreter start, imports, planning, reads, writing, index), timed from
outside, against the read loop alone (``read_chip`` over the same chip windows in the same
order, timed inside a fresh process after its imports and planning). ``--repeats`` runs
both alternately and reports medians and ``whole_vs_read_loop`` (the whole process's
chips/s over the read loop's, i.e. read-loop seconds / whole seconds). ``--baseline-src``
also times another checkout's ``src`` folder's CLI in the same rounds (before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
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


# the chip options of every mode (make_chips in-process, the CLI, the read loop)
STEPS, STEP_DAYS, TOLERANCE, MAX_CLOUD, MIN_VALID = 3, 14, 7, 60, 0.3


def _job(chip_size: int, source: str = "hls") -> ChipJob:
    return ChipJob(read=ReadOptions(source=source, temporal=TemporalOptions(
        STEPS, STEP_DAYS, TOLERANCE, MAX_CLOUD)), chip_size=chip_size, min_valid=MIN_VALID)


def read_loop(world: Path, task: str, chip_size: int) -> dict:
    """Plan the chips exactly as ``make_chips`` does (untimed), then time ``read_chip`` over
    every chip window in the order the command reads them. Run in a fresh process, so that
    files are opened as in a real run. Returns seconds, windows read and windows rejected."""
    from terrastill.catalog import open_catalog
    from terrastill.data.chips import read_chip
    from terrastill.data.observations import load_observations
    from terrastill.data.plan import attach_items, catalog_collections, group_observations
    from terrastill.errors import AssetReadError, NoImageryError

    m = load_manifest(world)
    t = m["tasks"][task]
    job = _job(chip_size, m.get("source", "hls"))
    obs = load_observations(t["observations"], ObservationOptions(classes=t["classes"]))
    tasks, _ = group_observations(obs, job.chip_size, job.resolution, job.min_count)
    cat = open_catalog(str(m["catalog"]))
    attach_items(tasks, cat, catalog_collections(cat, job.read), job.read, job.max_scene_cloud)
    todo = sorted((x for x in tasks if not x.reason), key=lambda x: (x.date, x.chip_id))
    rejected = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for x in todo:
        try:
            read_chip(x.grid, x.date, x.items, job.read)
        except (NoImageryError, AssetReadError):
            rejected += 1
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "windows": len(todo), "rejected": rejected}


def cli_command(world: Path, task: str, chip_size: int, out: Path) -> list[str]:
    """The ``terrastill chips`` command line making the benchmark's chips into ``out``."""
    m = load_manifest(world)
    t = m["tasks"][task]
    exe = Path(sys.executable).with_name("terrastill")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "terrastill.cli"]
    return [*head, "chips", str(t["observations"]), "--catalog", str(m["catalog"]),
            "--source", m.get("source", "hls"), "--classes", ",".join(t["classes"]),
            "--num-steps", str(STEPS), "--temporal-step", str(STEP_DAYS),
            "--temporal-tolerance", str(TOLERANCE), "--max-cloud", str(MAX_CLOUD),
            "--min-valid", str(MIN_VALID), "--chip-size", str(chip_size), "--out", str(out)]


def _env(src: Path | None) -> dict[str, str]:
    env = {**os.environ, "TERRASTILL_PROGRESS": "0"}
    if src is not None:  # another checkout's package shadows the installed one
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)
    return env


def time_cli(world: Path, task: str, chip_size: int, src: Path | None = None) -> dict:
    """Wall time of a whole ``terrastill chips`` process into a fresh folder (interpreter
    start and imports included), its CPU time (user + system, every thread), and the chips
    it made."""
    import resource

    work = Path(tempfile.mkdtemp(prefix="bench-chips-cli-"))
    try:
        cmd = cli_command(world, task, chip_size, work / "ds")
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(src), capture_output=True, text=True)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        chips = json.loads((work / "ds" / "dataset.json").read_text())["counts"]["chips"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"seconds": dt, "cpu_seconds": cpu, "chips": chips}


def time_read_loop(world: Path, task: str, chip_size: int, src: Path | None = None) -> dict:
    """:func:`read_loop` in a fresh process."""
    proc = subprocess.run([sys.executable, __file__, "--read-loop-only", str(world), task,
                           str(chip_size)], env=_env(src), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"read loop failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def whole_vs_read_loop(world: Path, task: str = "flood", chip_size: int = 32,
                       repeats: int = 3, baseline_src: Path | None = None) -> dict:
    """The whole ``terrastill chips`` process against its own read loop, alternately
    ``repeats`` times (and a baseline checkout's CLI in the same rounds); medians.

    ``whole_vs_read_loop`` compares wall times (the rates a user sees); ``..._cpu`` compares
    CPU seconds (user + system), which other processes on a loaded machine disturb less."""
    runs: dict[str, list[dict]] = {"read_loop": [], "whole": []}
    if baseline_src is not None:
        runs["baseline_whole"] = []
    for _ in range(repeats):
        runs["read_loop"].append(time_read_loop(world, task, chip_size))
        runs["whole"].append(time_cli(world, task, chip_size))
        if baseline_src is not None:
            runs["baseline_whole"].append(time_cli(world, task, chip_size, baseline_src))
    chips = runs["whole"][0]["chips"]
    if any(r["chips"] != chips for k in runs if k != "read_loop" for r in runs[k]):
        raise SystemExit("the runs made different numbers of chips: nothing to compare")
    out: dict = {"chips": chips, "windows": runs["read_loop"][0]["windows"],
                 "repeats": repeats}
    for k, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        cpus = [r["cpu_seconds"] for r in rs]
        med = statistics.median(secs)
        out[k] = {"seconds": [round(v, 3) for v in secs], "median_s": round(med, 3),
                  "chips_per_s": round(chips / med, 3),
                  "cpu_seconds": [round(v, 3) for v in cpus],
                  "median_cpu_s": round(statistics.median(cpus), 3)}
    read_s, read_cpu = out["read_loop"]["median_s"], out["read_loop"]["median_cpu_s"]
    out["whole_vs_read_loop"] = round(read_s / out["whole"]["median_s"], 3)
    out["whole_vs_read_loop_cpu"] = round(read_cpu / out["whole"]["median_cpu_s"], 3)
    if baseline_src is not None:
        out["baseline_src"] = str(baseline_src)
        out["baseline_whole_vs_read_loop"] = round(read_s / out["baseline_whole"]["median_s"],
                                                   3)
        out["baseline_whole_vs_read_loop_cpu"] = round(
            read_cpu / out["baseline_whole"]["median_cpu_s"], 3)
        out["whole_speedup_vs_baseline"] = round(
            out["baseline_whole"]["median_s"] / out["whole"]["median_s"], 3)
    return out


def run(world: Path, task: str = "flood", workers: tuple[int, ...] = (1, 2),
        chip_size: int = 32, peer: str | None = None) -> dict:
    """Benchmark chip creation on ``world``; returns the figures."""
    m = load_manifest(world)
    t = m["tasks"][task]
    job = _job(chip_size, m.get("source", "hls"))
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


def _whole_table(res: dict) -> Table:
    table = Table(title=f"whole process vs its read loop ({res['chips']} chips, "
                        f"{res['windows']} windows read, medians of {res['repeats']})")
    for col in ("mode", "seconds (each run)", "median s", "chips/s", "median CPU s"):
        table.add_column(col)
    names = {"read_loop": "read loop (read_chip only)", "whole": "terrastill chips (whole)",
             "baseline_whole": "terrastill chips, baseline src"}
    for k, name in names.items():
        if k in res:
            r = res[k]
            table.add_row(name, " ".join(str(v) for v in r["seconds"]), str(r["median_s"]),
                          str(r["chips_per_s"]), str(r["median_cpu_s"]))
    return table


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "--odc-stac-only":  # the peer's own process
        print(json.dumps(odc_stac_seconds(Path(argv[1]), argv[2])))
        return 0
    if len(argv) == 4 and argv[0] == "--read-loop-only":  # the read loop's own process
        print(json.dumps(read_loop(Path(argv[1]), argv[2], int(argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=None, help="world folder (built if absent)")
    ap.add_argument("--task", default="flood")
    ap.add_argument("--chip-size", type=int, default=32)
    ap.add_argument("--peer", choices=["odc-stac"], default=None,
                    help="also time a peer library's load on the same windows and dates "
                         "(pip install 'terrastill[bench]')")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of (read loop, whole CLI process), alternating; medians")
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="another checkout's src folder: its CLI is timed in the same rounds")
    ap.add_argument("--whole-only", action="store_true",
                    help="only the whole-process vs read-loop comparison")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.baseline_src is not None and not (args.baseline_src / "terrastill").is_dir():
        ap.error(f"--baseline-src {args.baseline_src}: no terrastill package in it")
    world = args.world or Path(tempfile.mkdtemp(prefix="bench-world-"))
    if not (world / "world.json").exists():
        build_world(world, WorldConfig())
    res: dict = {}
    if not args.whole_only:
        res = run(world, args.task, chip_size=args.chip_size, peer=args.peer)
    res["whole_process"] = whole_vs_read_loop(world, args.task, args.chip_size, args.repeats,
                                              args.baseline_src)
    console = Console()
    if not args.whole_only:
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
        console.print(table)
        if "odc_stac" in res:
            console.print(f"terrastill chips / odc-stac: {res['pipeline_vs_odc_stac']}×; "
                          f"raw reads / odc-stac: {res['raw_reads_vs_odc_stac']}×")
        console.print(f"2 workers / 1 worker: {res['speedup_2_vs_1']}×; pipeline / raw reads: "
                      f"{res['pipeline_vs_raw_read']}×")
    wp = res["whole_process"]
    console.print(_whole_table(wp))
    line = (f"whole process / read loop: {wp['whole_vs_read_loop']}× (CPU time: "
            f"{wp['whole_vs_read_loop_cpu']}×)")
    if "baseline_whole_vs_read_loop" in wp:
        line += (f"; baseline: {wp['baseline_whole_vs_read_loop']}× (CPU time: "
                 f"{wp['baseline_whole_vs_read_loop_cpu']}×); whole process "
                 f"{wp['whole_speedup_vs_baseline']}× faster than the baseline")
    console.print(line)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
