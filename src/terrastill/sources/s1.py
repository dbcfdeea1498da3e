"""Sentinel-1 radiometrically terrain-corrected (RTC) backscatter profile."""

from __future__ import annotations

from terrastill.sources.base import Band, SourceProfile

S1RTC = SourceProfile(
    name="s1",
    title="Sentinel-1 RTC gamma0 backscatter (linear power), 10 m",
    collections={
        "planetary-computer": ("sentinel-1-rtc",),
        "terrastill": ("sentinel-1-rtc",),
    },
    bands=(Band("vv", 10.0), Band("vh", 10.0)),
    asset_keys={"vv": ("vv",), "vh": ("vh",)},
    resolution=10.0,
    dtype="float32",
    nodata=-32768,
    scale=1.0,
    unit="gamma0 (linear)",
)
