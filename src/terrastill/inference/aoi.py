"""Areas of interest: parse bboxes and vector files, validate them, split them by UTM zone."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path

from pyproj import Geod
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from terrastill.data.grid import to_crs, utm_epsg
from terrastill.errors import BadInputError, NotFoundError

GEOD = Geod(ellps="WGS84")
DEFAULT_MAX_AREA_KM2 = 5000.0


def bbox_aoi(values: Sequence[float]) -> BaseGeometry:
    """A lon/lat box from ``minx miny maxx maxy``, checked for order and range."""
    if len(values) != 4:
        raise BadInputError(f"--bbox: expected 4 numbers (minx miny maxx maxy), got {len(values)}")
    minx, miny, maxx, maxy = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise BadInputError("--bbox: coordinates must be finite numbers")
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90
            and -90 <= maxy <= 90):
        raise BadInputError(f"--bbox {minx} {miny} {maxx} {maxy}: outside lon [-180, 180] / "
                            "lat [-90, 90]")
    if minx >= maxx or miny >= maxy:
        raise BadInputError(f"--bbox {minx} {miny} {maxx} {maxy}: empty or inverted (expected "
                            "minx < maxx and miny < maxy)")
    return box(minx, miny, maxx, maxy)


def file_aois(path: str | Path) -> list[BaseGeometry]:
    """Polygons from a GeoJSON / GeoParquet / other vector file, in lon/lat."""
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{path}: AOI file not found")
    try:
        gdf = gpd.read_parquet(path) if path.suffix in (".parquet", ".geoparquet") \
            else gpd.read_file(path)
    except Exception as exc:  # pyogrio / pyarrow raise library-specific errors
        raise BadInputError(f"{path}: cannot read AOI geometries ({exc})") from exc
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs(4326)
    geoms = [g for g in gdf.geometry if g is not None and not g.is_empty]
    if not geoms:
        raise BadInputError(f"{path}: no geometry in the AOI file")
    return geoms


def request_aois(bbox: Sequence[float] | None, files: Sequence[str | Path] | None,
                 date: str | None) -> tuple[dt.date, list[BaseGeometry]]:
    """The date and AOIs of an AOI command (``--date``, ``--bbox``, ``--aoi`` files)."""
    if date is None:
        raise BadInputError("--date is required for an AOI (the date of the last time step)")
    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        raise BadInputError(f"--date {date!r}: expected an ISO date (YYYY-MM-DD)") from None
    aois = [bbox_aoi(bbox)] if bbox else []
    for p in files or []:
        aois += file_aois(p)
    return day, aois


def geojson_aoi(obj: dict) -> BaseGeometry:
    """A geometry from a GeoJSON geometry, Feature or FeatureCollection mapping."""
    kind = obj.get("type")
    try:
        if kind == "FeatureCollection":
            return unary_union([shape(f["geometry"]) for f in obj.get("features", [])])
        if kind == "Feature":
            return shape(obj["geometry"])
        return shape(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"AOI: not a GeoJSON geometry ({exc})") from exc


def area_km2(geom: BaseGeometry) -> float:
    """Geodesic area of a lon/lat geometry in km²."""
    return abs(GEOD.geometry_area_perimeter(geom)[0]) / 1e6


def validate_aois(aois: Sequence[BaseGeometry], max_area_km2: float) -> list[BaseGeometry]:
    """Check each AOI is a valid, non-empty polygon in range and the total under the limit."""
    if not aois:
        raise BadInputError("no area of interest given (use --bbox or --aoi)")
    out = []
    total = 0.0
    for i, g in enumerate(aois):
        label = f"AOI {i + 1}"
        if g is None or g.is_empty:
            raise BadInputError(f"{label}: empty geometry")
        if g.geom_type not in ("Polygon", "MultiPolygon"):
            raise BadInputError(f"{label}: expected a Polygon or MultiPolygon, got {g.geom_type}")
        if not g.is_valid:
            raise BadInputError(f"{label}: invalid geometry (self-intersecting or malformed)")
        minx, miny, maxx, maxy = g.bounds
        if minx < -180 or maxx > 180 or miny < -84 or maxy > 84:
            raise BadInputError(f"{label}: outside lon [-180, 180] / lat [-84, 84] "
                                f"(bounds {g.bounds})")
        a = area_km2(g)
        if a <= 0:
            raise BadInputError(f"{label}: zero area")
        total += a
        out.append(g)
    if total > max_area_km2:
        raise BadInputError(f"AOI area {total:.1f} km² exceeds the limit of {max_area_km2:g} km² "
                            "(raise it with --max-area)")
    return out


def split_by_zone(aois: Sequence[BaseGeometry]) -> list[tuple[int, BaseGeometry]]:
    """Cut the union of the AOIs along UTM zone edges: (EPSG, piece in that zone's CRS).

    Each zone gets its own product on its native grid (no cross-zone resampling of outputs).
    """
    union = unary_union(list(aois))
    minx, _miny, maxx, _maxy = union.bounds
    pieces = []
    z0 = int(math.floor((minx + 180) / 6))
    z1 = int(math.floor((min(maxx, 179.999999) + 180) / 6))
    for z in range(z0, z1 + 1):
        lon0 = -180 + 6 * z
        for south in (False, True):
            lat_box = (-84, 0) if south else (0, 84)
            cell = box(lon0, lat_box[0], lon0 + 6, lat_box[1])
            part = union.intersection(cell)
            if part.is_empty or part.area == 0:
                continue
            c = part.representative_point()
            epsg = utm_epsg(c.x, c.y)
            pieces.append((epsg, to_crs(part, 4326, epsg)))
    return pieces
