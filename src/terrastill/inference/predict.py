"""``terrastill predict``: a model over areas of interest through the chip pipeline, to COGs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from terrastill import __version__
from terrastill.atomic import atomic_path, write_text_atomic
from terrastill.catalog import Search, open_catalog
from terrastill.data.chips import ReadOptions, items_over, read_chips
from terrastill.data.grid import GridSpec, union_grid, window_grid
from terrastill.data.plan import catalog_collections
from terrastill.data.temporal import TemporalOptions, group_acquisitions
from terrastill.errors import (
    BadInputError,
    NoImageryError,
    OutputError,
    SpecMismatchError,
    TerrastillError,
)
from terrastill.inference.aoi import DEFAULT_MAX_AREA_KM2, split_by_zone, validate_aois
from terrastill.inference.blend import StripAccumulator, window_weight
from terrastill.inference.cog import RowWriter, publish_cog
from terrastill.scale import dask_client

log = logging.getLogger(__name__)
STAGES = ("fetch imagery", "predict", "write COG")


class Cancelled(TerrastillError):
    """The prediction was cancelled by its caller."""

    exit_code = 130
    http_status = 409


@dataclass
class PredictRequest:
    """Everything one prediction needs; defaults come from the model's input spec."""

    model: Path
    aois: list[BaseGeometry]
    date: dt.date
    out_dir: Path
    catalog: str | None = None
    max_cloud: float | None = None
    tolerance: int | None = None
    overlap: float = 0.25
    precision: str = "auto"
    device: str = "auto"
    batch_size: int = 8
    block_windows: int = 256  # neighbouring windows read together (they share reads)
    # blocks read in a thread while the model runs; None: 1 on a GPU, 0 on the CPU, where
    # the model already keeps every core busy and a reader thread only competes with it
    read_ahead: int | None = None
    write_probabilities: bool = False
    # fill each step's cloudy pixels from the other acquisitions within the tolerance, pixel
    # by pixel (more of a cloudy AOI predicted; a step then mixes dates)
    composite: bool = False
    # the last step's input as a true-colour COG, for looking at the imagery (the web map)
    write_truecolor: bool = False
    workers: int = 0
    scheduler: str | None = None
    max_area_km2: float = DEFAULT_MAX_AREA_KM2
    name: str = "prediction"


@dataclass
class PredictResult:
    """Paths of the products, one per UTM zone, and where the time went."""

    classes: list[Path] = field(default_factory=list)
    probabilities: list[Path] = field(default_factory=list)
    truecolor: list[Path] = field(default_factory=list)
    sidecar: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    windows: int = 0
    pixels: int = 0
    warnings: list[str] = field(default_factory=list)  # for the user: likely wrong inputs


@dataclass
class WindowOutput:
    """A window's model output (C, H, W) and the pixels that had input data."""

    values: np.ndarray
    valid: np.ndarray
    rgb: np.ndarray | None
    items: list[str]
    reason: str = ""
    read_s: float = 0.0
    infer_s: float = 0.0
    tensor: Any = None  # the normalised model input, until the model has run
    coords: Any = None  # (temporal, location) encodings for models that take them


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"--device {device}: no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise BadInputError(f"--device {device!r}: expected auto, cpu or cuda")
    return device


@lru_cache(maxsize=4)
def _load(model_path: str, device: str = "cpu") -> Any:
    """A model file loaded once per process and device (workers reuse it across batches)."""
    from terrastill.models.modelfile import load_model_file

    loaded = load_model_file(model_path)
    loaded.model.to(device).eval()
    return loaded


