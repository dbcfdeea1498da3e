"""Where and when a local catalogue has imagery: the map's home extent, jobs' date hints."""

from __future__ import annotations

import functools
import logging
import os

from terrastill.catalog.local import LocalCatalog
from terrastill.errors import TerrastillError

log = logging.getLogger(__name__)


def _local(loc: str) -> bool:
    return not loc.startswith(("http://", "https://"))


@functools.lru_cache(maxsize=16)
def _items(loc: str, mtime: float) -> list:
    del mtime  # part of the cache key only: a rewritten catalogue is read again
    return LocalCatalog(loc).items


def _catalog_items(loc: str) -> list | None:
    try:
        return _items(loc, os.stat(loc).st_mtime)
    except (TerrastillError, OSError) as exc:
        log.warning("catalogue %s: not readable (%s)", loc, exc)
        return None


def catalog_extent(locations: list[str]) -> list[float] | None:
    """Union of the item bboxes of the first readable local catalogue (STAC APIs skipped)."""
    for loc in filter(_local, locations):
        boxes = [it.bbox for it in _catalog_items(loc) or [] if it.bbox]
        if boxes:
            return [
                min(b[0] for b in boxes),
                min(b[1] for b in boxes),
                max(b[2] for b in boxes),
                max(b[3] for b in boxes),
            ]
    return None


def catalog_dates(locations: list[str]) -> tuple[str, str] | None:
    """First and last acquisition date of the first readable local catalogue."""
    for loc in filter(_local, locations):
        days = sorted(it.datetime.date().isoformat() for it in _catalog_items(loc) or []
                      if it.datetime)
        if days:
            return days[0], days[-1]
    return None


def local_items(locations: list[str]) -> list:
    """The items of the first readable local catalogue ([] when none)."""
    for loc in filter(_local, locations):
        items = _catalog_items(loc)
        if items:
            return items
    return []
