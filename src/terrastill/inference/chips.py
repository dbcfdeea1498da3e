"""``terrastill predict --chips``: predict every chip of a chip dataset, one GeoTIFF each."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio

from terrastill.data.grid import GridSpec
from terrastill.data.rasters import write_raster
from terrastill.errors import BadInputError, SpecMismatchError


def check_spec(spec: dict, dataset: dict, where: str) -> None:
    """Refuse a dataset whose source, bands, T or chip size differ from a model's input spec."""
    for key in ("source", "bands", "num_steps", "chip_size"):
        if key in spec and key in dataset and spec[key] != dataset[key]:
            raise SpecMismatchError(
                f"{where}: {key} is {dataset[key]!r} but the model expects {spec[key]!r}")


def predict_chips(model: Path, chips_dir: Path, out: Path, batch_size: int = 16,
                  precision: str = "auto", device: str = "auto",
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Write ``out/<id>.tif`` class ids (uint8, nodata 255) for every chip; return the count."""
    from terrastill.data.dataset import doy_year, read_index
    from terrastill.data.normalize import normalize_chip
    from terrastill.inference.predict import _load, resolve_device, run_model, use_bf16
    from terrastill.models.modelfile import require_task_model

    ds_path = Path(chips_dir) / "dataset.json"
    if not ds_path.exists():
        raise BadInputError(f"{chips_dir}: not a chip dataset (no dataset.json)")
    dataset = json.loads(ds_path.read_text())
    device = resolve_device(device)
    loaded = _load(str(Path(model).resolve()), device)
    card = loaded.card
    require_task_model(card, model, "predict")
    spec = card.input_spec
    check_spec(spec, dataset, str(chips_dir))
    bf16 = use_bf16(precision, card, device, loaded.model)
    index = read_index(chips_dir)
    ids = list(index["id"])
    T, C = int(spec["num_steps"]), len(spec["bands"])
    done = 0
    for start in range(0, len(ids), batch_size):
        batch_ids = ids[start:start + batch_size]
        xs, valids, grids, coords = [], [], [], []
        for cid in batch_ids:
            with rasterio.open(Path(chips_dir) / "chips" / f"{cid}.tif") as src:
                arr = src.read().reshape(T, C, src.height, src.width)
                grid = GridSpec(src.crs.to_epsg(), src.transform, src.width, src.height)
                tags = src.tags()
            grids.append(grid)
            minx, miny, maxx, maxy = grid.lonlat_bounds()
            coords.append(([doy_year(tags[f"t{t}_date"]) for t in range(T)],
                           ((miny + maxy) / 2, (minx + maxx) / 2)))
            x, valid = normalize_chip(arr, spec["mean"], spec["std"])
            xs.append(x)
            valids.append(np.asarray(valid, dtype=bool))
        y = run_model(loaded, xs, bf16, coords)
        for cid, yi, valid, grid in zip(batch_ids, y, valids, grids, strict=True):
            if card.task == "regression":
                vals = np.where(valid, yi[0], np.nan).astype(np.float32)
                write_raster(Path(out) / f"{cid}.tif", vals, grid, float("nan"), ["value"])
            else:
                cls = np.where(valid, yi.argmax(0), 255).astype(np.uint8)
                write_raster(Path(out) / f"{cid}.tif", cls, grid, 255, ["class"])
        done += len(batch_ids)
        if progress:
            progress(done, len(ids))
    return done
