"""The acquisition schedule: irregular passes over the whole region, per source.

A *pass* is one overpass of one platform; every tile it covers gets one item with the same
datetime, the same clouds and the same swath edge (tiles in both UTM zones alike).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import numpy as np

from terrastill.world.config import WorldConfig


@dataclass(frozen=True)
class Pass:
    index: int
    datetime: datetime
    collection: str
    platform: str
    constellation: str
    instruments: tuple[str, ...]
    product: str  # "S30" / "L30" (HLS), "L2A" (S2), "RTC" (S1)
    seed: int
    cloud_frac: float  # target cloud fraction over the region (0 = clear)
    cirrus: bool
    aerosol: int  # Fmask aerosol level 0..3
    edge: tuple[float, float, float] | None  # nodata where x*a + y*b > c (km frame)
    shadow_km: tuple[float, float]  # cloud -> shadow displacement (east, north) km
    sun_azimuth: float
    sun_elevation: float
    baseline: str | None = None  # S2 processing baseline
    orbit_state: str | None = None  # S1
    relative_orbit: int = 0

    @property
    def date(self):
        return self.datetime.date()


HLS_S30 = ("HLSS30_2.0", "sentinel-2", ("msi",), "S30")
HLS_L30 = ("HLSL30_2.0", "landsat", ("oli", "tirs"), "L30")


def _sun(doy: int, lat: float) -> tuple[float, float]:
    """Rough late-morning sun azimuth/elevation (degrees) for the day of year."""
    decl = 23.44 * math.sin(math.radians(360.0 * (284 + doy) / 365.0))
    elev = 90.0 - lat + decl - 12.0  # ~1.5 h before local noon
    return 145.0, max(15.0, elev)


def make_schedule(config: WorldConfig, bbox_km: tuple[float, float, float, float]) -> list[Pass]:
    """All passes between ``config.start`` and ``config.end`` (deterministic by seed)."""
    rng = np.random.default_rng([config.seed, 2024])
    passes: list[Pass] = []
    day = config.start + timedelta(days=int(rng.integers(0, 3)))
    x0, y0, x1, y1 = bbox_km
    idx = 0
    while day <= config.end:
        kind = config.source
        if kind == "hls":
            s30 = rng.random() < 0.6
            collection, constellation, instruments, product = HLS_S30 if s30 else HLS_L30
            platform = (rng.choice(["sentinel-2a", "sentinel-2b"]) if s30
                        else rng.choice(["landsat-8", "landsat-9"]))
            hhmm = time(10, 21, 59) if s30 else time(10, 2, 11)
        elif kind == "s2":
            collection, constellation, instruments, product = ("sentinel-2-l2a", "sentinel-2",
                                                               ("msi",), "L2A")
            platform = "sentinel-2a" if idx % 2 == 0 else "sentinel-2b"
            hhmm = time(10, 20, 31)
        else:
            collection, constellation, instruments, product = ("sentinel-1-rtc", "sentinel-1",
                                                               ("c-sar",), "RTC")
            platform = "sentinel-1a"
            hhmm = time(5, 17, 42) if idx % 2 == 0 else time(17, 10, 3)
        when = datetime.combine(day, hhmm, tzinfo=UTC) + timedelta(
            seconds=int(rng.integers(0, 40)), microseconds=int(rng.integers(0, 1000)) * 1000)
        # cloudiness: many clear, some partly, some very cloudy
        u = rng.random()
        if kind == "s1" or u < 0.45:
            frac = 0.0
        elif u < 0.75:
            frac = float(rng.uniform(0.02, 0.2))
        else:
            frac = float(rng.uniform(0.3, 0.9))
        edge = None
        if rng.random() < 0.2:
            ang = math.radians(float(rng.choice([-1, 1])) * rng.uniform(25, 65))
            a, b = math.cos(ang), math.sin(ang)
            if rng.random() < 0.5:
                a, b = -a, -b
            # the swath edge crosses the region somewhere in its middle 60 %
            px = x0 + (x1 - x0) * rng.uniform(0.2, 0.8)
            py = y0 + (y1 - y0) * rng.uniform(0.2, 0.8)
            edge = (a, b, a * px + b * py)
        az, elev = _sun(day.timetuple().tm_yday, config.center_lat)
        height = rng.uniform(0.6, 1.6)  # cloud height km
        dist = height / math.tan(math.radians(elev))
        away = math.radians(az + 180.0)
        shadow = (dist * math.sin(away), dist * math.cos(away))
        baseline = None
        if kind == "s2":
            baseline = "03.00" if idx < _n_old_baseline(config) else "05.00"
        passes.append(Pass(
            index=idx, datetime=when, collection=collection, platform=str(platform),
            constellation=constellation, instruments=instruments, product=product,
            seed=int(rng.integers(1, 2**31 - 1)), cloud_frac=frac,
            cirrus=kind != "s1" and rng.random() < 0.15,
            aerosol=int(rng.choice([1, 1, 1, 2])), edge=edge, shadow_km=shadow,
            sun_azimuth=round(az, 2), sun_elevation=round(elev, 2), baseline=baseline,
            orbit_state=("descending" if idx % 2 == 0 else "ascending") if kind == "s1" else None,
            relative_orbit=22 if idx % 2 == 0 else 117,
        ))
        idx += 1
        day += timedelta(days=max(1, config.revisit + int(rng.choice([-1, 0, 0, 1, 2]))))
    return passes


def _n_old_baseline(config: WorldConfig) -> int:
    """How many early S2 passes carry the old (03.00, no offset) processing baseline."""
    n = ((config.end - config.start).days // config.revisit) + 1
    return max(1, min(3, n // 5))
