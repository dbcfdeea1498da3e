"""Landsat Collection 2 Level-2 surface reflectance profile (QA_PIXEL cloud mask)."""

from __future__ import annotations

from terrastill.sources.base import Band, SourceProfile
from terrastill.sources.qa import QA_PIXEL_BITS, decode_qa_pixel

LANDSAT_C2L2 = SourceProfile(
    name="landsat",
    title="Landsat 8/9 Collection 2 Level-2 surface reflectance, 30 m",
    collections={
        "planetary-computer": ("landsat-c2-l2",),
        "usgs": ("landsat-c2l2-sr",),
        "terrastill": ("landsat-c2-l2",),
    },
    bands=(
        Band("blue", 30.0, 0.48),
        Band("green", 30.0, 0.56),
        Band("red", 30.0, 0.655),
        Band("nir_narrow", 30.0, 0.865),
        Band("swir1", 30.0, 1.61),
        Band("swir2", 30.0, 2.2),
    ),
    asset_keys={
        "blue": ("blue", "SR_B2"),
        "green": ("green", "SR_B3"),
        "red": ("red", "SR_B4"),
        "nir_narrow": ("nir08", "SR_B5"),
        "swir1": ("swir16", "SR_B6"),
        "swir2": ("swir22", "SR_B7"),
        "qa": ("qa_pixel", "QA_PIXEL"),
    },
    resolution=30.0,
    dtype="uint16",
    nodata=0,
    scale=0.0000275,
    offset=-0.2,
    qa_decoder=decode_qa_pixel,
    qa_classes=tuple(QA_PIXEL_BITS),
    default_mask=("fill", "cloud", "dilated_cloud", "shadow", "cirrus"),
)