def read_options(spec: dict, max_cloud: float | None, tolerance: int | None,
                 composite: bool = False) -> ReadOptions:
    """The chip-reading options a model was trained with (overrides for cloud/tolerance;
    ``composite`` fills each step's masked pixels from the other acquisitions in tolerance)."""
    temporal = TemporalOptions(
        int(spec["num_steps"]), int(spec.get("temporal_step", 0) or 0),
        int(tolerance if tolerance is not None else spec.get("temporal_tolerance", 5)),
        float(max_cloud if max_cloud is not None else spec.get("max_cloud", 50.0)))
    return ReadOptions(source=spec["source"], bands=tuple(spec["bands"]), temporal=temporal,
                       mask_classes=tuple(spec["mask_classes"]) if spec.get("mask_classes")
                       is not None else None, resampling=spec.get("resampling", "nearest"),
                       composite=composite)


def use_bf16(precision: str, card: Any, device: str = "cpu", model: Any = None) -> bool:
    """Whether to run under bf16 autocast: asked for, or 'auto', measured harmless to the
    model's metric (its card) and measured faster on this machine (timed once, cached)."""
    import torch

    from terrastill.inference.precision import bf16_faster

    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if precision != "auto":
        raise BadInputError(f"--precision {precision!r}: expected fp32, bf16 or auto")
    ok = bool((getattr(card, "precision", None) or {}).get("bf16_ok"))
    if device.startswith("cuda"):
        return ok and torch.cuda.is_bf16_supported()
    return ok and model is not None and bf16_faster(model, card, device)


def window_coords(chip: Any, days: dict[str, tuple[float, float]] | None = None
                  ) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """(year, day of year) per step and (lat, lon) of the window centre, as in training;
    ``days`` caches the (year, day of year) of each date across the windows of a block."""
    from terrastill.data.dataset import doy_year

    days = {} if days is None else days
    minx, miny, maxx, maxy = chip.grid.lonlat_bounds()
    temporal = []
    for s in chip.steps:
        date = s.acquisition.date
        if date not in days:
            days[date] = doy_year(date)
        temporal.append(days[date])
    return temporal, ((miny + maxy) / 2, (minx + maxx) / 2)


def run_model(loaded: Any, tensors: Sequence[Any], bf16: bool,
              coords: Sequence[Any] | None = None) -> np.ndarray:
    """Model outputs for normalised (C, T, H, W) tensors as per-pixel maps (N, K, H, W):
    class probabilities, regression values, or a chip class spread over its pixels.
    ``coords`` gives each tensor's (temporal, location) encodings for TL models."""
    import torch

    device = next(loaded.model.parameters()).device
    batch = torch.stack(list(tensors)).to(device)
    kw = {}
    from terrastill.models.registry import uses_coords

    if coords is not None and uses_coords(loaded.card.arch):
        kw = {"temporal_coords": torch.tensor([c[0] for c in coords], dtype=torch.float32,
                                              device=device),
              "location_coords": torch.tensor([c[1] for c in coords], dtype=torch.float32,
                                              device=device)}
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                enabled=bf16):
        y = loaded.model(batch, **kw).float()
    task = loaded.card.task
    if task == "segmentation":
        y = torch.softmax(y, dim=1)
    elif task == "classification":
        y = torch.softmax(y, dim=1)[:, :, None, None].expand(-1, -1, *batch.shape[-2:])
    return y.cpu().numpy()


