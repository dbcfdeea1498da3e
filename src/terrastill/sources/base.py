"""The sensor-profile data model: bands, asset keys per catalogue, scaling and a QA decoder."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terrastill.errors import BadInputError

# A QA decoder turns a QA array into {class name: boolean mask}.
QADecoder = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Band:
    """One spectral (or backscatter) band: a canonical name and its native resolution."""

    name: str
    resolution: float
    wavelength_um: float | None = None


@dataclass(frozen=True)
class SourceProfile:
    """Everything terrastill needs to know about one sensor's STAC items.

    ``asset_keys`` maps a canonical band name (and ``"qa"``) to the asset keys that different
    catalogues use for it; the first key present in an item wins.
    """

    name: str
    title: str
    collections: Mapping[str, Sequence[str]]  # catalogue flavour -> collection ids
    bands: Sequence[Band]
    asset_keys: Mapping[str, Sequence[str]]
    resolution: float  # chip grid resolution (m)
    dtype: str  # native DN dtype
    nodata: float | None
    scale: float = 1.0
    offset: float = 0.0
    qa_decoder: QADecoder | None = None
    qa_classes: Sequence[str] = ()
    default_mask: Sequence[str] = ()
    qa_nodata: int | None = None
    unit: str = "reflectance"
    offset_fn: Callable[[Mapping[str, Any]], float] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def band(self, name: str) -> Band:
        for b in self.bands:
            if b.name == name:
                return b
        raise BadInputError(
            f"band {name!r} is not a band of source {self.name!r} "
            f"(expected one of {', '.join(self.band_names)})"
        )

    def check_bands(self, names: Sequence[str]) -> list[str]:
        """Return ``names`` after checking each is a band of this source."""
        return [self.band(n).name for n in names]

    def check_mask(self, classes: Sequence[str]) -> list[str]:
        """Return ``classes`` after checking each is a QA class this source can decode."""
        unknown = [c for c in classes if c not in self.qa_classes]
        if unknown:
            raise BadInputError(
                f"mask class {unknown[0]!r} is not a QA class of source {self.name!r} "
                f"(expected some of {', '.join(self.qa_classes) or 'none'})"
            )
        return list(classes)

    def asset_key(self, item_assets: Mapping[str, Any], band: str) -> str | None:
        """The asset key of ``band`` (or ``"qa"``) in an item's assets, or None if absent."""
        for key in self.asset_keys.get(band, ()):
            if key in item_assets:
                return key
        return None

    def reflectance_offset(self, properties: Mapping[str, Any]) -> float:
        """The additive offset (after scaling) for an item, e.g. S2 baseline ≥ 04.00."""
        if self.offset_fn is not None:
            return self.offset_fn(properties)
        return self.offset

    def to_reflectance(self, dn: np.ndarray, properties: Mapping[str, Any]) -> np.ndarray:
        """Scale DNs to physical units as float32, with nodata → NaN."""
        out = dn.astype(np.float32) * np.float32(self.scale)
        out += np.float32(self.reflectance_offset(properties))
        if self.nodata is not None:
            out[dn == self.nodata] = np.nan
        return out

    def invalid_mask(self, qa: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """Boolean mask of pixels whose QA says any of ``classes`` (or QA nodata)."""
        bad = np.zeros(qa.shape, dtype=bool)
        if self.qa_nodata is not None:
            bad |= qa == self.qa_nodata
        if self.qa_decoder is None or not classes:
            return bad
        decoded = self.qa_decoder(qa)
        for c in classes:
            bad |= decoded[c]
        return bad
