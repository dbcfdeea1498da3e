"""The Catalog protocol every backend implements, and the search it answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

import pystac


@dataclass(frozen=True)
class Search:
    """One item search: collections, a lon/lat bbox, a closed datetime interval, cloud limit."""

    collections: tuple[str, ...]
    bbox: tuple[float, float, float, float]
    start: datetime
    end: datetime
    max_cloud: float | None = None

    def datetime_range(self) -> str:
        """The interval as a STAC datetime string."""
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return f"{self.start.strftime(fmt)}/{self.end.strftime(fmt)}"


@runtime_checkable
class Catalog(Protocol):
    """A source of STAC items: a STAC API or a local file."""

    location: str

    def collection_ids(self) -> list[str]:
        """The collections this catalogue holds."""
        ...

    def search(self, search: Search) -> list[pystac.Item]:
        """Items matching ``search``, sorted by (datetime, id), asset hrefs absolute."""
        ...


def pick_collections(catalog: Catalog, wanted: Sequence[str]) -> tuple[str, ...]:
    """The subset of ``wanted`` collection ids that ``catalog`` holds, in ``wanted`` order."""
    have = set(catalog.collection_ids())
    return tuple(c for c in wanted if c in have)


def sort_items(items: list[pystac.Item]) -> list[pystac.Item]:
    """Deterministic order: by acquisition datetime, then id."""
    return sorted(items, key=lambda it: (it.datetime.isoformat() if it.datetime else "", it.id))