def read_windows(grids: Sequence[GridSpec], date: dt.date, items: Sequence[dict],
                 read: ReadOptions, spec: dict, coords: bool = True) -> list[WindowOutput]:
    """Read and normalise a block of neighbouring windows, sharing their reads
    (:func:`~terrastill.data.chips.read_chips`); windows without imagery carry the reason.
    ``coords=False`` leaves out the (temporal, location) encodings, for models without them."""
    from terrastill.data.normalize import normalize_chip

    t0 = time.perf_counter()
    chips = read_chips(grids, date, items, read)
    got = [c for c in chips if not isinstance(c, Exception)]
    # one normalisation for the block: each chip comes out as it would alone
    rgb_at: list[int] | None = None
    if got:
        xs, valids = normalize_chip(np.stack([c.array for c in got]), spec["mean"], spec["std"])
        valids_np = valids.numpy()
        bands = got[0].bands
        if all(b in bands for b in ("red", "green", "blue")):
            rgb_at = [bands.index(b) for b in ("red", "green", "blue")]
    days: dict[str, tuple[float, float]] = {}  # (year, day of year) per acquisition date
    outs = []
    k = 0
    for chip in chips:
        if isinstance(chip, Exception):
            outs.append(WindowOutput(np.zeros(0), np.zeros(0), None, [], str(chip)))
            continue
        rgb = chip.array[-1, rgb_at] if rgb_at is not None else None
        ids = sorted({i for s in chip.steps for i in s.acquisition.item_ids})
        outs.append(WindowOutput(np.zeros(0), valids_np[k], rgb, ids, tensor=xs[k],
                                 coords=window_coords(chip, days) if coords else None))
        k += 1
    per = (time.perf_counter() - t0) / max(1, len(outs))
    for o in outs:
        o.read_s = per
    return outs


def infer_read(loaded: Any, outs: list[WindowOutput], bf16: bool, batch_size: int) -> None:
    """Run the model on the windows of a block that were read, ``batch_size`` at a time."""
    todo = [o for o in outs if o.tensor is not None]
    for i in range(0, len(todo), batch_size):
        part = todo[i:i + batch_size]
        t0 = time.perf_counter()
        y = run_model(loaded, [o.tensor for o in part], bf16, [o.coords for o in part])
        per = (time.perf_counter() - t0) / len(part)
        for o, v in zip(part, y, strict=True):
            o.values, o.infer_s, o.tensor = v, per, None


def infer_windows(model_path: str, grids: Sequence[GridSpec], date: dt.date,
                  items: Sequence[dict], read: ReadOptions, bf16: bool,
                  device: str = "cpu", batch_size: int = 8) -> list[WindowOutput]:
    """Read and run the model on a block of windows. Pure: runs the same on a Dask worker."""
    from terrastill.models.registry import uses_coords

    loaded = _load(model_path, device)
    outs = read_windows(grids, date, items, read, loaded.card.input_spec,
                        uses_coords(loaded.card.arch))
    infer_read(loaded, outs, bf16, batch_size)
    return outs


def _blocks(windows: Sequence[GridSpec], n: int) -> Iterator[list[GridSpec]]:
    """Blocks of at most ``n`` neighbouring windows, which share their reads: whole window
    rows while they fit, else pieces of one row. Windows keep their row-major order."""
    rows: list[list[GridSpec]] = []
    for g in windows:
        if rows and rows[-1][0].transform.f == g.transform.f:
            rows[-1].append(g)
        else:
            rows.append([g])
    block: list[GridSpec] = []
    for row in rows:
        if len(row) > n:
            if block:
                yield block
                block = []
            for i in range(0, len(row), n):
                yield row[i:i + n]
            continue
        if len(block) + len(row) > n:
            yield block
            block = []
        block += row
    if block:
        yield block


def _nearest_dates(cat: Any, collections: tuple[str, ...], bbox: tuple, date: dt.date,
                   days: int = 60) -> list[str]:
    s = Search(collections, bbox,
               dt.datetime.combine(date - dt.timedelta(days=days), dt.time.min, tzinfo=dt.UTC),
               dt.datetime.combine(date + dt.timedelta(days=days), dt.time.max, tzinfo=dt.UTC))
    dates = sorted({str(it.datetime.date()) for it in cat.search(s) if it.datetime})
    return sorted(dates, key=lambda d: abs((dt.date.fromisoformat(d) - date).days))[:4]


