#!/usr/bin/env python
"""Reliability report: the fault matrix (fault rate x stage) against a real STAC API server.

    .venv/bin/python scripts/reliability_report.py                 # default matrix (~5 min)
    .venv/bin/python scripts/reliability_report.py --quick         # smaller (~2 min)
    .venv/bin/python scripts/reliability_report.py --rates 0,0.3 --runs 3 --world demo-out/world

A small demo world is built (or ``--world`` reused), served by stac-fastapi-pgstac over a
throwaway PostgreSQL (tests/stac_server.py, needs scripts/setup_pgstac.sh), its assets by a
local HTTP file server; the fault proxy (tests/faultproxy.py) drops, truncates, delays and fails
the given fraction of requests in front of the API or the assets. Stages:

- ``search``            StacApiCatalog searches (page limit 3) through a faulty API
- ``asset-read``        data.read.read_whole of COGs through a faulty asset server
- ``chips/api``         ``terrastill chips`` with a faulty API (file assets)
- ``chips/assets``      ``terrastill chips`` with faulty asset HTTP (no truncation)
- ``chips/truncation``  ``terrastill chips`` with asset bodies cut short mid-transfer
- ``chips/kill``        ``terrastill chips`` SIGKILLed at random moments, then resumed
                        (rate = kill probability per attempt; through a clean API)

Each run is classified: completed (exit 0 / no exception), identical to the clean run,
completed-but-different (exit 0, every written chip identical, but some groups rejected, each
with a reason in rejected.csv: a degraded run, not a corrupt one), clear failure (a terrastill
error naming the cause: exit 1/2 with ``error:``, or CatalogError/AssetReadError), crash (a
traceback or an unexpected exception), silent corruption (a written chip/label or a returned
array that differs from the clean one). The last must be 0.
Rate 1.0 uses unbounded faults (no request ever gets through); other rates bound the faults
per request to 2 in a row, so enough retries always win.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faultproxy import FaultProxy, Faults  # noqa: E402
from stac_server import (  # noqa: E402
    PgStacService,
    StaticFileServer,
    dataset_fingerprint,
    find_pg_bin,
    fingerprint_diff,
    serve_catalog,
)

OPTS = ["--classes", "land,water", "--chip-size", "16", "--num-steps", "2", "--temporal-step",
        "9", "--temporal-tolerance", "4", "--max-cloud", "60", "--min-valid", "0.3",
        "--split-block", "1000"]
NO_TRUNCATE = ("drop", "delay", "429", "500", "503")
ALL_KINDS = ("drop", "truncate", "delay", "429", "500", "503")


@dataclass
class Cell:
    stage: str
    rate: float
    runs: int = 0
    completed: int = 0
    identical: int = 0
    clear_failures: int = 0
    crashes: int = 0
    silent_corruptions: int = 0
    seconds: float = 0.0
    notes: Counter[str] = field(default_factory=Counter)


def faults_for(rate: float, kinds: tuple[str, ...], seed: int) -> Faults:
    return Faults(rate=rate, kinds=kinds, seed=seed, delay_s=0.02,
                  max_consecutive=None if rate >= 1.0 else 2)


def run_chips(obs: Path, catalog: str, out: Path, timeout: float = 600) -> tuple[int, str]:
    env = {**os.environ, "TERRASTILL_PROGRESS": "0", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "terrastill.cli", "chips", str(obs), "--catalog", catalog,
         "--out", str(out), *OPTS],
        env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def corrupt_files(out: Path, clean: Path) -> list[str]:
    """Written chips/labels that are not byte-identical to the clean run's file."""
    bad = []
    for sub in ("chips", "labels"):
        folder = out / sub
        if not folder.exists():
            continue
        for p in sorted(folder.glob("*.tif")):
            ref = clean / sub / p.name
            if not ref.exists() or ref.read_bytes() != p.read_bytes():
                bad.append(f"{sub}/{p.name}")
    return bad


def classify_chips(cell: Cell, code: int, output: str, out: Path, clean: Path,
                   replace: dict[str, str]) -> None:
    cell.runs += 1
    corrupt = corrupt_files(out, clean)
    if corrupt:
        cell.silent_corruptions += 1 if code == 0 else 0
        cell.notes[f"differing files: {corrupt[0]}"] += 1
    if code == 0:
        cell.completed += 1
        diff = fingerprint_diff(dataset_fingerprint(out, replace), dataset_fingerprint(clean))
        if not diff:
            cell.identical += 1
        else:
            cell.notes[f"completed but differs: {diff[0]}"] += 1
    elif "Traceback" in output or "error:" not in output:
        cell.crashes += 1
        last = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or ["?"]
        cell.notes[f"crash: {last[0].strip()[:120]}"] += 1
    else:
        cell.clear_failures += 1
        msg = output[output.rindex("error:"):].splitlines()[0]
        cell.notes[msg[:120]] += 1
        if corrupt and code != 0:  # a failed run left a bad file behind: also corruption
            cell.silent_corruptions += 1


