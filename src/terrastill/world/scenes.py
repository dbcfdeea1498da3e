"""Scene encoding (reflectance -> DN, masks -> QA) and deterministic COG writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from terrastill.atomic import atomic_path
from terrastill.sources.qa import FMASK_NODATA, encode_fmask
from terrastill.world.clouds import PassMasks
from terrastill.world.truth import URBAN, WATER

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

# HLS asset key -> canonical band, per product
HLS_S30_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B8A": "nir_narrow",
                "B11": "swir1", "B12": "swir2"}
HLS_L30_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B05": "nir_narrow",
                "B06": "swir1", "B07": "swir2"}
S2_10M_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}
S2_20M_KEYS = {"B8A": "nir_narrow", "B11": "swir1", "B12": "swir2"}
S1_KEYS = {"vv": "vv", "vh": "vh"}

HLS_NODATA = -9999
S2_NODATA = 0
S1_NODATA = -32768.0


def blocksize(height: int, width: int) -> int:
    """256-pixel blocks, 128 for small images (the smallest block GDAL's COG driver takes)."""
    return 256 if min(height, width) >= 256 else 128


def write_cog(path: Path, data: np.ndarray, transform: Affine, epsg: int, nodata: float | None,
              resampling: str = "average", descriptions: list[str] | None = None,
              tags: dict[str, str] | None = None, block: int | None = None) -> None:
    """Write ``data`` ((bands,) H, W) as a deflate-compressed COG, atomically and byte-stable
    (internal tiles of ``block`` pixels, default :func:`blocksize`)."""
    arr = data if data.ndim == 3 else data[None]
    count, h, w = arr.shape
    profile = {
        "driver": "COG", "width": w, "height": h, "count": count, "dtype": arr.dtype.name,
        "crs": CRS.from_epsg(epsg), "transform": transform, "nodata": nodata,
        "BLOCKSIZE": block or blocksize(h, w), "COMPRESS": "DEFLATE", "LEVEL": 1,
        "OVERVIEW_RESAMPLING": resampling.upper(), "NUM_THREADS": 1,
    }
    if arr.dtype.kind in "iu":
        profile["PREDICTOR"] = 2
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(arr)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)


def hls_dn(refl: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """HLS int16 DN = reflectance x 10000, nodata -9999."""
    dn = np.clip(np.rint(refl * 10000.0), -100, 16000).astype(np.int16)
    dn[:, nodata] = HLS_NODATA
    return dn


def hls_fmask(masks: PassMasks, water: np.ndarray, aerosol: int) -> np.ndarray:
    """HLS Fmask (uint8 bits) from the pass masks; 255 where there is no data."""
    qa = encode_fmask(masks.cloud, masks.shadow, adjacent=masks.adjacent, cirrus=masks.cirrus,
                      water=water & ~masks.cloud, aerosol=aerosol)
    qa[masks.nodata] = FMASK_NODATA
    return qa


def s2_offset(baseline: str | None) -> float:
    """The DN offset of S2 L2A products: +1000 from processing baseline 04.00 on."""
    return 1000.0 if baseline is not None and float(baseline) >= 4.0 else 0.0


def s2_dn(refl: np.ndarray, nodata: np.ndarray, baseline: str | None) -> np.ndarray:
    """S2 L2A uint16 DN = reflectance x 10000 (+1000 from baseline 04.00), nodata 0."""
    dn = np.clip(np.rint(refl * 10000.0 + s2_offset(baseline)), 1, 65535).astype(np.uint16)
    dn[:, nodata] = S2_NODATA
    return dn


def s2_scl(masks: PassMasks, lc: np.ndarray, veg: np.ndarray, water: np.ndarray) -> np.ndarray:
    """S2 scene classification at the native (10 m) grid."""
    scl = np.full(lc.shape, 5, dtype=np.uint8)  # not vegetated
    scl[(veg > 0.35) & (lc != URBAN) & (lc != WATER)] = 4
    scl[water] = 6
    scl[masks.shadow] = 3
    scl[masks.cirrus & ~masks.cloud] = 10
    scl[masks.cloud] = 8
    scl[masks.cloud & (masks.opacity > 0.85)] = 9
    scl[masks.nodata] = 0
    return scl


def downsample2(refl: np.ndarray) -> np.ndarray:
    """2 x 2 mean (10 m -> 20 m) of a (bands, H, W) array with even H, W."""
    b, h, w = refl.shape
    return refl.reshape(b, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def any2(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    return mask.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))


def cloud_cover_fmask(qa: np.ndarray) -> float:
    """eo:cloud_cover of an HLS scene: percent of valid pixels with the Fmask cloud bit."""
    valid = qa != FMASK_NODATA
    n = int(valid.sum())
    return round(100.0 * int((((qa >> 1) & 1).astype(bool) & valid).sum()) / n, 2) if n else 0.0


def cloud_cover_scl(scl: np.ndarray) -> float:
    """eo:cloud_cover of an S2 scene: percent of valid pixels with SCL 8 or 9."""
    valid = scl != 0
    n = int(valid.sum())
    return round(100.0 * int((np.isin(scl, (8, 9)) & valid).sum()) / n, 2) if n else 0.0
