"""Folders of GeoTIFF images (the EuroSAT layout ``<Class>/*.tif``) as model inputs.

A folder (searched recursively) or a glob names the images; an image's label is the name of
the folder holding it when the images sit in per-class folders below the given folder. Band
names come from the files' band descriptions, or from ``--image-bands``: comma-separated
names in file order, or a preset (``eurosat``: the 13 Sentinel-2 bands in EuroSAT MS order
B01…B12, B8A). Names map to terrastill's canonical band names (``B04``/``b04`` → ``red``,
``B8A`` → ``nir_narrow`` …) by Sentinel-2 numbering.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.errors import BadInputError, NotFoundError

IMAGE_SUFFIXES = (".tif", ".tiff")

# Sentinel-2 band numbers to canonical names (the same names the S2 L2A profile uses).
S2_NUMBERS = {
    "b01": "coastal", "b1": "coastal", "b02": "blue", "b2": "blue", "b03": "green",
    "b3": "green", "b04": "red", "b4": "red", "b05": "rededge1", "b5": "rededge1",
    "b06": "rededge2", "b6": "rededge2", "b07": "rededge3", "b7": "rededge3", "b08": "nir",
    "b8": "nir", "b8a": "nir_narrow", "b09": "water_vapour", "b9": "water_vapour",
    "b10": "cirrus", "b11": "swir1", "b12": "swir2",
}
PRESETS = {
    "eurosat": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                "B12", "B8A"),
}
PRESETS["s2-13"] = PRESETS["eurosat"]
OTHER_ALIASES = {"nir08": "nir_narrow", "swir16": "swir1", "swir22": "swir2",
                 "nir_broad": "nir", "coastal_aerosol": "coastal"}


def canonical_name(name: str) -> str:
    """terrastill's name for a band called ``name`` (Sentinel-2 numbering for ``Bxx``)."""
    low = str(name).strip().lower()
    return S2_NUMBERS.get(low, OTHER_ALIASES.get(low, low))


def parse_band_names(text: str | None) -> list[str] | None:
    """``--image-bands``: a preset name or comma-separated names, as canonical names."""
    if text is None or not text.strip():
        return None
    raw = PRESETS.get(text.strip().lower())
    names = list(raw) if raw else [v for v in (s.strip() for s in text.split(","))]
    if any(not v for v in names):
        raise BadInputError(f"--image-bands {text!r}: empty band name")
    out = [canonical_name(v) for v in names]
    dupes = sorted({v for v in out if out.count(v) > 1})
    if dupes:
        raise BadInputError(f"--image-bands {text!r}: band {dupes[0]!r} named twice")
    return out


@dataclass(frozen=True)
class ImageRecord:
    """One image file, its id (path below the root, no suffix) and its label if known."""

    path: Path
    id: str
    label: str | None = None


def list_images(spec: str | os.PathLike[str]) -> list[ImageRecord]:
    """The images a folder (recursively) or a glob names, sorted by path.

    Labels come from per-class folders: an image ``ROOT/<Class>/x.tif`` is labelled
    ``<Class>``; images directly in ``ROOT`` (or named by a glob) have none.
    """
    text = str(spec)
    root = Path(text).expanduser()
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                       and p.is_file() and not p.name.startswith("."))
        base = root
    elif any(c in text for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True)
                       if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file())
        base = None
    elif root.is_file():
        paths, base = [root], None
    else:
        raise NotFoundError(f"{text}: no such image folder, file or glob")
    if not paths:
        raise BadInputError(f"{text}: no .tif images found")
    out = []
    for p in paths:
        if base is not None:
            rel = p.relative_to(base)
            label = rel.parts[0] if len(rel.parts) > 1 else None
            ident = rel.with_suffix("").as_posix()
        else:
            label, ident = None, p.stem
        out.append(ImageRecord(p, ident, label))
    ids = [r.id for r in out]
    if len(set(ids)) != len(ids):
        raise BadInputError(f"{text}: two images share the id {_first_dupe(ids)!r}")
    return out


def _first_dupe(values: Sequence[str]) -> str:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return ""


@dataclass
class ImageData:
    """An image's wanted bands as reflectance (C, H, W) float32 (NaN where nodata), its
    footprint in EPSG:4326 and its acquisition date when the file says one."""

    array: np.ndarray
    footprint: Any  # shapely geometry, EPSG:4326
    date: str | None = None


def file_band_names(path: Path, given: Sequence[str] | None) -> list[str]:
    """Canonical names of a file's bands, in order: ``given`` or the band descriptions."""
    import rasterio

    with rasterio.open(path) as src:
        count, desc = src.count, list(src.descriptions)
    if given is not None:
        if len(given) != count:
            raise BadInputError(f"{path}: {count} bands but --image-bands names {len(given)}")
        return list(given)
    if any(d is None or not str(d).strip() for d in desc):
        raise BadInputError(f"{path}: bands have no descriptions; name them with "
                            "--image-bands (e.g. 'eurosat' or 'B02,B03,B04')")
    return [canonical_name(d) for d in desc]


def read_image(record: ImageRecord, bands: Sequence[str], given: Sequence[str] | None = None,
               scale: float = 1.0, offset: float = 0.0,
               nodata: float | None = None) -> ImageData:
    """Read ``bands`` (canonical names) of one image, DN × scale + offset, nodata → NaN."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.warp import transform_geom
    from shapely.geometry import box, shape

    names = file_band_names(record.path, given)
    missing = [b for b in bands if b not in names]
    if missing:
        raise BadInputError(f"{record.path}: no band {missing[0]!r} (the file has "
                            f"{', '.join(names)})")
    idx = [names.index(b) + 1 for b in bands]
    try:
        with rasterio.open(record.path) as src:
            data = src.read(idx).astype(np.float32)
            fill = src.nodata if nodata is None else nodata
            if src.crs is None:
                raise BadInputError(f"{record.path}: no CRS (the footprint needs one)")
            geom = transform_geom(src.crs, "EPSG:4326", box(*src.bounds).__geo_interface__,
                                  antimeridian_cutting=True, precision=-1)
            tags = src.tags()
    except RasterioError as exc:
        raise BadInputError(f"{record.path}: cannot read ({exc})") from exc
    invalid = ~np.isfinite(data)
    if fill is not None and not (isinstance(fill, float) and np.isnan(fill)):
        invalid |= data == np.float32(fill)
    data = data * np.float32(scale) + np.float32(offset)
    data[invalid] = np.nan
    date = tags.get("TIFFTAG_DATETIME") or tags.get("date") or tags.get("datetime")
    return ImageData(array=data, footprint=shape(geom), date=_iso_date(date))


def _iso_date(value: str | None) -> str | None:
    import datetime as dt

    if not value:
        return None
    text = value.strip().replace(":", "-", 2) if len(value) >= 10 and value[4] == ":" else value
    try:
        return dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        return None


def stratified_split(labels: Sequence[Any], fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                     seed: int = 0) -> list[str]:
    """``train``/``val``/``test`` per row, the same shares within each label (seeded)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray([str(v) for v in labels])
    out = np.empty(len(labels), dtype=object)
    for lab in sorted(set(labels)):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        n = len(idx)
        n_val = int(round(fractions[1] * n))
        n_test = int(round(fractions[2] * n))
        n_train = max(n - n_val - n_test, 1 if n else 0)
        n_val = min(n_val, n - n_train)
        out[idx[:n_train]] = "train"
        out[idx[n_train:n_train + n_val]] = "val"
        out[idx[n_train + n_val:]] = "test"
    return [str(v) for v in out]