def stage_search(cell: Cell, api: str, seeds: list[int], bbox: list[float],
                 collections: list[str]) -> None:
    from terrastill.catalog import Search
    from terrastill.catalog.stac_api import StacApiCatalog
    from terrastill.errors import CatalogError
    from terrastill.retry import RetryPolicy

    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    searches = [Search(tuple(collections), tuple(bbox), t0 + timedelta(days=10 * k),
                       t0 + timedelta(days=10 * k + 20), 80.0) for k in range(4)]
    clean = [[it.id for it in StacApiCatalog(api, page_limit=3).search(s)] for s in searches]
    for seed in seeds:
        with FaultProxy(api, faults_for(cell.rate, ALL_KINDS, seed)) as proxy:
            cell.runs += 1
            try:
                cat = StacApiCatalog(proxy.url, page_limit=3, retry=RetryPolicy.fast(5),
                                     timeout=5)
                got = [[it.id for it in cat.search(s)] for s in searches]
            except CatalogError as exc:
                cell.clear_failures += 1
                cell.notes[str(exc).split(": ", 1)[-1][:100]] += 1
                continue
            except Exception as exc:  # counted as a crash in the report
                cell.crashes += 1
                cell.notes[f"crash: {type(exc).__name__}: {exc}"[:120]] += 1
                continue
            cell.completed += 1
            if got == clean:
                cell.identical += 1
            else:
                cell.silent_corruptions += 1
                cell.notes["different items"] += 1


def stage_assets(cell: Cell, files_url: str, world: Path, seeds: list[int]) -> None:
    import numpy as np

    from terrastill.data.read import read_whole
    from terrastill.errors import AssetReadError
    from terrastill.retry import RetryPolicy

    paths = sorted(world.rglob("*.tif"))
    paths = [p for p in paths if "scenes" in p.parts][:12]
    for seed in seeds:
        with FaultProxy(files_url, faults_for(cell.rate, ALL_KINDS, seed)) as proxy:
            cell.runs += 1
            ok = True
            for p in paths:
                href = f"{proxy.url}/{p.relative_to(world).as_posix()}"
                try:
                    got = read_whole(href, policy=RetryPolicy.fast(4))
                except AssetReadError as exc:
                    cell.clear_failures += 1
                    cell.notes[str(exc).split(": ", 1)[-1][:100]] += 1
                    ok = False
                    break
                except Exception as exc:  # counted as a crash in the report
                    cell.crashes += 1
                    cell.notes[f"crash: {type(exc).__name__}: {exc}"[:120]] += 1
                    ok = False
                    break
                want = read_whole(str(p))
                if not np.array_equal(got, want):
                    cell.silent_corruptions += 1
                    cell.notes[f"different pixels: {p.name}"] += 1
                    ok = False
                    break
            if ok:
                cell.completed += 1
                cell.identical += 1


def stage_kill(cell: Cell, obs: Path, api: str, clean: Path, tmp: Path, seeds: list[int],
               replace: dict[str, str]) -> None:
    """Kill probability ``rate`` per attempt, each at a random moment; then resume to the end."""
    env = {**os.environ, "TERRASTILL_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "terrastill.cli", "chips", str(obs), "--catalog", api,
           "--out", "", *OPTS]
    for seed in seeds:
        rng = random.Random(seed)
        out = tmp / f"kill-{cell.rate}-{seed}"
        cmd[cmd.index("--out") + 1] = str(out)
        kills = 0
        for _attempt in range(8):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            if rng.random() < cell.rate:
                time.sleep(rng.uniform(0.3, 4.0))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
            proc.wait()
            if (out / "dataset.json").exists():
                break
        code, output = run_chips(obs, api, out)  # the final resume (a no-op if complete)
        cell.notes[f"{kills} kill(s) landed"] += 1
        classify_chips(cell, code, output, out, clean, replace)


def build_world(folder: Path) -> Path:
    from terrastill.world.build import build_world as build
    from terrastill.world.config import WorldConfig

    build(folder, WorldConfig(seed=3, zones=2, tiles_x=2, tiles_y=1, tile_size=64,
                              start="2024-05-01", end="2024-07-15", revisit=3,
                              flood_date="2024-06-20", observations=80))
    return folder


