"""Decoders for sensor quality bands: HLS Fmask bits, Sentinel-2 SCL classes, Landsat QA_PIXEL."""

from __future__ import annotations

import numpy as np

# HLS v2.0 Fmask bit layout (HLS user guide, table "Fmask"): bits 6-7 are the aerosol level and
# never mean cloud.
FMASK_BITS = {
    "cirrus": 0,
    "cloud": 1,
    "adjacent": 2,
    "shadow": 3,
    "snow": 4,
    "water": 5,
}
FMASK_NODATA = 255


def _bit(qa: np.ndarray, bit: int) -> np.ndarray:
    return ((qa.astype(np.uint16) >> bit) & 1).astype(bool)


def decode_fmask(qa: np.ndarray) -> dict[str, np.ndarray]:
    """Decode an HLS Fmask array into boolean masks (255 = nodata is no class)."""
    valid = qa != FMASK_NODATA
    out = {name: _bit(qa, bit) & valid for name, bit in FMASK_BITS.items()}
    aerosol = (qa.astype(np.uint16) >> 6) & 3
    out["aerosol_high"] = (aerosol == 3) & valid
    return out


def encode_fmask(
    cloud: np.ndarray,
    shadow: np.ndarray,
    adjacent: np.ndarray | None = None,
    cirrus: np.ndarray | None = None,
    snow: np.ndarray | None = None,
    water: np.ndarray | None = None,
    aerosol: np.ndarray | int = 1,
) -> np.ndarray:
    """Pack boolean layers into Fmask bits (used by the synthetic world)."""
    qa = np.zeros(cloud.shape, dtype=np.uint8)
    layers = {"cloud": cloud, "shadow": shadow, "adjacent": adjacent, "cirrus": cirrus,
              "snow": snow, "water": water}
    for name, layer in layers.items():
        if layer is not None:
            qa |= (layer.astype(np.uint8) << FMASK_BITS[name]).astype(np.uint8)
    qa |= (np.asarray(aerosol, dtype=np.uint8) & 3) << 6
    return qa


# Sentinel-2 L2A scene classification (SCL) values.
SCL_CLASSES = {
    "nodata": [0],
    "saturated": [1],
    "dark": [2],
    "shadow": [3],
    "vegetation": [4],
    "bare": [5],
    "water": [6],
    "unclassified": [7],
    "cloud_medium": [8],
    "cloud": [8, 9],
    "cloud_high": [9],
    "cirrus": [10],
    "snow": [11],
}


def decode_scl(qa: np.ndarray) -> dict[str, np.ndarray]:
    """Decode a Sentinel-2 SCL array into boolean masks."""
    return {name: np.isin(qa, values) for name, values in SCL_CLASSES.items()}


# Landsat Collection 2 Level-2 QA_PIXEL bits.
QA_PIXEL_BITS = {
    "fill": 0,
    "dilated_cloud": 1,
    "cirrus": 2,
    "cloud": 3,
    "shadow": 4,
    "snow": 5,
    "clear": 6,
    "water": 7,
}


def decode_qa_pixel(qa: np.ndarray) -> dict[str, np.ndarray]:
    """Decode a Landsat C2 QA_PIXEL array into boolean masks."""
    return {name: _bit(qa, bit) for name, bit in QA_PIXEL_BITS.items()}
