"""Stream rows into a tiled GeoTIFF, then publish it as a validated Cloud-Optimized GeoTIFF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from terrastill.atomic import atomic_path
from terrastill.data.grid import GridSpec


class RowWriter:
    """A temporary tiled GeoTIFF that accepts horizontal strips of rows as they are final."""

    def __init__(self, path: Path, grid: GridSpec, count: int, dtype: str, nodata: float,
                 descriptions: Sequence[str] | None = None):
        self.path = path
        self.grid = grid
        prof = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": count,
                "dtype": dtype, "crs": grid.crs, "transform": grid.transform, "nodata": nodata,
                "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
                # the temporary file is read once, by publish_cog: the fastest compression
                # that still keeps a large AOI's scratch file small
                "compress": "zstd", "zstd_level": 1}
        self.ds = rasterio.open(path, "w", **prof)
        for i, d in enumerate(descriptions or [], start=1):
            self.ds.set_band_description(i, d)

    def write_rows(self, row0: int, data: np.ndarray) -> None:
        """Write ``data`` (count, rows, width) starting at output row ``row0``."""
        n = min(data.shape[1], self.grid.height - row0)
        if n > 0:
            self.ds.write(data[:, :n], window=Window(0, row0, self.grid.width, n))

    def close(self) -> None:
        self.ds.close()


def publish_cog(tmp_tif: Path, target: Path, resampling: str = "nearest",
                tags: dict[str, str] | None = None, colormap: dict | None = None) -> Path:
    """Convert a finished GeoTIFF into a COG at ``target`` (atomically) and validate it."""
    profile = cog_profiles.get("deflate")
    profile.update(blockxsize=256, blockysize=256)
    if tags or colormap:
        with rasterio.open(tmp_tif, "r+") as ds:
            if tags:
                ds.update_tags(**tags)
            if colormap:
                ds.write_colormap(1, colormap)
    with atomic_path(target) as out:
        cog_translate(str(tmp_tif), str(out), profile, overview_resampling=resampling,
                      quiet=True, in_memory=False, use_cog_driver=False)
        valid, errors, _warnings = cog_validate(str(out), quiet=True)
        if not valid:
            raise RuntimeError(f"{target}: produced an invalid COG ({'; '.join(errors)})")
    tmp_tif.unlink(missing_ok=True)
    return target
