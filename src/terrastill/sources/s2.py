"""Sentinel-2 Level-2A profile (SCL cloud mask, processing-baseline offset)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from terrastill.sources.base import Band, SourceProfile
from terrastill.sources.qa import SCL_CLASSES, decode_scl


def baseline_offset(properties: Mapping[str, Any]) -> float:
    """Reflectance offset of an S2 L2A item: −0.1 from processing baseline 04.00 on.

    Catalogues that already removed the offset say so (``earthsearch:boa_offset_applied``).
    """
    if properties.get("earthsearch:boa_offset_applied"):
        return 0.0
    baseline = properties.get("s2:processing_baseline")
    if baseline is None:
        return 0.0
    try:
        major = float(str(baseline))
    except ValueError:
        return 0.0
    return -0.1 if major >= 4.0 else 0.0


S2L2A = SourceProfile(
    name="s2",
    title="Sentinel-2 Level-2A, 10/20 m surface reflectance",
    collections={
        "earth-search": ("sentinel-2-l2a",),
        "planetary-computer": ("sentinel-2-l2a",),
        "terrastill": ("sentinel-2-l2a",),
    },
    bands=(
        Band("blue", 10.0, 0.49),
        Band("green", 10.0, 0.56),
        Band("red", 10.0, 0.665),
        Band("nir_narrow", 20.0, 0.865),
        Band("swir1", 20.0, 1.61),
        Band("swir2", 20.0, 2.19),
        Band("nir", 10.0, 0.842),
    ),
    asset_keys={
        "blue": ("B02", "blue"),
        "green": ("B03", "green"),
        "red": ("B04", "red"),
        "nir": ("B08", "nir"),
        "nir_narrow": ("B8A", "nir08"),
        "swir1": ("B11", "swir16"),
        "swir2": ("B12", "swir22"),
        "qa": ("SCL", "scl"),
    },
    resolution=10.0,
    dtype="uint16",
    nodata=0,
    scale=0.0001,
    offset_fn=baseline_offset,
    qa_decoder=decode_scl,
    qa_classes=tuple(SCL_CLASSES),
    default_mask=("nodata", "saturated", "shadow", "cloud", "cirrus"),
    qa_nodata=0,
)
