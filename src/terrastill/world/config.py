"""Every option of the synthetic world in one pydantic model (CLI flags map onto its fields)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SOURCES = ("hls", "s2", "s1")

# Native (finest) resolution and the grid alignment of each source's tiles (metres): S2 mixes
# 10 m and 20 m bands, so its tile origins sit on 20 m multiples.
SOURCE_RESOLUTION = {"hls": 30.0, "s2": 10.0, "s1": 10.0}
SOURCE_ALIGN = {"hls": 30.0, "s2": 20.0, "s1": 10.0}


class WorldConfig(BaseModel):
    """All options of ``terrastill world``; the defaults give the demo world."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["hls", "s2", "s1"] = "hls"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    center_lon: float = Field(12.0, ge=-177.0, le=177.0)
    center_lat: float = Field(45.3, ge=-79.0, le=83.0)
    zones: Literal[1, 2] = 2
    tiles_x: int = Field(2, ge=1, le=16)
    tiles_y: int = Field(2, ge=1, le=16)
    tile_size: int = Field(256, ge=16, le=4096)
    overlap: int | None = Field(None, ge=0)
    start: date = date(2024, 4, 1)
    end: date = date(2024, 9, 30)
    revisit: int = Field(6, ge=1, le=60)
    flood_date: date | None = None  # default: 2/3 into the season
    flood_end: date | None = None  # recession date; None = the water stays until `end`
    observations: int = Field(200, ge=0, le=100_000)
    bad_rows: bool = False
    workers: int = Field(0, ge=0, le=64)  # processes for the scenes (0: auto); same bytes
    # internal tile size of the scene COGs (None: 256, 128 for small tiles); real HLS: 512
    block_size: int | None = Field(None, ge=128, le=2048, multiple_of=128)
    # s2 only: scenes rendered from a truth this many times finer, through a Gaussian PSF of
    # fine_psf m and per-pass shifts of fine_shift m (std); see world/fine.py
    fine_factor: int = Field(1, ge=1, le=8)
    fine_psf: float = Field(3.0, gt=0.0, le=20.0)
    fine_shift: float = Field(2.0, ge=0.0, le=10.0)

    @model_validator(mode="after")
    def _check(self) -> WorldConfig:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        fd = self.flood
        if not (self.start < fd <= self.end):
            raise ValueError(f"flood date {fd} must be after start {self.start} and not after end "
                             f"{self.end}")
        if self.flood_end is not None and self.flood_end <= fd:
            raise ValueError(f"flood end {self.flood_end} must be after flood date {fd}")
        if self.overlap_px >= self.tile_size // 2:
            raise ValueError(f"overlap {self.overlap_px} must be less than half the tile size")
        if self.source == "s2" and self.tile_size % 2:
            raise ValueError("Sentinel-2 tiles need an even tile size (20 m bands)")
        if self.fine_factor > 1 and self.source != "s2":
            raise ValueError("a fine truth (fine factor > 1) needs source s2")
        return self

    @property
    def resolution(self) -> float:
        return SOURCE_RESOLUTION[self.source]

    @property
    def align(self) -> float:
        return SOURCE_ALIGN[self.source]

    @property
    def overlap_px(self) -> int:
        """Pixels shared by neighbouring tiles of one zone (even, like real tile grids)."""
        if self.overlap is not None:
            return self.overlap + (self.overlap % 2 if self.source == "s2" else 0)
        o = max(2, self.tile_size // 16)
        return o + (o % 2)

    @property
    def flood(self) -> date:
        """The flood date (explicit, or two thirds into the season)."""
        if self.flood_date is not None:
            return self.flood_date
        from datetime import timedelta

        return self.start + timedelta(days=round((self.end - self.start).days * 2 / 3))
