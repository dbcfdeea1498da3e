"""Write the super-resolved scene (a float32 COG on the fine grid) and the shifts CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS

from terrastill.atomic import atomic_path, write_text_atomic
from terrastill.data.grid import GridSpec


def write_cog(path: Path, data: np.ndarray, grid: GridSpec, bands: list[str],
              tags: dict[str, str]) -> None:
    """(C, H, W) float32, NaN nodata, deflate with a float predictor, written atomically."""
    c, h, w = data.shape
    profile = {
        "driver": "COG", "width": w, "height": h, "count": c, "dtype": "float32",
        "crs": CRS.from_epsg(grid.epsg), "transform": grid.transform, "nodata": float("nan"),
        "BLOCKSIZE": 256 if min(h, w) >= 256 else 128, "COMPRESS": "DEFLATE",
        "PREDICTOR": 3, "OVERVIEW_RESAMPLING": "AVERAGE",
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data.astype(np.float32))
        for i, b in enumerate(bands, start=1):
            dst.set_band_description(i, b)
        dst.update_tags(**tags)


SHIFT_COLUMNS = ["crop", "row0", "col0", "date", "collection", "items", "valid_fraction",
                 "dx_m", "dy_m", "pc_dx_m", "pc_dy_m"]


def write_shifts(path: Path, rows: list[dict]) -> None:
    """One row per crop and acquisition: recovered and phase-correlation shifts (m, east /
    north, zero-mean over the crop's acquisitions)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SHIFT_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())
