"""``terrastill predict --image``: a model over any multi-band GeoTIFF whose bands are named."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
from shapely.geometry import box

from terrastill.atomic import write_text_atomic
from terrastill.data.grid import window_grid
from terrastill.data.read import read_asset
from terrastill.errors import BadInputError, NotFoundError
from terrastill.inference.blend import window_weight
from terrastill.inference.predict import (
    PredictRequest,
    PredictResult,
    WindowOutput,
    _colormap,
    _load,
    _Zone,
    resolve_device,
    run_model,
    use_bf16,
)

_NAME = re.compile(r"^(?:t(\d+):)?([a-z0-9_]+)$")


def band_indices(names: Sequence[str], bands: Sequence[str], steps: int,
                 where: str) -> list[list[int]]:
    """1-based file band index for every (step, band) a model needs.

    ``names`` are the file's band names in order: ``t0:red`` style, or plain ``red`` when the
    model has one time step.
    """
    found: dict[tuple[int, str], int] = {}
    for i, raw in enumerate(names, start=1):
        m = _NAME.match((raw or "").strip().lower())
        if not m:
            continue
        step = int(m.group(1)) if m.group(1) is not None else (0 if steps == 1 else -1)
        if step >= 0:
            found.setdefault((step, m.group(2)), i)
    out = []
    for t in range(steps):
        row = []
        for b in bands:
            if (t, b) not in found:
                label = f"t{t}:{b}" if steps > 1 else b
                raise BadInputError(
                    f"{where}: no band named {label!r} (the model needs "
                    f"{', '.join(f't{k}:{x}' for k in range(steps) for x in bands)}; name the "
                    "file's bands with --image-bands or band descriptions)")
            row.append(found[(t, b)])
        out.append(row)
    return out


def predict_image(model: Path, image: Path, out_dir: Path, band_names: Sequence[str] | None = None,
                  scale: float = 1.0, offset: float = 0.0, overlap: float = 0.25,
                  batch_size: int = 8, precision: str = "auto", name: str = "prediction",
                  write_probabilities: bool = False, device: str = "auto",
                  write_truecolor: bool = False,
                  progress: Callable[[str, float], None] | None = None) -> PredictResult:
    """Predict over the whole of ``image`` on its own grid; returns the products."""
    from terrastill.data.normalize import normalize_chip

    t_start = time.perf_counter()
    if not Path(image).exists():
        raise NotFoundError(f"{image}: image not found")
    device = resolve_device(device)
    loaded = _load(str(Path(model).resolve()), device)
    card, spec = loaded.card, loaded.card.input_spec
    from terrastill.models.modelfile import require_task_model

    require_task_model(card, model, "predict")
    steps, bands = int(spec["num_steps"]), list(spec["bands"])
    with rasterio.open(image) as src:
        if src.crs is None or src.crs.to_epsg() is None:
            raise BadInputError(f"{image}: needs a CRS with an EPSG code")
        names = list(band_names) if band_names else list(src.descriptions)
        if len(names) != src.count:
            raise BadInputError(f"{image}: {src.count} bands but {len(names)} names given")
        epsg, bounds, res, nodata = src.crs.to_epsg(), src.bounds, src.res[0], src.nodata
    index = band_indices(names, bands, steps, str(image))
    size = int(spec["chip_size"])
    grid, windows = window_grid(box(*bounds), epsg, size, res, overlap)
    req = PredictRequest(model=model, aois=[], date=dt.date.today(), out_dir=Path(out_dir),
                         write_probabilities=write_probabilities, name=name)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    rgb_idx = [bands.index(b) for b in ("red", "green", "blue")] if write_truecolor and all(
        b in bands for b in ("red", "green", "blue")) else None
    channels = 1 if card.task == "regression" else len(card.class_names)
    zone = _Zone(req, epsg, grid, channels, card.task, size, rgb_idx is not None)
    bf16 = use_bf16(precision, card, device)
    weight = window_weight(size)
    fill = nodata if nodata is not None else np.nan
    timings = {"read": 0.0, "inference": 0.0, "write": 0.0}
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            t0 = time.perf_counter()
            arrays = []
            for g in batch:
                a = np.stack([np.stack([read_asset(str(image), g, fill, band=i) for i in row])
                              for row in index]).astype(np.float32)
                bad = ~np.isfinite(a) | (a == fill) if nodata is not None else ~np.isfinite(a)
                a = a * np.float32(scale) + np.float32(offset)
                a[np.broadcast_to(bad.any(axis=(0, 1)), a.shape)] = np.nan
                arrays.append(a)
            tensors, valids = zip(*(normalize_chip(a, spec["mean"], spec["std"])
                                    for a in arrays), strict=True)
            t1 = time.perf_counter()
            values = run_model(loaded, tensors, bf16)
            t2 = time.perf_counter()
            for g, a, v, valid in zip(batch, arrays, values, valids, strict=True):
                rgb = a[-1, rgb_idx] if rgb_idx is not None else None
                zone.add(g, WindowOutput(v, np.asarray(valid, dtype=bool), rgb, []), weight)
            timings["read"] += t1 - t0
            timings["inference"] += t2 - t1
            timings["write"] += time.perf_counter() - t2
            if progress:
                progress("predict", min(1.0, (start + len(batch)) / len(windows)))
        t0 = time.perf_counter()
        paths = zone.finish(_colormap(card), {"model": card.name, "image": Path(image).name})
        timings["write"] += time.perf_counter() - t0
    except BaseException:
        zone.abort()
        raise
    timings["total"] = time.perf_counter() - t_start
    result = PredictResult(classes=[paths["classes"]],
                           probabilities=[paths["probabilities"]] if "probabilities" in paths
                           else [], truecolor=[paths["truecolor"]] if "truecolor" in paths
                           else [], timings={k: round(v, 4) for k, v in timings.items()},
                           windows=len(windows), pixels=grid.width * grid.height)
    result.sidecar = Path(out_dir) / f"{name}.json"
    write_text_atomic(result.sidecar, json.dumps({
        "format": "terrastill-prediction", "version": 1, "image": str(image),
        "model": {"path": str(model), "name": card.name, "task": card.task},
        "bands": {f"t{t}:{b}": index[t][c] for t in range(steps) for c, b in enumerate(bands)},
        "scale": scale, "offset": offset, "overlap": overlap, "timings": result.timings,
        "products": [str(p) for p in result.classes + result.probabilities + result.truecolor],
    }, indent=2))
    return result
