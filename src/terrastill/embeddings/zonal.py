"""Zonal embedding statistics: per polygon, the coverage-weighted mean / std of every dimension.

Statistics come from exactextract (exact pixel coverage fractions, feature by feature with a
bounded number of cells in memory). Embedding products are one raster per UTM zone, so each
polygon is cut along UTM zone edges, each piece is measured on its own zone's raster, and the
pieces are pooled (count-weighted mean; pooled variance). Polygons that are empty, invalid,
not polygons, larger than ``max_area_km2`` or without a valid pixel go to a rejected CSV
with the reason. The output is GeoParquet (EPSG:4326): the zone's id and attributes,
``area_km2``, ``pixel_count`` and ``emb_mean_000``… / ``emb_std_000``….
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.errors import BadInputError, NotFoundError

log = logging.getLogger(__name__)
STATS = ("mean", "std", "count")
MAX_CELLS = 4_000_000  # raster cells exactextract may hold at once
CHUNK = 500  # polygons per exactextract call (progress granularity)
ZONE_RE = re.compile(r"^327(\d\d)$|^326(\d\d)$")


@dataclass
class EmbRaster:
    """One embedding raster: path, EPSG, dimension, scale/offset, model, lon/lat cell."""

    path: Path
    epsg: int
    dim: int
    scales: np.ndarray
    offsets: np.ndarray
    model: str | None
    cell: Any  # shapely polygon (lon/lat) this raster is responsible for
    footprint: Any  # its bounds in lon/lat (densified)


def _utm_cell(epsg: int) -> Any:
    from shapely.geometry import box

    m = ZONE_RE.match(str(epsg))
    if not m:
        return box(-180, -90, 180, 90)
    south = m.group(1) is not None
    zone = int(m.group(1) or m.group(2))
    lon0 = -180 + 6 * (zone - 1)
    return box(lon0, -90, lon0 + 6, 0) if south else box(lon0, 0, lon0 + 6, 90)


def _footprint(bounds: Any, epsg: int) -> Any:
    from shapely.geometry import box

    from terrastill.data.grid import to_crs

    return to_crs(box(*bounds).segmentize(max(bounds[2] - bounds[0],
                                              bounds[3] - bounds[1]) / 32), epsg, 4326)


def open_rasters(emb: str | os.PathLike[str]) -> list[EmbRaster]:
    """The embedding raster ``emb`` or every ``embeddings_*.tif`` in the folder ``emb``."""
    import rasterio
    from rasterio.errors import RasterioError

    p = Path(emb)
    if p.is_dir():
        paths = sorted(p.glob("embeddings_*.tif"))
        if not paths:
            raise NotFoundError(f"{p}: no embeddings_<epsg>.tif in this folder")
    elif p.is_file():
        paths = [p]
    else:
        raise NotFoundError(f"{p}: no such embedding raster")
    out = []
    for path in paths:
        try:
            with rasterio.open(path) as src:
                desc = src.descriptions
                if any(d is None or not str(d).startswith("emb:") for d in desc):
                    raise BadInputError(f"{path}: not an embedding raster (bands must be "
                                        "described emb:000, emb:001, …)")
                if src.crs is None or src.crs.to_epsg() is None:
                    raise BadInputError(f"{path}: no EPSG CRS")
                epsg = int(src.crs.to_epsg())
                foot = _footprint(src.bounds, epsg)
                out.append(EmbRaster(path, epsg, src.count, np.asarray(src.scales, float),
                                     np.asarray(src.offsets, float),
                                     src.tags().get("model_sha256"), _utm_cell(epsg), foot))
        except RasterioError as exc:
            raise BadInputError(f"{path}: not a readable GeoTIFF ({exc})") from None
    if len({(r.dim, r.model) for r in out}) > 1:
        raise BadInputError(f"{p}: rasters of different models or dimensions")
    return out


def read_zones(path: str | os.PathLike[str], id_col: str | None) -> Any:
    """Zones from GeoParquet / GeoPackage / GeoJSON, in EPSG:4326, with a ``zone_id``."""
    import geopandas as gpd

    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: no such zones file")
    try:
        gdf = gpd.read_parquet(p) if p.suffix.lower() == ".parquet" else gpd.read_file(p)
    except Exception as exc:  # GDAL / pyarrow raise many types for an unreadable file
        raise BadInputError(f"{p}: not a readable vector file ({exc})") from None
    if gdf.crs is None:
        raise BadInputError(f"{p}: has no CRS; set one (e.g. ogr2ogr -a_srs EPSG:4326)")
    if id_col is not None:
        if id_col not in gdf.columns:
            raise BadInputError(f"{p}: no column {id_col!r} for --id-col (columns: "
                                f"{', '.join(map(str, gdf.columns[:12]))})")
        if gdf[id_col].duplicated().any():
            dup = gdf[id_col][gdf[id_col].duplicated()].iloc[0]
            raise BadInputError(f"{p}: --id-col {id_col} is not unique ({dup!r} repeats)")
        ids = gdf.pop(id_col).to_numpy()
    else:
        ids = np.arange(len(gdf))
        if "zone_id" in gdf.columns:
            gdf = gdf.rename(columns={"zone_id": "zone_id_input"})
    gdf = gdf.to_crs(4326)
    gdf.insert(0, "zone_id", ids)
    return gdf


def area_km2(geom: Any) -> float:
    """Geodesic area of a lon/lat geometry in km²."""
    from pyproj import Geod

    return abs(Geod(ellps="WGS84").geometry_area_perimeter(geom)[0]) / 1e6


def check_zone(geom: Any, max_area: float | None) -> tuple[str | None, float]:
    """(reason to reject or None, area km²)."""
    from shapely.validation import explain_validity

    if geom is None or geom.is_empty:
        return "empty geometry", 0.0
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        return f"not a polygon ({geom.geom_type})", 0.0
    if not geom.is_valid:
        return f"invalid geometry: {explain_validity(geom)}", 0.0
    a = area_km2(geom)
    if max_area is not None and a > max_area:
        return f"oversized: {a:.3f} km² > --max-area {max_area:g}", a
    return None, a


def _extract(r: EmbRaster, geoms: Sequence[Any], rows: Sequence[int]) -> dict[int, np.ndarray]:
    """row → (3, D) [mean, std, count] of the polygon pieces inside ``r``'s zone cell."""
    import geopandas as gpd
    import rasterio
    from exactextract import exact_extract

    parts, keep = [], []
    for g, i in zip(geoms, rows, strict=True):
        if not g.intersects(r.footprint):
            continue
        piece = g.intersection(r.cell)
        if not piece.is_empty and piece.area > 0:
            parts.append(piece)
            keep.append(i)
    if not parts:
        return {}
    frame = gpd.GeoDataFrame({"row": keep}, geometry=parts, crs=4326).to_crs(r.epsg)
    with rasterio.open(r.path) as src:
        df = exact_extract(src, frame, ["mean", "stdev", "count"], include_cols=["row"],
                           output="pandas", max_cells_in_memory=MAX_CELLS,
                           strategy="feature-sequential")
    d = r.dim
    names = [[f"band_{b + 1}_{op}" if d > 1 else op for b in range(d)]
             for op in ("mean", "stdev", "count")]
    mean, std, count = (df[c].to_numpy(np.float64) for c in names)
    # exactextract applies each band's GDAL scale/offset (and masks nodata) itself
    out = {}
    for k, row in enumerate(df["row"].to_numpy()):
        out[int(row)] = np.stack([mean[k], std[k], count[k]])
    return out


