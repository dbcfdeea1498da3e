"""Sensor profiles as data: one module per source, looked up by name."""

from __future__ import annotations

from terrastill.errors import BadInputError
from terrastill.sources.base import Band, SourceProfile
from terrastill.sources.hls import HLS
from terrastill.sources.landsat import LANDSAT_C2L2
from terrastill.sources.s1 import S1RTC
from terrastill.sources.s2 import S2L2A

PROFILES: dict[str, SourceProfile] = {p.name: p for p in (HLS, S2L2A, S1RTC, LANDSAT_C2L2)}


def get_profile(name: str) -> SourceProfile:
    """Return the profile called ``name`` or raise a clear error listing the known ones."""
    try:
        return PROFILES[name.lower()]
    except KeyError:
        raise BadInputError(
            f"unknown source {name!r} (expected one of {', '.join(sorted(PROFILES))})"
        ) from None


__all__ = ["PROFILES", "Band", "SourceProfile", "get_profile"]
