"""Harmonized Landsat Sentinel-2 (HLS v2.0, S30 + L30) profile."""

from __future__ import annotations

from terrastill.sources.base import Band, SourceProfile
from terrastill.sources.qa import FMASK_BITS, FMASK_NODATA, decode_fmask

# S30 and L30 use different asset keys for the same canonical band; both are listed.
HLS = SourceProfile(
    name="hls",
    title="NASA HLS v2.0 (HLSS30 + HLSL30), 30 m surface reflectance",
    collections={
        "cmr": ("HLSS30_2.0", "HLSL30_2.0"),
        "planetary-computer": ("hls2-s30", "hls2-l30"),
        "terrastill": ("HLSS30_2.0", "HLSL30_2.0"),
    },
    bands=(
        Band("blue", 30.0, 0.49),
        Band("green", 30.0, 0.56),
        Band("red", 30.0, 0.665),
        Band("nir_narrow", 30.0, 0.865),
        Band("swir1", 30.0, 1.61),
        Band("swir2", 30.0, 2.19),
    ),
    asset_keys={
        "blue": ("B02",),
        "green": ("B03",),
        "red": ("B04",),
        "nir_narrow": ("B8A", "B05"),
        "swir1": ("B11", "B06"),
        "swir2": ("B12", "B07"),
        "qa": ("Fmask",),
    },
    resolution=30.0,
    dtype="int16",
    nodata=-9999,
    scale=0.0001,
    qa_decoder=decode_fmask,
    qa_classes=(*FMASK_BITS, "aerosol_high"),
    default_mask=("cloud", "shadow"),
    qa_nodata=FMASK_NODATA,
)
