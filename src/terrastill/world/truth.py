"""Ground truth as continuous functions of location: land cover, a river, a flood, phenology.

All functions take kilometre coordinates in the region's ``LocalFrame`` so that any grid (any
tile, either UTM zone) samples the same world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import numpy as np

from terrastill.world.noise import fbm, hash01, value_noise

LANDCOVER_CLASSES = ["water", "forest", "cropland", "urban", "bare"]
WATER, FOREST, CROPLAND, URBAN, BARE = range(5)
FLOOD_CLASSES = ["land", "water"]

PARCEL_KM = 0.36  # cropland parcel size


@dataclass(frozen=True)
class Truth:
    """The static world of one seed: call it with km coordinates."""

    seed: int
    flood_date: date
    flood_end: date | None = None

    # --- geometry -----------------------------------------------------------------------
    def river_offset(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed north-south distance (km) from the river centreline, which runs west-east."""
        s = self.seed
        phase = hash01(np.array(s), np.array(1), 11) * 2 * math.pi
        centre = (1.6 * np.sin(2 * math.pi * x / 9.0 + phase)
                  + 0.7 * fbm(x, np.zeros_like(x), 4.0, s + 101, octaves=3)
                  - 0.8)
        return y - centre

    def river_halfwidth(self, x: np.ndarray) -> np.ndarray:
        return 0.075 + 0.03 * value_noise(x, np.zeros_like(x), 3.0, self.seed + 7)

    def permanent_water(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        river = np.abs(self.river_offset(x, y)) < self.river_halfwidth(x)
        lakes = fbm(x, y, 2.5, self.seed + 202, octaves=3) > 0.55
        return river | lakes

    def flood_zone(self, x: np.ndarray, y: np.ndarray,
                   water: np.ndarray | None = None) -> np.ndarray:
        """Land next to the river that the flood covers: a low floodplain, wider in bends."""
        d = np.abs(self.river_offset(x, y))
        width = 0.9 + 0.5 * value_noise(x, np.zeros_like(x), 2.5, self.seed + 303)
        lowland = fbm(x, y, 1.5, self.seed + 404, octaves=3) < 0.3
        reach = value_noise(x, np.zeros_like(x), 6.0, self.seed + 505) > -0.35
        if water is None:
            water = self.permanent_water(x, y)
        return (d < width) & lowland & reach & ~water

    def landcover(self, x: np.ndarray, y: np.ndarray,
                  water: np.ndarray | None = None) -> np.ndarray:
        """int16 class ids (index into LANDCOVER_CLASSES)."""
        s = self.seed
        out = np.full(np.shape(x), CROPLAND, dtype=np.int16)
        veg = fbm(x, y, 3.0, s + 1, octaves=4)
        out[veg > 0.22] = FOREST
        out[veg < -0.33] = BARE
        town = fbm(x, y, 2.0, s + 2, octaves=4)
        out[town > 0.38] = URBAN
        out[self.permanent_water(x, y) if water is None else water] = WATER
        return out

    def flooded(self, x: np.ndarray, y: np.ndarray, when: date) -> np.ndarray:
        """Water on ``when``: permanent water plus the flood zone during the flood."""
        water = self.permanent_water(x, y)
        if self.flood_date <= when and (self.flood_end is None or when < self.flood_end):
            water = water | self.flood_zone(x, y)
        return water

    def post_flood_water(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.flooded(x, y, self.flood_date)

    # --- seasons ------------------------------------------------------------------------
    def parcels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel parcel attributes: crop type (0 summer, 1 winter) and a date jitter (days)."""
        ix = np.floor(np.asarray(x) / PARCEL_KM).astype(np.int64)
        iy = np.floor(np.asarray(y) / (PARCEL_KM * 0.7)).astype(np.int64)
        crop = (hash01(ix, iy, self.seed + 606) < 0.3).astype(np.int8)
        jitter = (hash01(ix, iy, self.seed + 707) - 0.5) * 24.0
        return crop, jitter

    def vegetation(self, lc: np.ndarray, x: np.ndarray, y: np.ndarray, when: date) -> np.ndarray:
        """Green-vegetation cover fraction (0..1) per pixel on ``when``."""
        doy = when.timetuple().tm_yday
        f = np.zeros(np.shape(lc), dtype=np.float64)
        # deciduous forest: leaf-out late April, full by June, slight decline in September
        forest = 0.55 + 0.35 * _rise(doy, 120, 8) - 0.1 * _rise(doy, 262, 8)
        f[lc == FOREST] = forest
        f[lc == URBAN] = 0.12
        f[lc == BARE] = 0.03
        crop = lc == CROPLAND
        if crop.any():
            kind, jitter = self.parcels(x[crop], y[crop])
            # summer crop: green-up ~May, peak ~July, harvest ~early September
            summer = 0.05 + 0.85 * _rise(doy, 140 + jitter, 9) * (1 - _rise(doy, 245 + jitter, 5))
            # winter crop: already green in April, harvest ~early July
            winter = 0.35 + 0.55 * _rise(doy, 105 + jitter, 8)
            winter = 0.05 + (winter - 0.05) * (1 - _rise(doy, 185 + jitter, 4))
            f[crop] = np.where(kind == 1, winter, summer)
        return f


def _rise(doy: float | np.ndarray, mid: float | np.ndarray, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(doy - np.asarray(mid)) / width))


def class_fractions(lc: np.ndarray) -> dict[str, float]:
    n = max(1, lc.size)
    return {name: float((lc == i).sum()) / n for i, name in enumerate(LANDCOVER_CLASSES)}
