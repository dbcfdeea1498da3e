#!/usr/bin/env python
"""End-to-end prediction throughput vs model-only throughput, and peak memory vs AOI size.

For each model file: ``predict`` over an AOI of the demo world (read, inference and write
time), the same model's throughput on synthetic batches from ``terrastill bench``'s
``measure`` in the same run (the best of three measurements), the ratio end-to-end /
model-only, and the peak RSS of a prediction over a small AOI and over one with 4× its area
(each in a fresh process).

Each model first predicts over a small corner of the world (untimed: start-up such as
loading torch kernels and parsing the catalogue is not throughput). Two AOIs are timed: the
centre of the world, which straddles a UTM zone boundary (pixels near it are reprojected
from the other zone's tiles), and an area as wide just west of the boundary, in one zone.
Each AOI is timed ``--repeat`` times two ways, and the medians reported: *cold*, with every
dataset closed first, so each file is opened and decoded as in a new ``terrastill predict``
(the operating system's file cache stays warm), and *warm*, straight after, with the files
still open and decoded, as in a server predicting over one region again. End-to-end
windows/s counts predicted windows; the reads of windows skipped as too cloudy count
against it. After each pair of runs, every asset the prediction opened is opened and its
band decoded once more with plain rasterio and nothing else (*bare reads*, cold): no
single-threaded reader can spend less on a cold run, so model time plus bare reads bounds
the cold ratio from above when reading and inference share the cores (the *ceiling*). The
reader decodes a tiled file's tiles on every core (``GDAL_NUM_THREADS``), so the bare reads
are timed that way too (``bare_read_threaded_s`` and its ``cold_ratio_ceiling_threaded``):
the tighter bound for it. ``cold_cpu_s`` is the CPU time of a cold run (all threads), the
figure to compare on a shared machine, with the load averages before and after.
``--read-ahead N`` reads N blocks ahead in a thread (default: the predictor's own choice).
``--device cuda`` runs the predictions and the model-only figure on the GPU (peak memory is
still the host's).

    python scripts/bench_predict.py --world demo-out/world \
        demo-out/serve-models/flood-teacher.pt demo-out/serve-models/flood-student.pt
    python scripts/bench_predict.py --world demo-out/world-hls-production \
        --preset hls-production demo-out/serve-models/flood-student.pt
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import rasterio
from rich.console import Console
from rich.table import Table

from terrastill.bench.throughput import load_bench_model, measure
from terrastill.data.read import OPENED_LOG_SIZE, close_datasets, open_assets, read_env
from terrastill.errors import NoImageryError
from terrastill.inference.aoi import area_km2, bbox_aoi
from terrastill.inference.predict import PredictRequest, predict, resolve_device
from terrastill.io_http import gdal_env, gdal_path
from terrastill.world.build import load_manifest

_CHILD = """
import datetime as dt, json, resource, sys
from pathlib import Path
from terrastill.inference.aoi import bbox_aoi
from terrastill.inference.predict import PredictRequest, predict
model, catalog, date, out, device, *bbox = sys.argv[1:]
r = predict(PredictRequest(model=Path(model), aois=[bbox_aoi([float(v) for v in bbox])],
            date=dt.date.fromisoformat(date), out_dir=Path(out), catalog=catalog,
            precision="fp32", device=device))