def pool(pieces: Sequence[np.ndarray]) -> np.ndarray:
    """Pool per-piece [mean, std, count] (3, D) into one: count-weighted mean, pooled std."""
    st = np.stack(pieces)  # (P, 3, D)
    n = st[:, 2]
    total = n.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(total > 0, (np.nan_to_num(st[:, 0]) * n).sum(0) / total, np.nan)
        second = (n * (np.nan_to_num(st[:, 1]) ** 2 + np.nan_to_num(st[:, 0]) ** 2)).sum(0)
        var = np.where(total > 0, second / total - mean ** 2, np.nan)
    return np.stack([mean, np.sqrt(np.clip(var, 0, None)), total])


@dataclass
class ZonalResult:
    path: Path
    rejected: Path
    kept: int
    rejected_rows: list[tuple[Any, str]]
    pca_rgb: list[Path]


def zonal_stats(emb: str | os.PathLike[str], zones: str | os.PathLike[str], out: Path,
                id_col: str | None = None, stats: Sequence[str] = STATS,
                max_area: float | None = None, pca_rgb: Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> ZonalResult:
    """Compute the zone statistics table (and optionally the PCA-3 RGB raster)."""
    bad = [s for s in stats if s not in STATS]
    if bad or not stats:
        raise BadInputError(f"--stats {','.join(stats)}: expected a comma list of "
                            f"{', '.join(STATS)}")
    if max_area is not None and max_area <= 0:
        raise BadInputError(f"--max-area {max_area}: expected a positive km² value")
    rasters = open_rasters(emb)
    gdf = read_zones(zones, id_col)
    reasons: dict[int, str] = {}
    areas = np.zeros(len(gdf))
    for i, g in enumerate(gdf.geometry):
        why, areas[i] = check_zone(g, max_area)
        if why:
            reasons[i] = why
    todo = [i for i in range(len(gdf)) if i not in reasons]
    found: dict[int, list[np.ndarray]] = {}
    chunks = [todo[k:k + CHUNK] for k in range(0, len(todo), CHUNK)]
    for c, rows in enumerate(chunks):
        geoms = [gdf.geometry.iloc[i] for i in rows]
        for r in rasters:
            for row, v in _extract(r, geoms, rows).items():
                found.setdefault(row, []).append(v)
        if progress:
            progress(c + 1, len(chunks))
    d = rasters[0].dim
    feats = np.full((len(gdf), 3, d), np.nan)
    for i in todo:
        if i not in found:
            reasons[i] = "outside the embedding raster(s)"
            continue
        feats[i] = pool(found[i])
        if not feats[i, 2, 0] > 0:
            reasons[i] = "no valid embedding pixels"
    kept = [i for i in range(len(gdf)) if i not in reasons]
    if not kept:
        first = next(iter(reasons.values()), "no zones")
        raise BadInputError(f"{zones}: no zone could be measured (first reason: {first})")
    table = gdf.iloc[kept].copy()
    table["area_km2"] = areas[kept]
    table["pixel_count"] = feats[kept, 2, 0]
    cols: dict[str, np.ndarray] = {}
    if "mean" in stats:
        cols.update({f"emb_mean_{j:03d}": feats[kept, 0, j] for j in range(d)})
    if "std" in stats:
        cols.update({f"emb_std_{j:03d}": feats[kept, 1, j] for j in range(d)})
    import pandas as pd

    table = pd.concat([table.reset_index(drop=True),
                       pd.DataFrame(cols).astype("float32")], axis=1)
    import geopandas as gpd

    table = gpd.GeoDataFrame(table, geometry="geometry", crs=4326)
    if "count" not in stats:
        table = table.drop(columns=["pixel_count"])
    meta = {"format": "terrastill-zonal", "version": 1, "dim": d, "stats": list(stats),
            "rasters": [str(r.path) for r in rasters], "model_sha256": rasters[0].model,
            "weighting": "exactextract coverage fraction", "zones": str(zones),
            "kept": len(kept), "rejected": len(reasons)}
    rejected = out.with_name(out.stem + ".rejected.csv")
    rej_rows = [(gdf["zone_id"].iloc[i], reasons[i]) for i in sorted(reasons)]
    _write_parquet(table, out, meta)
    _write_rejected(rejected, rej_rows)
    rgbs = write_pca_rgb(table, rasters, pca_rgb) if pca_rgb is not None else []
    return ZonalResult(out, rejected, len(kept), rej_rows, rgbs)


def _write_parquet(gdf: Any, out: Path, meta: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    from terrastill.atomic import atomic_path

    with atomic_path(out) as tmp:
        gdf.to_parquet(tmp)
        t = pq.read_table(tmp)
        t = t.replace_schema_metadata({**(t.schema.metadata or {}),
                                       b"terrastill": json.dumps(meta).encode()})
        pq.write_table(t, tmp)


def _write_rejected(path: Path, rows: list[tuple[Any, str]]) -> None:
    from terrastill.atomic import write_text_atomic

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["zone_id", "reason"])
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def feature_columns(columns: Sequence[str]) -> list[str]:
    """The embedding statistic columns of a zonal table."""
    return [c for c in columns if c.startswith(("emb_mean_", "emb_std_"))]


def pca3_colours(x: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 1…255 colours: PCA-3 of standardised features, 2–98 % stretch."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(np.nan_to_num(x))
    n = min(3, z.shape[0], z.shape[1])
    s = PCA(n_components=n, random_state=0).fit_transform(z)
    s = np.pad(s, ((0, 0), (0, 3 - n)))
    lo, hi = np.percentile(s, 2, axis=0), np.percentile(s, 98, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.rint(1 + np.clip((s - lo) / span, 0, 1) * 254).astype(np.uint8)


def write_pca_rgb(table: Any, rasters: Sequence[EmbRaster], out: Path) -> list[Path]:
    """Rasterise the zones' PCA-3 colours on each embedding raster's grid (uint8 RGB COG;
    ``out`` itself for one raster, ``out_<epsg>.tif`` for several)."""
    import rasterio
    from rasterio.features import rasterize

    from terrastill.embeddings.compress_raster import _publish, _scratch

    cols = feature_columns(table.columns)
    if not cols:
        raise BadInputError("--pca-rgb needs the mean or std statistics")
    rgb = pca3_colours(table[cols].to_numpy(np.float64))
    paths = []
    for r in rasters:
        target = out if len(rasters) == 1 else out.with_name(f"{out.stem}_{r.epsg}{out.suffix}")
        frame = table[["geometry"]].to_crs(r.epsg)
        with rasterio.open(r.path) as src, _scratch(target) as tmp:
            prof = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 3,
                    "dtype": "uint8", "crs": src.crs, "transform": src.transform, "nodata": 0,
                    "tiled": True, "blockxsize": 256, "blockysize": 256, "photometric": "RGB"}
            with rasterio.open(tmp, "w", **prof) as dst:
                for b in range(3):
                    band = rasterize(zip(frame.geometry, rgb[:, b].tolist(), strict=True),
                                     out_shape=(src.height, src.width),
                                     transform=src.transform, fill=0, dtype="uint8")
                    dst.write(band, b + 1)
            _publish(tmp, target)
        paths.append(target)
    return paths

