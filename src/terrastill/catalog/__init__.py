"""Catalogue access: a ``Catalog`` protocol with a STAC-API and a local-file backend."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from terrastill.catalog.base import Catalog, Search, pick_collections, sort_items
from terrastill.catalog.local import LocalCatalog


def open_catalog(location: str, **options: object) -> Catalog:
    """Open a catalogue: an ``http(s)://`` STAC API URL or a local ItemCollection file."""
    if location.startswith(("http://", "https://")):
        from terrastill.catalog.stac_api import StacApiCatalog

        return StacApiCatalog(location, **options)  # type: ignore[arg-type]
    path = Path(location)
    try:
        st = path.stat()
    except OSError:
        return LocalCatalog(location)  # raises the clear not-found error
    return _local(location, str(path.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def _local(location: str, _resolved: str, _mtime_ns: int, _size: int) -> LocalCatalog:
    """A parsed local catalogue, kept while the file is unchanged (a server or a benchmark
    opens the same file for every job; parsing a large ItemCollection takes a second).
    Its searches return copies of the items, so callers cannot change the shared ones."""
    return LocalCatalog(location)


__all__ = ["Catalog", "LocalCatalog", "Search", "open_catalog", "pick_collections", "sort_items"]