# VmHWM is this program's own peak; ru_maxrss also counts the parent's memory at the fork
# that started it (Linux keeps the larger of the two across exec)
status = Path("/proc/self/status")
hwm = [ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")] \
    if status.exists() else []
peak = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_mb": peak / 1024, "pixels": r.pixels, "windows": r.windows}))
"""


def sub_bbox(bbox: list[float], frac: float) -> list[float]:
    """A box around the centre of ``bbox`` with ``frac`` of its width and height."""
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    hw, hh = (bbox[2] - bbox[0]) * frac / 2, (bbox[3] - bbox[1]) * frac / 2
    return [cx - hw, cy - hh, cx + hw, cy + hh]


def peak_memory(model: Path, catalog: str, date: dt.date, bbox: list[float],
                device: str = "cpu") -> dict:
    """Peak RSS of one prediction in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run([sys.executable, "-c", _CHILD, str(model), catalog,
                              date.isoformat(), out, device, *map(str, bbox)],
                             capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bare_read_seconds(hrefs: list[str], bbox: list[float] | None = None,
                      threads: bool = False) -> float:
    """Seconds to open each asset and decode its first band over the AOI (``bbox``, lon/lat;
    whole without one) with plain rasterio: the demo world's files are single strips, so any
    window decodes all of it; a tiled production file decodes only the tiles the AOI meets.
    ``threads``: with the reader's GDAL options, tiles decoded on every core."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    with rasterio.Env(**(read_env() if threads else gdal_env())):
        t0 = time.perf_counter()
        for href in hrefs:
            with rasterio.open(gdal_path(href)) as src:
                if bbox is None:
                    src.read(1)
                    continue
                left, bottom, right, top = transform_bounds("EPSG:4326", src.crs, *bbox)
                win = from_bounds(left, bottom, right, top, src.transform)
                win = win.round_offsets().round_lengths().intersection(
                    rasterio.windows.Window(0, 0, src.width, src.height))
                src.read(1, window=win)
        return time.perf_counter() - t0


def clear_date(catalog: str, after: dt.date, steps: int = 3, step: int = 14,
               tolerance: int = 7) -> dt.date:
    """The acquisition date after ``after`` whose T steps all have the clearest scenes, so the
    benchmark times windows that are predicted rather than skipped as cloudy."""
    items = json.loads(Path(catalog).read_text())["features"]
    cloud: dict[dt.date, float] = {}
    count: dict[dt.date, int] = {}
    for it in items:
        d = dt.date.fromisoformat(it["properties"]["datetime"][:10])
        cc = float(it["properties"].get("eo:cloud_cover", 0.0))
        cloud[d] = max(cloud.get(d, 0.0), cc)
        count[d] = count.get(d, 0) + 1
    full = max(count.values())
    cloud = {d: c for d, c in cloud.items() if count[d] == full}  # every tile imaged

    def worst_step(last: dt.date) -> float:
        worst = 0.0
        for k in range(steps):
            target = last - dt.timedelta(days=step * (steps - 1 - k))
            near = [c for d, c in cloud.items() if abs((d - target).days) <= tolerance]
            worst = max(worst, min(near) if near else 100.0)
        return worst

    return min((d for d in cloud if d > after), key=lambda d: (worst_step(d), d))


def aois(bbox: list[float], frac: float, zones: int = 2) -> dict[str, list[float]]:
    """The timed AOIs: the world's centre (across the zone boundary) and one zone's part; in a
    one-zone world (e.g. the hls-production preset) the centre alone."""
    centre = sub_bbox(bbox, frac)
    if zones < 2:
        return {"centre": centre}
    edge = 6 * round((centre[0] + centre[2]) / 2 / 6 + 30) - 180  # nearest zone boundary
    east = min(centre[2], edge - 0.01)
    west = [max(bbox[0], east - (centre[2] - centre[0])), centre[1], east, centre[3]]
    return {"across zones": centre, "one zone": west}


def run(world: Path, models: list[Path], batch_size: int = 8, seconds: float = 5.0,
        frac: float = 0.5, memory: bool = True, repeat: int = 3,
        device: str = "cpu", read_ahead: int | None = None) -> dict:
    m = load_manifest(world)
    load_before = [round(v, 2) for v in os.getloadavg()]
    date = clear_date(m["catalog"], dt.date.fromisoformat(m["tasks"]["flood"]["date"]))
    rows = []
    for model in models:
        bm = load_bench_model(str(model))
        warm = sub_bbox(m["bbox"], 0.1)
        warm = [m["bbox"][0], m["bbox"][1], m["bbox"][0] + warm[2] - warm[0],
                m["bbox"][1] + warm[3] - warm[1]]
        with contextlib.suppress(NoImageryError):  # a cloudy corner still warms up
            _predict(model, m["catalog"], date, warm, batch_size, device, read_ahead)
        # the best of three: on a shared machine a single figure moves by 10-20 %, and a
        # slow draw would flatter every ratio below
        timing = max((measure(bm, device=device, precision="fp32", compile=False,
                              batch_size=batch_size, seconds=seconds, warmup=2)
                      for _ in range(3)), key=lambda t: t.img_s)
        for label, bbox in aois(m["bbox"], frac, len(m["epsg"])).items():
            runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
            bare, bare_threaded = [], []
            for i in range(repeat):
                close_datasets()
                for kind in ("cold", "warm"):
                    cpu = time.process_time()
                    r, skipped = _predict(model, m["catalog"], date, bbox, batch_size,
                                          device, read_ahead)
                    runs[kind].append({**r.timings, "cpu": time.process_time() - cpu})
                assets = open_assets()
                if len(assets) >= OPENED_LOG_SIZE:  # older ones were forgotten: too few
                    Console(stderr=True).print(
                        f"[yellow]{label}: the prediction opened {OPENED_LOG_SIZE} files or "
                        "more; bare reads count only the last ones (a lower bound)")
                # both kinds of bare reads, in alternating order
                for threads in (False, True) if i % 2 == 0 else (True, False):
                    close_datasets()
                    (bare_threaded if threads else bare).append(
                        bare_read_seconds(assets, bbox, threads))
            predicted = r.windows - skipped
            row = {
                "model": model.name, "aoi": label, "depth": bm.depth, "windows": r.windows,
                "skipped_windows": skipped, "pixels": r.pixels,
                "aoi_km2": round(area_km2(bbox_aoi(bbox)), 1),
                "model_only_img_per_s": round(timing.img_s, 2), "repeat": repeat,
                "assets_read": len(assets), "bare_read_s": round(statistics.median(bare), 3),
                "bare_read_threaded_s": round(statistics.median(bare_threaded), 3),
            }
            for kind, timings in runs.items():
                t = {k: statistics.median(x[k] for x in timings) for k in timings[0]}
                e2e = predicted / t["total"]
                row.update({
                    f"{kind}_read_s": round(t["read"], 3),
                    f"{kind}_inference_s": round(t["inference"], 3),
                    f"{kind}_write_s": round(t["write"], 3),
                    f"{kind}_total_s": round(t["total"], 3),
                    f"{kind}_cpu_s": round(t["cpu"], 3),
                    f"{kind}_e2e_windows_per_s": round(e2e, 2),
                    f"{kind}_e2e_pixels_per_s": round(r.pixels / t["total"]),
                    f"{kind}_e2e_over_model_only": round(e2e / timing.img_s, 3),
                })
            # the cold ratio if reading cost only the bare reads and writing nothing
            best = predicted / (row["cold_inference_s"] + row["bare_read_s"])
            row["cold_ratio_ceiling"] = round(best / timing.img_s, 3)
            best = predicted / (row["cold_inference_s"] + row["bare_read_threaded_s"])
            row["cold_ratio_ceiling_threaded"] = round(best / timing.img_s, 3)
            if memory and label in ("across zones", "centre"):
                small = peak_memory(model, m["catalog"], date, sub_bbox(m["bbox"], frac / 2),
                                    device)
                large = peak_memory(model, m["catalog"], date, sub_bbox(m["bbox"], frac),
                                    device)
                row.update({"peak_rss_mb_small_aoi": round(small["peak_rss_mb"]),
                            "peak_rss_mb_4x_aoi": round(large["peak_rss_mb"]),
                            "pixels_small_vs_4x": [small["pixels"], large["pixels"]]})
            rows.append(row)
    return {"date": date.isoformat(), "device": device, "read_ahead": read_ahead,
            "load_avg_before": load_before,
            "load_avg_after": [round(v, 2) for v in os.getloadavg()], "rows": rows}


def _predict(model: Path, catalog: str, date: dt.date, bbox: list[float],
             batch_size: int, device: str = "cpu",
             read_ahead: int | None = None) -> tuple[Any, int]:
    with tempfile.TemporaryDirectory() as out:
        r = predict(PredictRequest(model=model, aois=[bbox_aoi(bbox)], date=date,
                                   out_dir=Path(out), catalog=catalog,
                                   batch_size=batch_size, precision="fp32", device=device,
                                   read_ahead=read_ahead))
        skipped = json.loads(r.sidecar.read_text())["skipped_windows"]
    return r, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--world", type=Path, required=True,
                    help="a world folder; with --preset, built there first if missing and "
                         "reused by later runs")
    ap.add_argument("--preset", default=None,
                    help="world preset to build (e.g. hls-production: HLS-granule-sized "
                         "tiled COGs)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--aoi-fraction", type=float, default=0.5,
                    help="timed AOI: this fraction of the world's width and height")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs per AOI, cold and warm each (medians are reported)")
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda: both the predictions and the model-only figure run there")
    ap.add_argument("--read-ahead", type=int, default=None,
                    help="blocks read ahead in a thread while the model runs (default: the "
                         "predictor's choice, 0 on the CPU and 1 on a GPU)")
    args = ap.parse_args()
    if args.read_ahead is not None and args.read_ahead < 0:
        ap.error(f"--read-ahead {args.read_ahead}: expected 0 or more blocks")
    if args.preset and not (args.world / "world.json").is_file():
        from terrastill.world.build import build_world
        from terrastill.world.config import WorldConfig
        from terrastill.world.presets import preset

        Console(stderr=True).print(f"building the {args.preset} world in {args.world} (once)")
        build_world(args.world, WorldConfig(**preset(args.preset)))
    res = run(args.world, args.models, args.batch_size, args.seconds, args.aoi_fraction,
              not args.no_memory, args.repeat, resolve_device(args.device), args.read_ahead)
    table = Table(title=f"prediction throughput on {res['device']} (medians of "
                        f"{args.repeat} runs in one process, {res['date']}; load "
                        f"{res['load_avg_before'][0]} → {res['load_avg_after'][0]})")
    table.add_column("measure")
    for r in res["rows"]:
        table.add_column(f"{r['model']}\n{r['aoi']}")
    timed = ("read_s", "inference_s", "write_s", "total_s", "cpu_s", "e2e_windows_per_s",
             "e2e_pixels_per_s", "e2e_over_model_only")
    for key in ("depth", "windows", "skipped_windows", "pixels", "aoi_km2",
                *(f"cold_{k}" for k in timed), "assets_read", "bare_read_s",
                "cold_ratio_ceiling", "bare_read_threaded_s", "cold_ratio_ceiling_threaded",
                *(f"warm_{k}" for k in timed),
                "model_only_img_per_s", "peak_rss_mb_small_aoi", "peak_rss_mb_4x_aoi"):
        table.add_row(key, *[str(r.get(key, "")) for r in res["rows"]])
    Console().print(table)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
