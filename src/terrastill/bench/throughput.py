"""Inference throughput, ThroughputBench style.

For each model × precision × ``torch.compile`` × batch size (× mode): ``warmup`` untimed
iterations, then a timed window of at least ``seconds`` (and at least 3 iterations).

- throughput = images processed in the window / its wall time (device synchronised);
- latency p50/p95/p99 = per-batch wall time, milliseconds;
- peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over warm-up + window
  (``mem_kind = cuda_max_allocated``); on CPU the peak resident set size of the whole process
  sampled every 5 ms from ``/proc/self/statm`` during warm-up + window
  (``mem_kind = cpu_peak_rss``: includes the interpreter, torch and the model — compare rows,
  not absolute values);
- out of memory: the batch size halves until it fits (``batch_size`` < ``batch_size_requested``)
  or reaches 1 (``status = oom``);
- modes: ``model`` (a synthetic batch already on the device: the model alone), and with a chip
  folder ``read`` (the DataLoader alone: GeoTIFF decode + normalisation) and ``pipeline``
  (read + host→device copy + model); ``1 − pipeline/model`` is the input-pipeline share.

Rows are appended to a CSV as soon as each configuration finishes; a configuration already in
the CSV for the same hardware is skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from terrastill.errors import BadInputError, NotFoundError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("model", "read", "pipeline")
CSV_COLUMNS = [
    "timestamp", "hardware_id", "device", "threads", "model", "model_name", "task", "depth",
    "precision",
    "compile", "mode", "batch_size_requested", "batch_size", "status", "images", "wall_s",
    "img_s", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "peak_mem_mb", "mem_kind",
    "params", "macs", "encoder_macs", "chip_size", "num_frames", "gsd_m", "km2_per_s",
    "earth_hours", "earth_cost", "earth_hours_overlap50", "earth_cost_overlap50",
    "price_per_hour", "seconds", "warmup", "torch", "note",
]
KEY_COLUMNS = ("hardware_id", "device", "threads", "model", "precision", "compile", "mode",
               "batch_size_requested")


# --- models ---------------------------------------------------------------------------------

@dataclass
class BenchModel:
    """A model to benchmark and what the report needs to know about it."""

    key: str  # what the user named (path or registry name)
    name: str
    model: nn.Module
    task: str
    in_chans: int
    num_frames: int
    chip_size: int
    gsd_m: float
    params: int
    macs: int
    encoder_macs: int
    depth: int
    input_spec: dict[str, Any] = field(default_factory=dict)

    def example(self, batch_size: int, device: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, self.in_chans, self.num_frames, self.chip_size,
                        self.chip_size, generator=g)
        return x.to(device)


def load_bench_model(name_or_path: str, gsd: float | None = None) -> BenchModel:
    """A model file (``.pt`` from train/distill) or a registry name (random weights)."""
    from terrastill.data.indices import input_channels
    from terrastill.models.encoder import count_macs, num_params
    from terrastill.models.modelfile import load_model_file
    from terrastill.models.registry import build_model, is_registered, list_models, make_arch

    p = Path(name_or_path)
    if p.suffix in (".pt", ".pth") or p.exists():
        if not p.is_file():
            raise NotFoundError(f"{p}: no such model file")
        loaded = load_model_file(p)
        model, card = loaded.model, loaded.card
        name, task, spec = card.name, card.task, dict(card.input_spec)
        key = str(p)
        gsd_m = float(gsd or spec.get("resolution") or 30.0)
    elif is_registered(name_or_path):
        arch = make_arch(name_or_path.lower())
        model = build_model(arch).eval()
        card = None
        name, task, spec, key = name_or_path.lower(), arch["task"], {}, name_or_path.lower()
        gsd_m = float(gsd or 30.0)
    else:
        raise NotFoundError(f"{name_or_path}: neither a model file nor a registry model "
                            f"({', '.join(list_models())})")
    cfg = model.encoder.config
    bm = BenchModel(key=key, name=name, model=model.eval(), task=task,
                    in_chans=input_channels(model.arch), num_frames=int(cfg["num_frames"]),
                    chip_size=int(cfg["img_size"]), gsd_m=gsd_m, params=0, macs=0,
                    encoder_macs=0, depth=int(model.encoder.depth), input_spec=spec)
    if card is not None and card.macs and card.encoder_macs:
        bm.params, bm.macs, bm.encoder_macs = int(card.params), int(card.macs), int(
            card.encoder_macs)
    else:
        x = bm.example(1, "cpu")
        bm.params = num_params(model)
        bm.macs = count_macs(model, x)
        bm.encoder_macs = count_macs(model.encoder, x)
    return bm


# --- measurement ----------------------------------------------------------------------------

class _RssSampler:
    """Peak resident set size of this process (MB), sampled in a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            try:
                import resource

                return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
            except Exception:  # best effort on exotic platforms
                return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> _RssSampler:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def precision_supported(precision: str, device: str) -> tuple[bool, str]:
    """Whether ``precision`` can run on ``device`` (and why not)."""
    if precision == "fp32":
        return True, ""
    if precision == "fp16":
        if device.startswith("cuda"):
            return True, ""
        return False, "fp16 autocast is benchmarked on CUDA only"
    if precision == "bf16":
        if device.startswith("cuda"):
            ok = torch.cuda.is_bf16_supported()
            return ok, "" if ok else "this GPU has no bf16"
        return True, ""
    return False, f"unknown precision {precision!r}"