def model_catalog(spec: dict, catalog: str | None,
                  read: ReadOptions) -> tuple[Any, tuple[str, ...], str]:
    """The catalogue a request reads (``catalog``, else the model's), its collections of the
    model's source, and its location; clear errors when there is none or it lacks them."""
    catalog_loc = catalog or spec.get("catalog")
    if not catalog_loc:
        raise BadInputError("no catalogue: pass --catalog (the model file names none)")
    cat = open_catalog(str(catalog_loc))
    try:
        collections = catalog_collections(cat, read)
    except BadInputError as exc:
        raise SpecMismatchError(f"model expects source {spec['source']!r}: {exc}") from exc
    return cat, collections, str(catalog_loc)


def _check_output(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / ".write-test"):
            pass
        (out_dir / ".write-test").unlink(missing_ok=True)
    except (OSError, OutputError) as exc:
        raise OutputError(f"{out_dir}: output folder is not writable ({exc})") from exc


class _Zone:
    """Accumulators and writers of one UTM-zone product."""

    def __init__(self, req: PredictRequest, epsg: int, grid: GridSpec, channels: int,
                 task: str, size: int, with_rgb: bool):
        self.grid = grid
        self.task = task
        tmp = req.out_dir / f".tmp-{req.name}_{epsg}"
        self.paths = {"classes": req.out_dir / f"{req.name}_{epsg}_classes.tif",
                      "probabilities": req.out_dir / f"{req.name}_{epsg}_probabilities.tif",
                      "truecolor": req.out_dir / f"{req.name}_{epsg}_truecolor.tif"}
        self.tmp = {k: Path(f"{tmp}_{k}.tif") for k in self.paths}
        if task == "regression":
            self.writers = {"classes": RowWriter(self.tmp["classes"], grid, 1, "float32",
                                                 float("nan"), ["value"])}
        else:
            self.writers = {"classes": RowWriter(self.tmp["classes"], grid, 1, "uint8", 255,
                                                 ["class"])}
            if req.write_probabilities:
                self.writers["probabilities"] = RowWriter(
                    self.tmp["probabilities"], grid, channels, "uint8", 255)
        if with_rgb:
            self.writers["truecolor"] = RowWriter(self.tmp["truecolor"], grid, 3, "float32",
                                                  float("nan"), ["red", "green", "blue"])
        # the true colour shares the class outputs' weights: one accumulator holds both
        self.channels = channels
        self.acc = StripAccumulator(channels + 3 * with_rgb, grid.width, grid.height, size,
                                    self._flush)

    def _flush(self, row0: int, values: np.ndarray, weights: np.ndarray) -> None:
        has = weights > 0
        if "truecolor" in self.writers:
            rgb = values[self.channels:]
            mean = np.divide(rgb, weights, out=np.full_like(rgb, np.nan), where=has)
            self.writers["truecolor"].write_rows(row0, mean)
        values = values[:self.channels]
        mean = np.divide(values, weights, out=np.zeros_like(values), where=has)
        if self.task == "regression":
            self.writers["classes"].write_rows(row0, np.where(has, mean, np.nan)[:1])
            return
        cls = np.where(has, mean.argmax(axis=0), 255).astype(np.uint8)
        self.writers["classes"].write_rows(row0, cls[None])
        if "probabilities" in self.writers:
            p = np.where(has, np.clip(np.round(mean * 100), 0, 100), 255).astype(np.uint8)
            self.writers["probabilities"].write_rows(row0, p)

    def add(self, g: GridSpec, out: WindowOutput, weight: np.ndarray) -> None:
        row = int(round((self.grid.transform.f - g.transform.f) / -g.transform.e))
        col = int(round((g.transform.c - self.grid.transform.c) / g.transform.a))
        # a window that is mostly missing data (cloud, swath edge) gives its few valid pixels
        # little context, so it counts in proportion to its valid share
        if not out.values.size:
            return  # no input: adds nothing (weight zero)
        w = weight * out.valid * out.valid.mean()
        vals = out.values
        if "truecolor" in self.writers:
            rgb = np.nan_to_num(out.rgb) if out.rgb is not None else np.zeros((3, *w.shape))
            vals = np.concatenate([vals, rgb.astype(np.float32)])
        self.acc.add(row, col, vals, w)

    def finish(self, colors: dict | None, tags: dict[str, str]) -> dict[str, Path]:
        self.acc.close()
        for w in self.writers.values():
            w.close()
        done = {}
        for key in self.writers:
            resampling = "nearest" if key != "truecolor" else "average"
            cmap = colors if key == "classes" and self.task != "regression" else None
            done[key] = publish_cog(self.tmp[key], self.paths[key], resampling, tags, cmap)
        return done

    def abort(self) -> None:
        for k, w in self.writers.items():
            try:
                w.close()
            finally:
                self.tmp[k].unlink(missing_ok=True)


