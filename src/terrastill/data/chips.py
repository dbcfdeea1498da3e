"""Read one multi-temporal chip on a grid: acquisition choice, masked reads, provenance."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rasterio.enums import Resampling
from shapely.geometry import box, shape

from terrastill.data.grid import GridSpec
from terrastill.data.read import (
    Acquisition,
    StepRead,
    gdal_session,
    read_acquisition,
    read_qa,
)
from terrastill.data.temporal import TemporalOptions, choose_steps, group_acquisitions
from terrastill.errors import NoImageryError
from terrastill.sources import SourceProfile, get_profile


@dataclass(frozen=True)
class ReadOptions:
    """What to read for every chip or prediction window (the model's input spec, in effect)."""

    source: str = "hls"
    bands: tuple[str, ...] = ()
    temporal: TemporalOptions = field(default_factory=TemporalOptions)
    mask_classes: tuple[str, ...] | None = None
    resampling: str = "nearest"

    @property
    def profile(self) -> SourceProfile:
        return get_profile(self.source)

    def resolved_bands(self) -> list[str]:
        p = self.profile
        return p.check_bands(self.bands) if self.bands else p.band_names[:6]

    def resolved_mask(self) -> list[str]:
        p = self.profile
        return p.check_mask(self.mask_classes if self.mask_classes is not None
                            else p.default_mask)

    def to_dict(self) -> dict:
        t = self.temporal
        return {"source": self.source, "bands": self.resolved_bands(),
                "num_steps": t.num_steps, "temporal_step": t.temporal_step,
                "temporal_tolerance": t.temporal_tolerance, "max_cloud": t.max_cloud,
                "mask_classes": self.resolved_mask(), "resampling": self.resampling}


@dataclass
class ChipRead:
    """A multi-temporal chip read onto a grid, with everything needed to trace it."""

    array: np.ndarray  # (T, C, H, W) float32, NaN = invalid
    grid: GridSpec
    bands: list[str]
    steps: list[StepRead]

    @property
    def valid(self) -> np.ndarray:
        """(H, W) pixels valid in every step."""
        return np.isfinite(self.array).all(axis=(0, 1))

    @property
    def valid_fraction(self) -> float:
        """Share of (step, pixel) pairs with data."""
        return float(np.isfinite(self.array[:, 0]).mean())

    @property
    def cloud_fraction(self) -> float:
        return float(np.mean([s.cloud_fraction for s in self.steps]))

    def descriptions(self) -> list[str]:
        return [f"t{t}:{b}" for t in range(len(self.steps)) for b in self.bands]

    def step_records(self) -> list[dict]:
        out = []
        for k, s in enumerate(self.steps):
            out.append({
                "step": k,
                "date": s.acquisition.date,
                "collection": s.acquisition.collection,
                "items": s.acquisition.item_ids,
                "datetimes": [it["properties"]["datetime"] for it in s.acquisition.items],
                "hrefs": s.hrefs,
                "cloud_fraction": round(s.cloud_fraction, 6),
                "invalid_fraction": round(s.invalid_fraction, 6),
            })
        return out


def items_over(items: Sequence[dict], grid: GridSpec) -> list[dict]:
    """The item dicts whose footprint intersects ``grid``."""
    foot = box(*grid.lonlat_bounds())
    return [it for it in items if it.get("geometry") and shape(it["geometry"]).intersects(foot)]


def read_chip(
    grid: GridSpec,
    last_date: dt.date,
    items: Sequence[dict],
    opts: ReadOptions,
) -> ChipRead:
    """Choose T acquisitions for ``grid`` ending at ``last_date`` and read them.

    Raises :class:`NoImageryError` with the reason when a step has no usable acquisition, and
    :class:`AssetReadError` when an asset cannot be read.
    """
    profile = opts.profile
    bands = opts.resolved_bands()
    mask = opts.resolved_mask()
    resampling = Resampling[opts.resampling]
    qa_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def invalid_fraction(acq: Acquisition) -> float:
        qa_cache[acq.key] = read_qa(acq, profile, grid, mask)
        return float(qa_cache[acq.key][0].mean())

    acqs = group_acquisitions(items_over(items, grid))
    with gdal_session():
        choices = choose_steps(acqs, last_date, opts.temporal, invalid_fraction,
                               profile.name.upper())
        for c in choices:
            if c.acquisition is None:
                raise NoImageryError(c.reason)
        steps = [
            read_acquisition(c.acquisition, profile, bands, grid, mask, resampling,
                             qa=qa_cache[c.acquisition.key])
            for c in choices
            if c.acquisition is not None
        ]
    array = np.stack([s.data for s in steps])
    return ChipRead(array, grid, bands, steps)