def _autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Timing:
    images: int
    wall_s: float
    latencies_s: list[float]
    peak_mem_mb: float | None
    mem_kind: str

    @property
    def img_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else float("nan")

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies_s) * 1000.0, q))


def time_steps(step: Callable[[], int], device: str, seconds: float, warmup: int,
               min_iters: int = 3) -> Timing:
    """Run ``step`` (returns images processed) ``warmup`` times, then for ≥ ``seconds``."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sampler = _RssSampler() if not cuda else contextlib.nullcontext()
    with sampler:
        for _ in range(max(0, warmup)):
            step()
            _sync(device)
        lat: list[float] = []
        images = 0
        t0 = time.perf_counter()
        while True:
            t = time.perf_counter()
            images += step()
            _sync(device)
            now = time.perf_counter()
            lat.append(now - t)
            if now - t0 >= seconds and len(lat) >= min_iters:
                break
        wall = time.perf_counter() - t0
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated() / 1024**2, "cuda_max_allocated"
    else:
        peak, kind = sampler.peak / 1024**2, "cpu_peak_rss"
    return Timing(images, wall, lat, round(peak, 1), kind)


def _cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def measure(bm: BenchModel, *, device: str, precision: str, compile: bool, batch_size: int,
            seconds: float, warmup: int, mode: str = "model",
            loader_factory: Callable[[int], Any] | None = None) -> Timing:
    """One configuration (no OOM handling: see :func:`measure_with_backoff`)."""
    model = bm.model.to(device).eval()
    fn: Callable[[torch.Tensor], torch.Tensor] = model
    if compile and mode != "read":
        # a fresh compile per configuration: dynamo guards on the autocast dtype, and reusing
        # one cache across precisions hits the recompile limit and silently falls back to eager
        torch._dynamo.reset()
        fn = torch.compile(model, dynamic=False)

    def run(x: torch.Tensor) -> None:
        with torch.inference_mode(), _autocast(precision, device):
            fn(x)

    if mode == "model":
        x = bm.example(batch_size, device)

        def step() -> int:
            run(x)
            return batch_size
    else:
        if loader_factory is None:
            raise BadInputError(f"mode {mode!r} needs a chip folder (--dataloader)")
        it = _cycle(loader_factory(batch_size))

        def step() -> int:
            batch = next(it)
            img = batch["image"]
            if mode == "pipeline":
                run(img.to(device, non_blocking=True))
            return int(img.shape[0])

    return time_steps(step, device, seconds, warmup)


def measure_with_backoff(bm: BenchModel, *, batch_size: int, **kw: Any
                         ) -> tuple[Timing | None, int, str]:
    """:func:`measure`, halving the batch size on out-of-memory. Returns (timing or None,
    batch size used, status ``ok``/``oom``)."""
    bs = int(batch_size)
    while True:
        try:
            return measure(bm, batch_size=bs, **kw), bs, "ok"
        except Exception as exc:
            if not _is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if bs <= 1:
                return None, bs, "oom"
            log.warning("%s: out of memory at batch %d, halving", bm.name, bs)
            bs //= 2


def quick_throughput(model: nn.Module, batch_size: int = 8, seconds: float = 1.0,
                     device: str = "cpu", warmup: int = 2) -> float:
    """fp32 eager img/s of ``model`` on a synthetic batch (the depth search's img/s column):
    batch size / median batch latency."""
    from terrastill.data.indices import input_channels

    cfg = model.encoder.config
    bm = BenchModel(key="", name="", model=model, task="", in_chans=input_channels(model.arch),
                    num_frames=int(cfg["num_frames"]), chip_size=int(cfg["img_size"]),
                    gsd_m=30.0, params=0, macs=0, encoder_macs=0, depth=0)
    timing = measure(bm, device=device, precision="fp32", compile=False,
                     batch_size=batch_size, seconds=seconds, warmup=warmup)
    model.cpu()
    # batch / median batch latency: robust to other processes stealing the CPU now and then
    return round(batch_size / (timing.percentile_ms(50) / 1000.0), 2)


# --- CSV ------------------------------------------------------------------------------------

def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(k, "")) for k in KEY_COLUMNS)


def read_results(csv_path: str | os.PathLike[str]) -> list[dict[str, str]]:
    p = Path(csv_path)
    if not p.is_file():
        return []
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def append_row(csv_path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one row (header written for a new file); flushed and fsynced."""
    p = Path(csv_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.is_file() or p.stat().st_size == 0
    if not new:
        with open(p, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != CSV_COLUMNS:
            raise BadInputError(f"{p}: not a terrastill bench CSV (columns differ); use a new "
                                f"--out")
    with open(p, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
        fh.flush()
        os.fsync(fh.fileno())


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return ""
        return round(v, 6) if abs(v) < 1e6 else round(v, 1)
    if isinstance(v, bool):
        return "on" if v else "off"
    return v


# --- the whole benchmark --------------------------------------------------------------------

@dataclass
class BenchOptions:
    models: Sequence[str] = ()
    precisions: Sequence[str] = ("fp32",)
    compiles: Sequence[bool] = (False,)
    batch_sizes: Sequence[int] = (1, 8, 32)
    seconds: float = 5.0
    warmup: int = 3
    out: str | os.PathLike[str] = "bench-results/results.csv"
    gsd: float | None = None
    price_per_hour: float | None = 3.0
    dataloader: str | os.PathLike[str] | None = None
    num_workers: int = 0
    device: str = "auto"
    threads: int | None = None


def _loader_factory(chips_dir: Path, bm: BenchModel, num_workers: int
                    ) -> Callable[[int], Any]:
    from torch.utils.data import DataLoader

    from terrastill.data.dataset import ChipDataset, read_dataset_meta
    from terrastill.models.modelfile import check_input_spec
    from terrastill.training.train import collate_items

    meta = read_dataset_meta(chips_dir)
    if bm.input_spec:
        check_input_spec(bm.input_spec, meta, what=str(chips_dir))
        meta = {**meta, "stats": {"mean": bm.input_spec["mean"], "std": bm.input_spec["std"]}}
    ds = ChipDataset(chips_dir, "all", cache=False, meta=meta)
    if len(ds) == 0:
        raise BadInputError(f"{chips_dir}: no chips")

    def make(batch_size: int) -> Any:
        return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          collate_fn=collate_items, persistent_workers=num_workers > 0,
                          drop_last=len(ds) >= batch_size)

    return make


def run_bench(opt: BenchOptions, on_row: Callable[[dict[str, Any]], None] | None = None
              ) -> list[dict[str, Any]]:
    """Every configuration of ``opt``; rows appended to ``opt.out``; returns this run's rows
    (skipped configurations come back from the CSV with ``skipped=True``)."""
    from terrastill.bench.earth import earth_columns
    from terrastill.bench.hardware import hardware_id, hardware_info, write_hardware_json
    from terrastill.training.train import resolve_device

    if opt.threads:
        torch.set_num_threads(int(opt.threads))
    device = resolve_device(opt.device)
    for p in opt.precisions:
        if p not in PRECISIONS:
            raise BadInputError(f"--precision {p!r}: choose from {', '.join(PRECISIONS)}")
    if not opt.models:
        raise BadInputError("name at least one model file or registry model")
    if any(int(b) < 1 for b in opt.batch_sizes):
        raise BadInputError("--batch-sizes: positive integers")
    if opt.seconds <= 0:
        raise BadInputError("--seconds must be > 0")
    chips = Path(opt.dataloader) if opt.dataloader else None
    if chips is not None and not (chips / "dataset.json").is_file():
        raise NotFoundError(f"{chips}: not a chip folder (no dataset.json)")
    info = hardware_info()
    hw = hardware_id(info)
    write_hardware_json(opt.out, info)
    done = {_key(r): r for r in read_results(opt.out)}
    modes = ["model", "read", "pipeline"] if chips is not None else ["model"]
    rows: list[dict[str, Any]] = []
    for name in opt.models:
        bm = load_bench_model(name, opt.gsd)
        factory = _loader_factory(chips, bm, opt.num_workers) if chips is not None else None
        for precision, comp, bs, mode in itertools.product(opt.precisions, opt.compiles,
                                                           opt.batch_sizes, modes):
            if mode == "read" and (precision != opt.precisions[0] or comp != opt.compiles[0]):
                continue  # reading does not depend on the model's precision or compilation
            base = {"hardware_id": hw, "device": device, "threads": torch.get_num_threads(),
                    "model": bm.key,
                    "model_name": bm.name, "task": bm.task, "depth": bm.depth,
                    "precision": precision, "compile": "on" if comp else "off", "mode": mode,
                    "batch_size_requested": int(bs), "params": bm.params, "macs": bm.macs,
                    "encoder_macs": bm.encoder_macs, "chip_size": bm.chip_size,
                    "num_frames": bm.num_frames, "gsd_m": bm.gsd_m,
                    "price_per_hour": opt.price_per_hour, "seconds": opt.seconds,
                    "warmup": opt.warmup, "torch": str(torch.__version__)}
            prev = done.get(_key(base))
            if prev is not None:
                rows.append({**prev, "skipped": True})
                if on_row:
                    on_row(rows[-1])
                continue
            row = {**base, "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            ok, why = precision_supported(precision, device)
            if not ok:
                row.update(status="unsupported", note=why, batch_size=int(bs))
            else:
                try:
                    timing, used, status = measure_with_backoff(
                        bm, batch_size=int(bs), device=device, precision=precision,
                        compile=comp, seconds=opt.seconds, warmup=opt.warmup, mode=mode,
                        loader_factory=factory)
                except (BadInputError, NotFoundError):
                    raise
                except Exception as exc:  # a backend failure is a result, not a crash
                    log.warning("%s %s compile=%s bs=%d: %s", bm.name, precision, comp, bs, exc)
                    timing, used, status = None, int(bs), "error"
                    row["note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                row.update(status=status, batch_size=used)
                if timing is not None:
                    row.update(images=timing.images, wall_s=timing.wall_s, img_s=timing.img_s,
                               latency_p50_ms=timing.percentile_ms(50),
                               latency_p95_ms=timing.percentile_ms(95),
                               latency_p99_ms=timing.percentile_ms(99),
                               peak_mem_mb=timing.peak_mem_mb, mem_kind=timing.mem_kind)
                    row.update(earth_columns(timing.img_s, bm.chip_size, bm.gsd_m,
                                             opt.price_per_hour))
            append_row(opt.out, row)
            done[_key(row)] = row
            rows.append(row)
            if on_row:
                on_row(row)
        bm.model.cpu()
    return rows


def pipeline_shares(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each (model, precision, compile, batch) with both ``model`` and ``pipeline`` rows:
    the input-pipeline share of wall time, ``1 − pipeline img/s / model img/s``."""
    by: dict[tuple[str, ...], dict[str, float]] = {}
    for r in rows:
        if str(r.get("status")) != "ok" or not r.get("img_s"):
            continue
        k = (str(r["model"]), str(r["precision"]), str(r["compile"]),
             str(r["batch_size_requested"]))
        by.setdefault(k, {})[str(r["mode"])] = float(r["img_s"])
    out = []
    for k, m in by.items():
        if "model" in m and "pipeline" in m:
            out.append({"model": k[0], "precision": k[1], "compile": k[2], "batch_size": k[3],
                        "model_img_s": m["model"], "pipeline_img_s": m["pipeline"],
                        "input_share": max(0.0, 1 - m["pipeline"] / m["model"])})
    return out