def _colormap(card: Any) -> dict[int, tuple[int, int, int, int]]:
    cmap = {}
    for i, hexcol in enumerate(getattr(card, "class_colors", None) or []):
        h = hexcol.lstrip("#")
        cmap[i] = (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255)
    return cmap


def predict(request: PredictRequest,
            progress: Callable[[str, float], None] | None = None,
            cancel: threading.Event | None = None) -> PredictResult:
    """Run a model file over the request's AOIs and write one product set per UTM zone."""
    req = request
    t_start = time.perf_counter()
    report = progress or (lambda _stage, _frac: None)
    if not Path(req.model).exists():
        raise BadInputError(f"{req.model}: model file not found")
    if not 0 <= req.overlap < 1:
        raise BadInputError(f"--overlap {req.overlap}: expected a fraction in [0, 1)")
    if req.batch_size < 1 or req.block_windows < 1:
        raise BadInputError(f"--batch-size {req.batch_size} / --block-windows "
                            f"{req.block_windows}: expected positive whole numbers")
    if req.read_ahead is not None and req.read_ahead < 0:
        raise BadInputError(f"--read-ahead {req.read_ahead}: expected 0 or more blocks")
    aois = validate_aois(req.aois, req.max_area_km2)
    device = resolve_device(req.device)
    loaded = _load(str(Path(req.model).resolve()), device)
    card = loaded.card
    from terrastill.models.modelfile import require_task_model

    require_task_model(card, req.model, "predict")
    spec = card.input_spec
    read = read_options(spec, req.max_cloud, req.tolerance, req.composite)
    cat, collections, catalog_loc = model_catalog(spec, req.catalog, read)
    bf16 = use_bf16(req.precision, card, device, loaded.model)
    read_ahead = req.read_ahead if req.read_ahead is not None else \
        int(device.startswith("cuda"))
    _check_output(req.out_dir)
    for stale in req.out_dir.glob(f".tmp-{req.name}_*"):  # left by a killed run
        stale.unlink(missing_ok=True)

    size = int(spec["chip_size"])
    res = float(spec.get("resolution") or read.profile.resolution)
    zones = []
    for epsg, piece in split_by_zone(aois):
        grid, windows = window_grid(piece, epsg, size, res, req.overlap)
        lonlat = grid.lonlat_bounds()
        start, end = read.temporal.search_window(req.date)
        s = Search(collections, lonlat, dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
                   dt.datetime.combine(end, dt.time.max, tzinfo=dt.UTC))
        items = [it.to_dict(transform_hrefs=False) for it in cat.search(s)]
        zones.append((epsg, piece, grid, windows, items))
    if not any(z[4] for z in zones):
        bbox = box(*[f(v) for f, v in zip((min, min, max, max),
                                          zip(*[a.bounds for a in aois], strict=True),
                                          strict=True)]).bounds
        near = _nearest_dates(cat, collections, bbox, req.date)
        hint = f"; nearest acquisitions: {', '.join(near)}" if near else \
            "; no acquisition within ±60 days"
        raise NoImageryError(
            f"no {read.profile.name.upper()} item within ±{read.temporal.temporal_tolerance} "
            f"days of the {read.temporal.num_steps} step date(s) ending {req.date}{hint}")

    channels = 1 if card.task == "regression" else len(card.class_names)
    with_rgb = req.write_truecolor and all(b in read.resolved_bands()
                                           for b in ("red", "green", "blue"))
    if req.write_truecolor and not with_rgb:
        log.warning("no true-colour product: the model reads no red, green and blue bands")
    weight = window_weight(size)
    total = sum(len(z[3]) for z in zones)
    result = PredictResult(windows=total)
    timings = {"read": 0.0, "inference": 0.0, "write": 0.0}
    reasons: list[str] = []
    used_items: set[str] = set()
    done = 0
    model_path = str(Path(req.model).resolve())
    tags = {"model": card.name, "date": req.date.isoformat(),
            "software": f"terrastill {__version__}"}
    opened: list[_Zone] = []
    with dask_client(req.workers, req.scheduler) as client:
        try:
            for epsg, _piece, grid, windows, items in zones:
                zone = _Zone(req, epsg, grid, channels, card.task, size, with_rgb)
                opened.append(zone)
                blocks = list(_blocks(windows, max(req.batch_size, req.block_windows)))
                for grids, outs in _run_blocks(client, blocks, model_path, req.date, items,
                                               read, bf16, device, req.batch_size,
                                               read_ahead):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("prediction cancelled")
                    t0 = time.perf_counter()
                    for g, o in zip(grids, outs, strict=True):
                        if o.reason:
                            reasons.append(o.reason)
                        used_items.update(o.items)
                        timings["read"] += o.read_s
                        timings["inference"] += o.infer_s
                        zone.add(g, o, weight)
                    timings["write"] += time.perf_counter() - t0
                    done += len(grids)
                    report("fetch imagery", done / total)
                    report("predict", done / total)
                result.pixels += grid.width * grid.height
            if reasons and len(reasons) == total:
                raise NoImageryError(f"no window could be read: {reasons[0]}")
            report("write COG", 0.0)
            t0 = time.perf_counter()
            for i, zone in enumerate(opened):
                paths = zone.finish(_colormap(card), tags)
                result.classes.append(paths["classes"])
                if "probabilities" in paths:
                    result.probabilities.append(paths["probabilities"])
                if "truecolor" in paths:
                    result.truecolor.append(paths["truecolor"])
                report("write COG", (i + 1) / len(opened))
            timings["write"] += time.perf_counter() - t0
        except BaseException:
            for zone in opened:
                zone.abort()
            raise
    timings["total"] = time.perf_counter() - t_start
    result.timings = {k: round(v, 4) for k, v in timings.items()}
    sidecar = {
        "format": "terrastill-prediction", "version": 1, "software": __version__,
        "model": {"path": str(req.model), "name": card.name, "task": card.task,
                  "class_names": list(card.class_names), "depth": getattr(card, "depth", None)},
        "date": req.date.isoformat(), "catalog": str(catalog_loc),
        "aois": [mapping(a) for a in aois],
        "zones": [{"epsg": z[0], "grid": z[2].to_dict(), "windows": len(z[3])} for z in zones],
        "parameters": {"overlap": req.overlap, "precision": "bf16" if bf16 else "fp32",
                       "device": device,
                       "batch_size": req.batch_size, "block_windows": req.block_windows,
                       "read_ahead": read_ahead, **read.to_dict()},
        "items": sorted(used_items),
        "acquisition_dates": sorted({a.date for z in zones for a in group_acquisitions(
            [it for it in z[4] if it["id"] in used_items])}),
        "skipped_windows": len(reasons), "skip_reasons": sorted(set(reasons))[:10],
        "products": {"classes": [str(p) for p in result.classes],
                     "probabilities": [str(p) for p in result.probabilities],
                     "truecolor": [str(p) for p in result.truecolor]},
        "timings": result.timings, "windows": total, "pixels": result.pixels,
    }
    result.sidecar = req.out_dir / f"{req.name}.json"
    write_text_atomic(result.sidecar, json.dumps(sidecar, indent=2))
    return result