def print_table(cells: list[Cell], file=sys.stdout) -> None:
    head = ["stage", "fault rate", "runs", "completed", "identical-to-clean",
            "completed-but-different", "clear failures", "crashes", "silent corruptions",
            "s/run"]
    rows = [[c.stage, f"{c.rate:.0%}", c.runs, c.completed, c.identical,
             c.completed - c.identical, c.clear_failures, c.crashes, c.silent_corruptions,
             f"{c.seconds / max(c.runs, 1):.1f}"]
            for c in cells]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    print(line, file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for r in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) + " |",
              file=file)
    notes = [(c, n, k) for c in cells for n, k in c.notes.most_common(3)]
    if notes:
        print("\nnotes (most common per cell):", file=file)
        for c, n, k in notes:
            print(f"  {c.stage} @ {c.rate:.0%}: {k}x {n}", file=file)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="an existing demo world folder (else built)")
    ap.add_argument("--rates", default="0,0.1,0.3,1.0", help="fault rates, comma-separated")
    ap.add_argument("--runs", type=int, default=2, help="runs (seeds) per cell")
    ap.add_argument("--rows", type=int, default=60, help="observations used per chips run")
    ap.add_argument("--stages", default="search,asset-read,chips/api,chips/assets,"
                    "chips/truncation,chips/kill")
    ap.add_argument("--quick", action="store_true", help="rates 0,0.3,1.0, one run each")
    ap.add_argument("--json", type=Path, help="also write the matrix as JSON here")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds-long check: search and asset-read stages, rates 0 and 1, one "
                         "run, 5 observations")
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick, args.rates, args.rows = False, "0,1.0", 5
        args.runs, args.stages = 1, "search,asset-read,chips/api"
    rates = [0.0, 0.3, 1.0] if args.quick else [float(r) for r in args.rates.split(",")]
    runs = 1 if args.quick else args.runs
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    seeds = list(range(1, runs + 1))

    pg_bin = find_pg_bin()
    if pg_bin is None:
        print("PostgreSQL not installed: run scripts/setup_pgstac.sh", file=sys.stderr)
        return 2
    # millisecond backoff so the matrix runs in minutes (the policy shape is what is tested)
    os.environ.setdefault("TERRASTILL_RETRY_BASE_DELAY", "0.005")
    os.environ.setdefault("TERRASTILL_RETRY_MAX_DELAY", "0.05")

    tmpdir = tempfile.TemporaryDirectory(prefix="terrastill-reliability-")
    tmp = Path(tmpdir.name)
    world = args.world.resolve() if args.world else build_world(tmp / "world")
    manifest = json.loads((world / "world.json").read_text())
    catalog = str(world / manifest.get("catalog", "catalog.json"))
    obs_src = world / manifest["tasks"]["flood"]["observations"]
    obs = tmp / "obs.csv"
    obs.write_text("".join(obs_src.read_text().splitlines(keepends=True)[: args.rows + 1]))

    service = PgStacService(pg_bin).start()
    files = StaticFileServer(world).start()
    cells: list[Cell] = []
    try:
        api_files = serve_catalog(service, catalog, "files")
        clean = tmp / "clean"
        code, output = run_chips(obs, catalog, clean)
        if code != 0:
            print(f"clean local run failed:\n{output}", file=sys.stderr)
            return 1
        with FaultProxy(files.url) as asset_proxy:
            api_http = serve_catalog(service, catalog, "http", asset_base=asset_proxy.url)
            for stage in stages:
                for rate in rates:
                    cell = Cell(stage, rate)
                    t0 = time.monotonic()
                    if stage == "search":
                        stage_search(cell, api_files, seeds, manifest["bbox"],
                                     list(manifest["collections"]))
                    elif stage == "asset-read":
                        stage_assets(cell, files.url, world, seeds)
                    elif stage == "chips/api":
                        for seed in seeds:
                            with FaultProxy(api_files, faults_for(rate, ALL_KINDS, seed)) as px:
                                out = tmp / f"api-{rate}-{seed}"
                                code, output = run_chips(obs, px.url, out)
                                classify_chips(cell, code, output, out, clean,
                                               {px.url: catalog})
                    elif stage in ("chips/assets", "chips/truncation"):
                        kinds = NO_TRUNCATE if stage == "chips/assets" else ("truncate",)
                        for seed in seeds:
                            asset_proxy.set_faults(faults_for(rate, kinds, seed))
                            out = tmp / f"{stage.replace('/', '-')}-{rate}-{seed}"
                            code, output = run_chips(obs, api_http, out)
                            classify_chips(cell, code, output, out, clean,
                                           {api_http: catalog, asset_proxy.url: str(world)})
                        asset_proxy.set_faults(Faults())
                    elif stage == "chips/kill":
                        stage_kill(cell, obs, api_files, clean, tmp, seeds, {api_files: catalog})
                    else:
                        print(f"unknown stage {stage!r}", file=sys.stderr)
                        return 2
                    cell.seconds = time.monotonic() - t0
                    cells.append(cell)
                    print(f"  {stage:18s} {rate:4.0%}: {cell.runs} run(s), "
                          f"{cell.identical} identical, {cell.clear_failures} clear failures, "
                          f"{cell.crashes} crashes, {cell.silent_corruptions} corrupt "
                          f"({cell.seconds:.0f}s)", file=sys.stderr, flush=True)
    finally:
        files.stop()
        service.stop()
        tmpdir.cleanup()

    print()
    print_table(cells)
    if args.json:
        args.json.write_text(json.dumps([{**c.__dict__, "notes": dict(c.notes)} for c in cells],
                                        indent=1))
    corrupt = sum(c.silent_corruptions for c in cells)
    print(f"\nsilent corruptions: {corrupt} (must be 0)")
    return 1 if corrupt else 0


if __name__ == "__main__":
    raise SystemExit(main())
