"""STAC items (one per tile and pass) and collections, built with pystac."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import pystac

from terrastill.world.grid import Tile
from terrastill.world.scenes import COG_MEDIA_TYPE
from terrastill.world.schedule import Pass

EXT_EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
EXT_PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
EXT_RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
EXT_MGRS = "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json"
EXT_SAT = "https://stac-extensions.github.io/sat/v1.0.0/schema.json"
EXT_SAR = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"
EXT_VIEW = "https://stac-extensions.github.io/view/v1.0.0/schema.json"

COMMON = {"blue": ("blue", 0.49), "green": ("green", 0.56), "red": ("red", 0.665),
          "nir": ("nir", 0.842), "nir_narrow": ("nir08", 0.865), "swir1": ("swir16", 1.61),
          "swir2": ("swir22", 2.19)}

COLLECTION_TITLES = {
    "HLSS30_2.0": "HLS Sentinel-2 MSI Surface Reflectance Daily Global 30m v2.0 (synthetic)",
    "HLSL30_2.0": "HLS Landsat OLI Surface Reflectance Daily Global 30m v2.0 (synthetic)",
    "sentinel-2-l2a": "Sentinel-2 Level-2A (synthetic)",
    "sentinel-1-rtc": "Sentinel-1 Radiometrically Terrain Corrected (synthetic)",
}


@dataclass(frozen=True)
class AssetSpec:
    """One asset of an item: what it holds and how it is encoded."""

    key: str
    band: str | None  # canonical band, None for QA
    dtype: str
    nodata: float | None
    resolution: float
    shape: tuple[int, int]
    transform: tuple[float, ...]
    scale: float | None = None
    offset: float | None = None
    roles: tuple[str, ...] = ("data",)
    title: str | None = None


def item_id(p: Pass, tile: Tile) -> str:
    dt = p.datetime
    if p.product in ("S30", "L30"):
        return f"HLS.{p.product}.T{tile.id}.{dt:%Y%j}T{dt:%H%M%S}.v2.0"
    if p.product == "L2A":
        return f"{p.platform[-2:].upper()}_{tile.id}_{dt:%Y%m%d}_0_L2A"
    return f"S1A_IW_GRDH_1SDV_{dt:%Y%m%dT%H%M%S}_{tile.id}_rtc"


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def make_item(p: Pass, tile: Tile, assets: Sequence[AssetSpec], hrefs: Mapping[str, str],
              cloud_cover: float | None) -> pystac.Item:
    lon, lat = tile.footprint()
    geometry = {"type": "Polygon", "coordinates": [[[a, b] for a, b in zip(lon, lat, strict=True)]]}
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    x0, y0, x1, y1 = tile.bounds
    props: dict = {
        "platform": p.platform,
        "instruments": list(p.instruments),
        "constellation": p.constellation,
        "proj:code": f"EPSG:{tile.epsg}",
        "proj:epsg": tile.epsg,
        "proj:transform": list(tile.transform)[:6],
        "proj:shape": [tile.size, tile.size],
        "proj:bbox": [x0, y0, x1, y1],
        "mgrs:utm_zone": tile.zone,
        "mgrs:latitude_band": tile.latitude_band,
        "mgrs:grid_square": tile.grid_square,
        "terrastill:tile": tile.id,
        "terrastill:synthetic": True,
    }
    exts = [EXT_PROJ, EXT_MGRS, EXT_RASTER]
    if cloud_cover is not None:
        props["eo:cloud_cover"] = cloud_cover
        props["view:sun_azimuth"] = p.sun_azimuth
        props["view:sun_elevation"] = p.sun_elevation
        exts += [EXT_EO, EXT_VIEW]
    if p.baseline is not None:
        props["s2:processing_baseline"] = p.baseline
        props["s2:mgrs_tile"] = f"{tile.zone:02d}{tile.latitude_band}{tile.grid_square}"
    if p.product == "RTC":
        props.update({"sar:instrument_mode": "IW", "sar:frequency_band": "C",
                      "sar:polarizations": ["VV", "VH"], "sar:product_type": "RTC",
                      "sat:orbit_state": p.orbit_state,
                      "sat:relative_orbit": p.relative_orbit})
        exts += [EXT_SAR, EXT_SAT]
    item = pystac.Item(
        id=item_id(p, tile), geometry=geometry, bbox=bbox, datetime=p.datetime,
        properties=props, collection=p.collection, stac_extensions=sorted(exts),
    )
    for a in assets:
        extra: dict = {
            "proj:shape": list(a.shape),
            "proj:transform": list(a.transform),
            "raster:bands": [_raster_band(a)],
        }
        if a.band is not None and a.band in COMMON:
            common, wl = COMMON[a.band]
            extra["eo:bands"] = [{"name": a.key, "common_name": common, "center_wavelength": wl}]
        elif a.band is not None:
            extra["eo:bands"] = [{"name": a.key}]  # SAR polarisation
        item.add_asset(a.key, pystac.Asset(
            href=hrefs[a.key], media_type=COG_MEDIA_TYPE, roles=list(a.roles),
            title=a.title or a.key, extra_fields=extra))
    return item


def _raster_band(a: AssetSpec) -> dict:
    rb: dict = {"data_type": a.dtype, "spatial_resolution": a.resolution}
    if a.nodata is not None:
        rb["nodata"] = a.nodata if a.dtype.startswith("float") else int(a.nodata)
    if a.scale is not None:
        rb["scale"] = a.scale
    if a.offset is not None:
        rb["offset"] = a.offset
    return rb


def item_dict(item: pystac.Item) -> dict:
    """The item as a plain dict with relative hrefs kept and no links."""
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    d["links"] = []
    d["properties"]["datetime"] = _iso(item.datetime)  # millisecond precision, like HLS/S2
    return d


def make_collection(collection_id: str, items: Sequence[pystac.Item], seed: int) -> dict:
    """A STAC Collection (as a dict) for the items of one collection."""
    bboxes = [it.bbox for it in items]
    times = sorted(it.datetime for it in items)
    first = items[0]
    summaries: dict = {
        "platform": sorted({it.properties["platform"] for it in items}),
        "constellation": sorted({it.properties["constellation"] for it in items}),
        "instruments": sorted({i for it in items for i in it.properties["instruments"]}),
        "proj:code": sorted({it.properties["proj:code"] for it in items}),
        "gsd": sorted({a.extra_fields["raster:bands"][0]["spatial_resolution"]
                       for it in items for a in it.assets.values()}),
    }
    eo_bands = [a.extra_fields["eo:bands"][0] for a in first.assets.values()
                if "eo:bands" in a.extra_fields]
    if eo_bands:
        summaries["eo:bands"] = eo_bands
    coll = pystac.Collection(
        id=collection_id,
        title=COLLECTION_TITLES.get(collection_id, collection_id),
        description=(f"Items of the terrastill synthetic demo world (seed {seed}) shaped like "
                     f"{collection_id}; not real observations."),
        extent=pystac.Extent(
            pystac.SpatialExtent([[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                                   max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]),
            pystac.TemporalExtent([[times[0], times[-1]]]),
        ),
        license="CC0-1.0",
        summaries=pystac.Summaries(summaries),
        stac_extensions=[EXT_EO, EXT_PROJ, EXT_RASTER, "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"],
    )
    d = coll.to_dict(include_self_link=False, transform_hrefs=False)
    d["links"] = []
    d["extent"]["temporal"]["interval"] = [[_iso(times[0]), _iso(times[-1])]]
    d["item_assets"] = {
        k: {kk: vv for kk, vv in a.to_dict().items() if kk not in ("href", "proj:shape",
                                                                    "proj:transform")}
        for k, a in first.assets.items()
    }
    return d