def _run_blocks(client: Any, blocks: list[list[GridSpec]], model_path: str, date: dt.date,
                items: list[dict], read: ReadOptions, bf16: bool, device: str,
                batch_size: int,
                read_ahead: int = 1) -> Iterator[tuple[list[GridSpec], list[WindowOutput]]]:
    """Yield (grids, outputs) block by block, in order. Locally, the model runs in full
    batches across block boundaries, and with ``read_ahead`` > 0 the next blocks are read in a
    thread while it runs; on Dask, blocks run on the workers with a bounded queue. Either way
    only a few blocks are in memory at once."""
    if client is None:
        from terrastill.models.registry import uses_coords

        loaded = _load(model_path, device)
        yield from infer_across_blocks(
            _read_blocks(blocks, date, items, read, loaded.card.input_spec, read_ahead,
                         uses_coords(loaded.card.arch)),
            lambda outs: infer_read(loaded, outs, bf16, batch_size), batch_size)
        return
    ahead: deque[tuple[list[GridSpec], Any]] = deque()
    limit = max(2, 2 * len(client.scheduler_info().get("workers", {})))
    for grids in blocks:
        sub = items_over(items, union_grid(grids))  # only the items this block can touch
        ahead.append((grids, client.submit(infer_windows, model_path, grids, date, sub,
                                           read, bf16, device, batch_size, pure=False)))
        if len(ahead) >= limit:
            g, f = ahead.popleft()
            yield g, f.result()
    while ahead:
        g, f = ahead.popleft()
        yield g, f.result()


