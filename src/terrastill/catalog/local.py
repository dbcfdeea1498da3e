"""Local-file catalogue backend: a STAC ItemCollection (GeoJSON) or stac-geoparquet file."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC
from pathlib import Path

import pystac
import shapely
from shapely.geometry import box, shape

from terrastill.catalog.base import Search, sort_items
from terrastill.errors import BadInputError, NotFoundError

log = logging.getLogger(__name__)


def _absolute_hrefs(item: pystac.Item, root: str) -> pystac.Item:
    """Relative asset hrefs made absolute against ``root`` (already resolved): joined and
    normalised as strings, one ``resolve`` per catalogue instead of one per asset."""
    for asset in item.assets.values():
        href = asset.href
        if "://" not in href and not os.path.isabs(href):
            asset.href = os.path.normpath(os.path.join(root, href))
    return item


class LocalCatalog:
    """Items from a local file, searched in memory with the same semantics as a STAC API."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.location = str(self.path)
        if not self.path.exists():
            raise NotFoundError(f"{self.path}: catalogue file not found")
        self._items = self._load()
        self._geoms = [shape(it.geometry) for it in self._items]
        self._tree = shapely.STRtree(self._geoms) if self._geoms else None

    def _load(self) -> list[pystac.Item]:
        root = str(self.path.parent.resolve())
        if self.path.suffix in (".parquet", ".geoparquet"):
            try:
                import stac_geoparquet.arrow as sga  # optional dependency
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise BadInputError(
                    f"{self.path}: reading stac-geoparquet needs the 'stac-geoparquet' package"
                ) from exc
            dicts = list(sga.stac_table_to_items(sga.parse_stac_ndjson_to_arrow(self.path)))
        else:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise BadInputError(f"{self.path}: not a readable STAC JSON file ({exc})") from exc
            if data.get("type") == "FeatureCollection":
                dicts = data.get("features", [])
            elif data.get("type") == "Feature":
                dicts = [data]
            else:
                raise BadInputError(
                    f"{self.path}: expected a STAC ItemCollection (type FeatureCollection)"
                )
        items = []
        for i, d in enumerate(dicts):
            try:
                # the dicts are ours (just parsed): no defensive deep copy
                items.append(_absolute_hrefs(pystac.Item.from_dict(d, preserve_dict=False),
                                             root))
            except Exception as exc:  # pystac raises many types for malformed items
                raise BadInputError(f"{self.path}: feature {i} is not a STAC item ({exc})") from exc
        return sort_items(items)

    def collection_ids(self) -> list[str]:
        return sorted({it.collection_id for it in self._items if it.collection_id})

    def search(self, search: Search) -> list[pystac.Item]:
        if self._tree is None:
            return []
        idx = self._tree.query(box(*search.bbox), predicate="intersects")
        start = search.start if search.start.tzinfo else search.start.replace(tzinfo=UTC)
        end = search.end if search.end.tzinfo else search.end.replace(tzinfo=UTC)
        out = []
        for i in sorted(int(j) for j in idx):
            it = self._items[i]
            if search.collections and it.collection_id not in search.collections:
                continue
            if it.datetime is None or not (start <= it.datetime <= end):
                continue
            cc = it.properties.get("eo:cloud_cover")
            if search.max_cloud is not None and cc is not None and cc > search.max_cloud:
                continue
            out.append(it.clone())
        return sort_items(out)

    @property
    def items(self) -> list[pystac.Item]:
        return list(self._items)
