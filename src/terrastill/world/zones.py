"""The demo world's zones layer: census-like blocks with attributes derived from the truth.

Blocks are the Voronoi cells of seeded points over the world's box, denser where the truth is
urban (as census blocks are), so block area itself carries land-use signal. Each block's
land-cover shares come from the truth rasters by exactextract (coverage-weighted class
fractions, pooled over the UTM zones a block spans). Written as GeoParquet (EPSG:4326):
``zone_id, area_km2, log_area_km2, water_share, urban_share, crop_share, forest_share,
bare_share, urban`` (urban share ≥ 0.5). Its own random stream: other outputs are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.world.truth import LANDCOVER_CLASSES

ZONES_FILE = "zones.parquet"
SEEDS_PER_KM2 = 6.0
KEEP = {"water": 0.1, "forest": 0.15, "cropland": 0.35, "urban": 1.0, "bare": 0.3}
SHARES = {"water": "water_share", "urban": "urban_share", "cropland": "crop_share",
          "forest": "forest_share", "bare": "bare_share"}
STREAM = 0x7A6F6E65  # "zone"


def area_km2(geom: Any) -> float:
    """Geodesic area of a lon/lat geometry in km²."""
    from pyproj import Geod

    return abs(Geod(ellps="WGS84").geometry_area_perimeter(geom)[0]) / 1e6


def _utm_cell(epsg: int) -> Any:
    """The lon/lat extent of a WGS 84 UTM zone's EPSG code."""
    from shapely.geometry import box

    zone, south = epsg % 100, epsg // 100 == 327
    lon0 = -180 + 6 * (zone - 1)
    return box(lon0, -90, lon0 + 6, 0) if south else box(lon0, 0, lon0 + 6, 90)


def block_polygons(world: Any) -> list[Any]:
    """Voronoi blocks of urban-weighted seed points, clipped to the world's box."""
    import shapely
    from shapely.geometry import MultiPoint, box

    bbox = box(*world.bbox)
    rng = np.random.default_rng([world.config.seed, STREAM])
    n = max(8, int(round(area_km2(bbox) * SEEDS_PER_KM2)))
    lon = rng.uniform(world.bbox[0], world.bbox[2], n)
    lat = rng.uniform(world.bbox[1], world.bbox[3], n)
    x, y = world.frame.to_km(lon, lat)
    lc = world.truth.landcover(x, y)
    keep = np.array([KEEP[LANDCOVER_CLASSES[c]] for c in lc]) > rng.uniform(0, 1, n)
    if keep.sum() < 4:
        keep[:4] = True
    cells = shapely.voronoi_polygons(MultiPoint(list(zip(lon[keep], lat[keep], strict=True))),
                                     extend_to=bbox)
    out = []
    for c in shapely.get_parts(cells):
        piece = c.intersection(bbox)
        if not piece.is_empty and piece.area > 0:
            out.append(shapely.normalize(piece))
    out.sort(key=lambda g: (round(g.centroid.y, 9), round(g.centroid.x, 9)))
    return out


def class_shares(blocks: list[Any], truth: Mapping[str, str | Path]) -> np.ndarray:
    """(blocks, classes) land-cover shares from the per-zone truth rasters."""
    import geopandas as gpd
    import rasterio
    from exactextract import exact_extract

    k = len(LANDCOVER_CLASSES)
    area = np.zeros((len(blocks), k))
    for epsg, path in sorted(truth.items()):
        cell = _utm_cell(int(epsg))
        rows, parts = [], []
        for i, b in enumerate(blocks):
            piece = b.intersection(cell)
            if not piece.is_empty and piece.area > 0:
                rows.append(i)
                parts.append(piece)
        if not parts:
            continue
        frame = gpd.GeoDataFrame({"row": rows}, geometry=parts, crs=4326).to_crs(int(epsg))
        with rasterio.open(path) as src:
            df = exact_extract(src, frame, ["count", "unique", "frac"], include_cols=["row"],
                               output="pandas", strategy="feature-sequential")
        for row, n, vals, fr in zip(df["row"], df["count"], df["unique"], df["frac"],
                                    strict=True):
            for v, f in zip(np.atleast_1d(vals), np.atleast_1d(fr), strict=True):
                if 0 <= int(v) < k:
                    area[int(row), int(v)] += float(n) * float(f)
    total = area.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, area / total, np.nan)


def make_zones(world: Any, truth: Mapping[str, str | Path]) -> Any:
    """The zones GeoDataFrame of a prepared world whose truth rasters are ``truth``."""
    import geopandas as gpd

    blocks = block_polygons(world)
    shares = class_shares(blocks, truth)
    ok = np.isfinite(shares).all(axis=1)
    blocks = [b for b, keep in zip(blocks, ok, strict=True) if keep]
    shares = shares[ok]
    areas = np.array([area_km2(b) for b in blocks])
    cols: dict[str, Any] = {"zone_id": [f"B{i:04d}" for i in range(len(blocks))],
                            "area_km2": np.round(areas, 6),
                            "log_area_km2": np.round(np.log(areas), 6)}
    for i, name in enumerate(LANDCOVER_CLASSES):
        cols[SHARES[name]] = np.round(shares[:, i], 6)
    cols["urban"] = shares[:, LANDCOVER_CLASSES.index("urban")] >= 0.5
    return gpd.GeoDataFrame(cols, geometry=blocks, crs=4326)


def write_zones(out: Path, world: Any, truth_rel: Mapping[str, str]) -> str:
    """Write ``OUT/zones.parquet``; returns its path relative to ``out``."""
    from terrastill.atomic import atomic_path

    gdf = make_zones(world, {k: Path(out) / v for k, v in truth_rel.items()})
    with atomic_path(Path(out) / ZONES_FILE) as tmp:
        gdf.to_parquet(tmp, index=False)
    return ZONES_FILE
