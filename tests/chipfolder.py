"""Write a tiny synthetic chip folder in the exact ``terrastill chips`` contract (for tests).

Water blobs (label 1) have a water spectrum (NIR/SWIR low, NDWI > 0), land (label 0) a
vegetation spectrum; noise, a NaN patch (cloud) in one step of some chips and a few -1 label
pixels make it honest. Seeded: the same arguments write the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from affine import Affine

BANDS = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
WATER = np.array([0.07, 0.09, 0.06, 0.03, 0.015, 0.01], dtype=np.float32)
LAND = np.array([0.05, 0.08, 0.07, 0.28, 0.22, 0.13], dtype=np.float32)


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(size * 0.12, size * 0.35)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return mask


def write_chip_folder(
    root: str | Path,
    n_chips: int = 12,
    size: int = 32,
    num_steps: int = 3,
    seed: int = 0,
    task: str = "segmentation",
    splits: tuple[float, float] = (0.6, 0.2),
    noise: float = 0.02,
    bands: list[str] | None = None,
) -> Path:
    """Write ``root`` with chips/, labels/, index.parquet, dataset.json; return ``root``."""
    root = Path(root)
    bands = list(bands or BANDS)
    sel = [BANDS.index(b) if b in BANDS else 0 for b in bands]
    rng = np.random.default_rng(seed)
    (root / "chips").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    n_train = max(1, round(n_chips * splits[0]))
    n_val = max(1, round(n_chips * splits[1]))
    rows = []
    train_arrays = []
    for i in range(n_chips):
        cid = f"chip{i:04d}"
        water = _blobs(rng, size)
        steps = []
        for t in range(num_steps):
            spec = np.where(water[None], WATER[:, None, None], LAND[:, None, None])
            spec = spec * (1 + 0.1 * (t - 1)) + rng.normal(0, noise, spec.shape)
            spec = spec[sel].astype(np.float32)
            if i % 3 == 0 and t == num_steps - 1:  # a cloud hole
                spec[:, :4, :6] = np.nan
            steps.append(spec)
        arr = np.concatenate(steps, axis=0)  # (T*C, H, W) time-major
        if task == "regression":
            label = np.where(water, 2.0, 0.5).astype(np.float32) + rng.normal(
                0, 0.05, water.shape
            ).astype(np.float32)
            label[0, :3] = -1
            ldtype, lnodata = "float32", -1
        else:
            label = water.astype(np.int16)
            label[0, :3] = -1
            ldtype, lnodata = "int16", -1
        transform = Affine(30, 0.0, 500000 + i * size * 30, 0.0, -30, 4000000)
        profile = {"driver": "GTiff", "height": size, "width": size, "crs": "EPSG:32633",
                   "transform": transform}
        with rasterio.open(root / "chips" / f"{cid}.tif", "w", count=arr.shape[0],
                           dtype="float32", nodata=float("nan"), **profile) as dst:
            dst.write(arr)
            for t in range(num_steps):
                for c, b in enumerate(bands):
                    dst.set_band_description(t * len(bands) + c + 1, f"t{t}:{b}")
        with rasterio.open(root / "labels" / f"{cid}.tif", "w", count=1, dtype=ldtype,
                           nodata=lnodata, **profile) as dst:
            dst.write(label, 1)
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        if split == "train":
            train_arrays.append(arr.reshape(num_steps, len(bands), size, size))
        rows.append({"id": cid, "split": split, "label": int(water.mean() > 0.3),
                     "datetimes": [f"2024-0{t + 1}-15T10:00:00" for t in range(num_steps)],
                     "lat": 10.0 + i * 0.01, "lon": 20.0})
    pd.DataFrame(rows).to_parquet(root / "index.parquet")
    stack = np.stack(train_arrays)  # N, T, C, H, W
    mean = [float(np.nanmean(stack[:, :, c])) for c in range(len(bands))]
    std = [float(np.nanstd(stack[:, :, c])) for c in range(len(bands))]
    if task == "classification":
        class_names = ["dry", "wet"]
    elif task == "regression":
        class_names = []
    else:
        class_names = ["land", "water"]
    meta = {
        "source": "hls", "bands": bands, "num_steps": num_steps, "chip_size": size,
        "resolution": 30.0, "temporal_step": 16, "temporal_tolerance": 8, "max_cloud": 50,
        "mask_classes": ["cloud", "shadow"], "task": task, "class_names": class_names,
        "stats": {"mean": mean, "std": std},
        "counts": {"train": n_train, "val": n_val, "test": n_chips - n_train - n_val},
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
