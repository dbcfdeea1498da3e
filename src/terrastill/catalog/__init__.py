"""Catalogue access: a ``Catalog`` protocol with a STAC-API and a local-file backend."""

from __future__ import annotations

from terrastill.catalog.base import Catalog, Search, pick_collections, sort_items
from terrastill.catalog.local import LocalCatalog


def open_catalog(location: str, **options: object) -> Catalog:
    """Open a catalogue: an ``http(s)://`` STAC API URL or a local ItemCollection file."""
    if location.startswith(("http://", "https://")):
        from terrastill.catalog.stac_api import StacApiCatalog

        return StacApiCatalog(location, **options)  # type: ignore[arg-type]
    return LocalCatalog(location)


__all__ = ["Catalog", "LocalCatalog", "Search", "open_catalog", "pick_collections", "sort_items"]