def _read_blocks(blocks: list[list[GridSpec]], date: dt.date, items: list[dict],
                 read: ReadOptions, spec: dict, read_ahead: int, coords: bool = True
                 ) -> Iterator[tuple[list[GridSpec], list[WindowOutput]]]:
    """(grids, read windows) block by block, in order: here, or ``read_ahead`` blocks ahead
    of the consumer in a thread."""
    def one(grids: list[GridSpec]) -> list[WindowOutput]:
        return read_windows(grids, date, items_over(items, union_grid(grids)), read, spec,
                            coords)

    if read_ahead <= 0:
        for grids in blocks:
            yield grids, one(grids)
        return
    ahead: deque[tuple[list[GridSpec], Any]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="terrastill-read") as pool:
        try:
            for grids in blocks:
                ahead.append((grids, pool.submit(one, grids)))
                if len(ahead) > read_ahead:
                    g, f = ahead.popleft()
                    yield g, f.result()
            while ahead:
                g, f = ahead.popleft()
                yield g, f.result()
        finally:
            for _g, f in ahead:
                f.cancel()


def infer_across_blocks(read_blocks: Iterator[tuple[list[GridSpec], list[WindowOutput]]],
                        infer: Callable[[list[WindowOutput]], None], batch_size: int
                        ) -> Iterator[tuple[list[GridSpec], list[WindowOutput]]]:
    """Run ``infer`` (which fills the windows in place and clears their ``tensor``) on read
    windows in full batches, whatever block they came from, and yield each block once all its
    windows have run (a block's last, short batch waits for the next block's windows instead
    of running alone: every new batch shape costs the CPU kernels a set-up)."""
    pending: deque[tuple[list[GridSpec], list[WindowOutput]]] = deque()
    waiting: list[WindowOutput] = []
    for grids, outs in read_blocks:
        pending.append((grids, outs))
        waiting += [o for o in outs if o.tensor is not None]
        full = len(waiting) - len(waiting) % batch_size
        infer(waiting[:full])
        waiting = waiting[full:]
        while pending and all(o.tensor is None for o in pending[0][1]):
            yield pending.popleft()
    infer(waiting)
    yield from pending
