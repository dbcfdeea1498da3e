"""``terrastill predict --image``: a model over any multi-band GeoTIFF whose bands are named."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioError
from rasterio.windows import Window
from shapely.geometry import box

from terrastill.atomic import write_text_atomic
from terrastill.data.grid import GridSpec, window_grid
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

log = logging.getLogger(__name__)
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
                  progress: Callable[[str, float], None] | None = None,
                  nodata: float | None = None) -> PredictResult:
    """Predict over the whole of ``image`` on its own grid; returns the products.

    ``nodata`` overrides (or supplies) the image's nodata value; pixels outside the image and
    non-finite values are always nodata. Nothing is left in ``out_dir`` when it fails (the
    folder too, if this call made it)."""
    made = not Path(out_dir).exists()
    try:
        return _predict_image(model, image, Path(out_dir), band_names, scale, offset, overlap,
                              batch_size, precision, name, write_probabilities, device,
                              write_truecolor, progress, nodata)
    except BaseException:
        if made:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _open(image: Path) -> rasterio.DatasetReader:
    try:
        return rasterio.open(image)
    except RasterioError as exc:
        raise BadInputError(f"{image}: not a readable raster ({exc})") from exc


def _predict_image(model: Path, image: Path, out_dir: Path, band_names: Sequence[str] | None,
                   scale: float, offset: float, overlap: float, batch_size: int, precision: str,
                   name: str, write_probabilities: bool, device: str, write_truecolor: bool,
                   progress: Callable[[str, float], None] | None,
                   nodata: float | None) -> PredictResult:
    from terrastill.data.normalize import normalize_chip
    from terrastill.models.modelfile import require_task_model

    t_start = time.perf_counter()
    if not Path(image).exists():
        raise NotFoundError(f"{image}: image not found")
    device = resolve_device(device)
    loaded = _load(str(Path(model).resolve()), device)
    card, spec = loaded.card, loaded.card.input_spec
    require_task_model(card, model, "predict")
    steps, bands = int(spec["num_steps"]), list(spec["bands"])
    with _open(image) as src:
        if src.crs is None or src.crs.to_epsg() is None:
            raise BadInputError(f"{image}: needs a CRS with an EPSG code (georeference it, "
                                "e.g. gdal_edit.py -a_srs EPSG:32633 -a_ullr ...)")
        names = list(band_names) if band_names else list(src.descriptions)
        if len(names) != src.count:
            raise BadInputError(f"{image}: {src.count} bands but {len(names)} names given")
        epsg, transform, width, height = src.crs.to_epsg(), src.transform, src.width, src.height
        file_nodata = src.nodata
    nodata = file_nodata if nodata is None else nodata
    index = band_indices(names, bands, steps, str(image))
    size = int(spec["chip_size"])
    grid, windows = image_windows(epsg, transform, width, height, size, overlap)
    req = PredictRequest(model=model, aois=[], date=dt.date.today(), out_dir=Path(out_dir),
                         write_probabilities=write_probabilities, name=name)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    rgb_idx = [bands.index(b) for b in ("red", "green", "blue")] if write_truecolor and all(
        b in bands for b in ("red", "green", "blue")) else None
    channels = 1 if card.task == "regression" else len(card.class_names)
    zone = _Zone(req, epsg, grid, channels, card.task, size, rgb_idx is not None)
    bf16 = use_bf16(precision, card, device, loaded.model)
    weight = window_weight(size)
    timings = {"read": 0.0, "inference": 0.0, "write": 0.0}
    flat = [i for row in index for i in row]
    checked = False
    notes: list[str] = []
    try:
        with _open(image) as src:
            for start in range(0, len(windows), batch_size):
                batch = windows[start:start + batch_size]
                t0 = time.perf_counter()
                arrays = [_read_window(src, g, flat, steps, nodata, scale, offset, image)
                          for g in batch]
                if not checked:
                    checked = _check_range(arrays, spec, scale, image, notes)
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
    _warn_if_empty(paths["classes"], image, nodata, notes)
    timings["total"] = time.perf_counter() - t_start
    result = PredictResult(classes=[paths["classes"]],
                           probabilities=[paths["probabilities"]] if "probabilities" in paths
                           else [], truecolor=[paths["truecolor"]] if "truecolor" in paths
                           else [], timings={k: round(v, 4) for k, v in timings.items()},
                           windows=len(windows), pixels=grid.width * grid.height,
                           warnings=notes)
    result.sidecar = Path(out_dir) / f"{name}.json"
    write_text_atomic(result.sidecar, json.dumps({
        "format": "terrastill-prediction", "version": 1, "image": str(image),
        "model": {"path": str(model), "name": card.name, "task": card.task},
        "bands": {f"t{t}:{b}": index[t][c] for t in range(steps) for c, b in enumerate(bands)},
        "scale": scale, "offset": offset, "nodata": nodata, "overlap": overlap,
        "timings": result.timings,
        "products": [str(p) for p in result.classes + result.probabilities + result.truecolor],
    }, indent=2))
    return result


def image_windows(epsg: int, transform: Affine, width: int, height: int, size: int,
                  overlap: float) -> tuple[GridSpec, list[GridSpec]]:
    """The image's own pixel grid and the sliding windows over it (:func:`window_grid`'s
    layout, laid out in pixels, so windows sit exactly on the image's pixels whatever its
    origin and pixel size)."""
    _unit, in_pixels = window_grid(box(0, -height, width, 0), epsg, size, 1.0, overlap)
    windows = [GridSpec(epsg, transform @ Affine.translation(int(round(w.transform.c)),
                                                            int(round(-w.transform.f))),
                        size, size) for w in in_pixels]
    return GridSpec(epsg, transform, max(size, width), max(size, height)), windows


def _read_window(src: rasterio.DatasetReader, g: GridSpec, flat: list[int], steps: int,
                 nodata: float | None, scale: float, offset: float,
                 image: Path) -> np.ndarray:
    """(T, C, H, W) float32 of window ``g`` (on the image's own grid), scaled; NaN where a
    pixel is outside the image, nodata or not finite in any band of any step."""
    col, row = (int(round(v)) for v in ~src.transform @ (g.transform.c, g.transform.f))
    win = Window(col, row, g.width, g.height)
    try:
        raw = src.read(flat, window=win, boundless=True, fill_value=0).astype(np.float32)
    except RasterioError as exc:
        raise BadInputError(f"{image}: cannot read (corrupt or truncated: {exc})") from exc
    rows = np.arange(row, row + g.height)[:, None]
    cols = np.arange(col, col + g.width)[None, :]
    bad = ~((rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width))
    bad = bad | ~np.isfinite(raw).all(axis=0)
    if nodata is not None and np.isfinite(nodata):
        bad |= (raw == np.float32(nodata)).any(axis=0)
    a = raw * np.float32(scale) + np.float32(offset)
    a[:, bad] = np.nan
    return a.reshape(steps, len(flat) // steps, g.height, g.width)


def _check_range(arrays: Sequence[np.ndarray], spec: dict, scale: float, image: Path,
                 notes: list[str]) -> bool:
    """Warn once when the values are far from what the model was trained on (e.g. DN
    0-10000 fed to a reflectance model without --scale). True once there was data to see."""
    values = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if not values.size:
        return False
    median = float(np.median(np.abs(values)))
    expect = float(np.median(np.abs(np.asarray(spec["mean"], dtype=float)))) or 1.0
    if median > 20 * expect:
        # reflectance models fed DN of reflectance × 10000 (HLS, Sentinel-2, InstaGeo chips)
        likely = 1e-4 if expect < 2 and 50 < median < 20_000 else \
            10.0 ** -round(np.log10(median / expect))
        fix = "pass --scale" if scale == 1.0 else f"check --scale {scale:g}"
        notes.append(f"{image.name}: values are about {median:.4g} but the model was trained "
                     f"on values about {expect:.3g}: {fix} (e.g. --scale {likely:g} for DN of "
                     "reflectance × 10000)")
    elif median < expect / 20:
        notes.append(f"{image.name}: values are about {median:.3g} but the model was trained "
                     f"on values about {expect:.3g}: check --scale {scale:g}")
    for note in notes:
        log.info(note)
    return True


def _warn_if_empty(classes: Path, image: Path, nodata: float | None,
                   notes: list[str]) -> None:
    """Warn when ≥ 90 % of the product is nodata, and say why that can be."""
    with rasterio.open(classes) as src:
        data = src.read(1)
        share = float((data == (src.nodata if src.nodata is not None else 255)).mean()) \
            if src.dtypes[0] == "uint8" else float(np.isnan(data).mean())
    if share >= 0.9:
        why = f"value {nodata:g}" if nodata is not None else "no nodata value set"
        notes.append(f"{classes.name}: {share:.0%} of the prediction is nodata: most pixels of "
                     f"{image.name} are nodata ({why}), missing in some band or step, or not "
                     "finite")
        log.info(notes[-1])
