"""From images per second to "how long (and how much) to map the Earth's land once".

One chip of ``chip_size`` pixels at ``gsd`` metres covers ``(chip_size · gsd / 1000)²`` km².
Sliding-window inference with a window overlap ``o`` (fraction of the window, in both x and y)
advances by ``chip_size · (1 − o)`` pixels, so each window adds only
``(chip_size · (1 − o) · gsd / 1000)²`` km² of new ground: 50% overlap needs 4× the windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Earth's land surface, rounded (≈148.9 million km² incl. Antarctica): the "map the Earth" unit.
LAND_AREA_KM2 = 150e6


@dataclass(frozen=True)
class EarthCost:
    km2_per_chip: float
    km2_per_s: float
    hours: float
    cost: float | None
    overlap: float

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def km2_per_chip(chip_size: int, gsd_m: float, overlap: float = 0.0) -> float:
    """New ground covered per window (km²) at ``overlap`` (0 ≤ overlap < 1)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    side_km = chip_size * (1.0 - overlap) * gsd_m / 1000.0
    return side_km * side_km


def earth_cost(images_per_s: float, chip_size: int, gsd_m: float,
               price_per_hour: float | None = None, overlap: float = 0.0,
               area_km2: float = LAND_AREA_KM2) -> EarthCost:
    """km²/s, hours and cost (at ``price_per_hour``) to map ``area_km2`` once."""
    per_chip = km2_per_chip(chip_size, gsd_m, overlap)
    km2_s = images_per_s * per_chip
    hours = area_km2 / km2_s / 3600.0 if km2_s > 0 else float("inf")
    cost = hours * price_per_hour if price_per_hour is not None else None
    return EarthCost(km2_per_chip=per_chip, km2_per_s=km2_s, hours=hours, cost=cost,
                     overlap=overlap)


def earth_columns(images_per_s: float, chip_size: int, gsd_m: float,
                  price_per_hour: float | None = None) -> dict[str, float | None]:
    """The CSV columns: km²/s, hours and cost without overlap and with 50% window overlap."""
    a = earth_cost(images_per_s, chip_size, gsd_m, price_per_hour, 0.0)
    b = earth_cost(images_per_s, chip_size, gsd_m, price_per_hour, 0.5)
    return {"km2_per_s": a.km2_per_s, "earth_hours": a.hours, "earth_cost": a.cost,
            "earth_hours_overlap50": b.hours, "earth_cost_overlap50": b.cost}
