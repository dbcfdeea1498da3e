"""A torch ``Dataset`` over a chip folder written by ``terrastill chips``.

Folder contract: ``chips/<id>.tif`` (float32, T*C bands time-major, NaN nodata),
``labels/<id>.tif`` (int16 class ids, -1 ignore; float32 targets for regression),
``index.parquet`` (one row per chip: ``id``, ``split``, ...), ``dataset.json`` (source, bands,
num_steps, chip_size, stats.mean/std, task, class_names, ...).

Each item is a dict: ``image`` (C, T, H, W) float32 normalised (NaN -> 0), ``valid`` (H, W)
bool, ``label`` ((H, W) int64 with -1 where ignored or invalid; (H, W) float32 with NaN for
regression; a 0-d int64 for classification), ``id``, and for models with temporal/location
encodings ``temporal_coords`` (T, 2: year, day of year) and ``location_coords`` (2: lat, lon).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from terrastill.data.normalize import normalize_chip, split_time_bands
from terrastill.errors import BadInputError, NotFoundError

log = logging.getLogger(__name__)

REQUIRED_META = ("bands", "num_steps", "chip_size", "stats")


def read_dataset_meta(chips_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``dataset.json`` of a chip folder, checked for the keys training needs."""
    root = Path(chips_dir)
    path = root / "dataset.json"
    if not path.is_file():
        raise NotFoundError(f"{root}: not a chip folder (no dataset.json)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read ({exc})") from exc
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise BadInputError(f"{path}: missing key(s) {', '.join(missing)}")
    stats = meta["stats"]
    if len(stats.get("mean", [])) != len(meta["bands"]) or len(stats.get("std", [])) != len(
        meta["bands"]
    ):
        raise BadInputError(f"{path}: stats.mean/std must have one value per band")
    meta.setdefault("task", "segmentation")
    meta.setdefault("class_names", [])
    return meta


def read_index(chips_dir: str | os.PathLike[str]) -> Any:
    import pandas as pd

    path = Path(chips_dir) / "index.parquet"
    if not path.is_file():
        raise NotFoundError(f"{Path(chips_dir)}: not a chip folder (no index.parquet)")
    df = pd.read_parquet(path)
    for col in ("id", "split"):
        if col not in df.columns:
            raise BadInputError(f"{path}: missing column {col!r}")
    return df


def doy_year(value: Any) -> tuple[float, float]:
    import pandas as pd

    ts = pd.Timestamp(value)
    return float(ts.year), float(ts.day_of_year - 1)


class ChipDataset(Dataset):
    """Chips of one split (``"train"``, ``"val"``, ``"test"`` or ``"all"``)."""

    def __init__(
        self,
        chips_dir: str | os.PathLike[str],
        split: str = "train",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
        coords: bool = False,
        require: str = "all",
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(chips_dir)
        self.meta = dict(meta) if meta is not None else read_dataset_meta(self.root)
        df = read_index(self.root)
        if split != "all":
            df = df[df["split"] == split]
        self.index = df.reset_index(drop=True)
        self.ids = [str(i) for i in self.index["id"]]
        self.split = split
        self.task = str(self.meta.get("task", "segmentation"))
        self.num_steps = int(self.meta["num_steps"])
        self.bands = list(self.meta["bands"])
        self.mean = [float(v) for v in self.meta["stats"]["mean"]]
        self.std = [float(v) for v in self.meta["stats"]["std"]]
        self.transform = transform
        self.coords = coords
        self.require = require
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        import rasterio

        cid = self.ids[i]
        chip_path = self.root / "chips" / f"{cid}.tif"
        label_path = self.root / "labels" / f"{cid}.tif"
        try:
            with rasterio.open(chip_path) as src:
                img = src.read().astype(np.float32)
                if src.nodata is not None and not np.isnan(src.nodata):
                    img[img == src.nodata] = np.nan
            with rasterio.open(label_path) as src:
                lab = src.read(1)
                lab_nodata = src.nodata
        except rasterio.errors.RasterioIOError as exc:
            raise NotFoundError(f"chip {cid}: cannot read ({exc})") from exc
        img = split_time_bands(img, self.num_steps)
        if img.shape[1] != len(self.bands):
            raise BadInputError(f"chip {cid}: {img.shape[1]} bands per step, "
                                f"dataset.json names {len(self.bands)}")
        if self.task == "regression":
            lab = lab.astype(np.float32)
            bad = ~np.isfinite(lab)
            if lab_nodata is not None and np.isfinite(lab_nodata):
                bad |= lab == lab_nodata
            lab[bad] = np.nan
        else:
            lab = lab.astype(np.int64)
            lab[lab < 0] = -1
        if self._cache is not None:
            self._cache[i] = (img, lab)
        return img, lab

    def _coords(self, i: int) -> dict[str, torch.Tensor]:
        row = self.index.iloc[i]
        out: dict[str, torch.Tensor] = {}
        dates = None
        for col in ("step_dates", "step_datetimes", "datetimes", "dates"):
            if col in row.index and row[col] is not None:
                val = row[col]
                if isinstance(val, str):
                    val = json.loads(val)
                dates = [v[0] if isinstance(v, (list, tuple, np.ndarray)) and len(v) else v
                         for v in val]
                break
        tc = [doy_year(d) if d else (0.0, 0.0) for d in dates] if dates else \
            [(0.0, 0.0)] * self.num_steps
        out["temporal_coords"] = torch.tensor(tc[: self.num_steps], dtype=torch.float32)
        lat = lon = 0.0
        if "lat" in row.index and "lon" in row.index:
            lat, lon = float(row["lat"]), float(row["lon"])
        elif "geometry" in row.index and row["geometry"] is not None:
            from shapely import wkb

            g = row["geometry"]
            g = wkb.loads(bytes(g)) if isinstance(g, (bytes, bytearray, memoryview)) else g
            c = g.centroid
            lat, lon = float(c.y), float(c.x)
        out["location_coords"] = torch.tensor([lat, lon], dtype=torch.float32)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, lab = self._read(i)
        image, valid = normalize_chip(img, self.mean, self.std, require=self.require)
        item: dict[str, Any] = {"image": image, "valid": valid, "id": self.ids[i]}
        if self.task == "regression":
            target = torch.from_numpy(lab.copy())
            target[~valid] = float("nan")
            item["label"] = target
        elif self.task == "classification":
            if "label" in self.index.columns:
                item["label"] = torch.tensor(int(self.index.iloc[i]["label"]))
            else:
                v = lab[(lab >= 0) & valid.numpy()]
                item["label"] = torch.tensor(int(np.bincount(v).argmax()) if v.size else -1)
        else:
            target = torch.from_numpy(lab.copy())
            target[~valid] = -1
            item["label"] = target
        if self.coords:
            item.update(self._coords(i))
        if self.transform is not None:
            item = self.transform(item)
        return item


def class_frequencies(ds: ChipDataset, num_classes: int) -> np.ndarray:
    """Pixel counts per class over ``ds`` (ignored and invalid pixels excluded)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in range(len(ds)):
        img, lab = ds._read(i)
        _, valid = normalize_chip(img, ds.mean, ds.std, require=ds.require)
        v = lab[valid.numpy() & (lab >= 0) & (lab < num_classes)]
        counts += np.bincount(v.astype(np.int64).ravel(), minlength=num_classes)
    return counts
