"""Load and validate field observations (CSV, GeoParquet, GeoJSON points or polygons)."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import pandas as pd
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from terrastill.errors import BadInputError, NotFoundError

log = logging.getLogger(__name__)

REJECT_COLUMNS = ["source_row", "lon", "lat", "date", "label", "chip_id", "reason"]
# rejected.csv: these, then every column of the input file with its original value
REJECTED_CSV_LEAD = ["source_row", "chip_id", "reason"]
# ISO 8601 calendar dates, alone or with a time (and zone): 2024-08-03, 2024-08-03T10:00Z
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}"
                       r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$")


@dataclass(frozen=True)
class ObservationOptions:
    """Which columns hold what, and which labels are allowed."""

    lon_col: str = "lon"
    lat_col: str = "lat"
    date_col: str = "date"
    label_col: str = "label"
    crs: str = "EPSG:4326"
    classes: Sequence[str] | None = None
    date: str | None = None  # one date for every row (tables without a date column)
    date_format: str | None = None  # strptime format for non-ISO dates (e.g. %d/%m/%Y)


@dataclass
class Observations:
    """Validated observations plus the rows that were rejected, with reasons."""

    table: gpd.GeoDataFrame  # columns: source_row, lon, lat, date, label, label_name, geometry
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REJECT_COLUMNS))
    class_names: list[str] = field(default_factory=list)
    path: str = ""
    # every input row as read (geometry as WKT), indexed by source_row, for rejected.csv
    original: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.table)

    def rejected_csv(self, rejects: pd.DataFrame) -> pd.DataFrame:
        """``rejects`` (REJECT_COLUMNS rows) as rejected.csv: row, chip, reason and then every
        original column of the row with its original value."""
        lead = rejects.reindex(columns=REJECTED_CSV_LEAD).reset_index(drop=True)
        if self.original.empty:
            return lead
        orig = self.original.rename(columns={c: f"input_{c}" for c in self.original.columns
                                             if c in REJECTED_CSV_LEAD})
        rows = orig.reindex(lead["source_row"].astype("int64").to_numpy())
        return pd.concat([lead, rows.reset_index(drop=True)], axis=1)


def parse_date(raw: object, fmt: str | None = None) -> dt.date | None:
    """The calendar date of ``raw``: ISO 8601 (``YYYY-MM-DD`` or an ISO datetime, converted to
    UTC), or ``fmt`` (a strptime format) when given; None when it is neither."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    if isinstance(raw, pd.Timestamp):
        return None if pd.isna(raw) else (raw.tz_convert("UTC") if raw.tzinfo else raw).date()
    if isinstance(raw, dt.datetime):
        return (raw.astimezone(dt.UTC) if raw.tzinfo else raw).date()
    if isinstance(raw, dt.date):
        return raw
    text = str(raw).strip()
    if fmt:
        try:
            parsed = dt.datetime.strptime(text, fmt)
        except ValueError:
            return None
        return (parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed).date()
    if not _ISO_DATE.match(text):
        return None
    try:
        ts = pd.Timestamp(text)
    except ValueError:
        return None
    return (ts.tz_convert("UTC") if ts.tzinfo else ts).date()


def _original_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The input rows as plain values (geometries as WKT), indexed by 1-based data row."""
    orig = pd.DataFrame(df).copy()
    for col in orig.columns:
        if isinstance(orig[col].dtype, gpd.array.GeometryDtype):
            orig[col] = [None if g is None else g.wkt for g in orig[col]]
    orig.index = pd.RangeIndex(1, len(orig) + 1, name="source_row")
    return orig


def _read_table(path: Path, opts: ObservationOptions) -> tuple[pd.DataFrame, bool]:
    """Read a file into a (Geo)DataFrame; returns (frame, has_geometry)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
            return df, False
        if suffix in (".parquet", ".geoparquet"):
            try:
                return gpd.read_parquet(path), True
            except (ValueError, KeyError):  # plain parquet without geo metadata
                return pd.read_parquet(path), False
        if suffix in (".geojson", ".json", ".gpkg", ".shp", ".fgb"):
            return gpd.read_file(path), True
    except FileNotFoundError:
        raise NotFoundError(f"{path}: observations file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot parse as a table ({exc})") from exc
    except Exception as exc:  # pyogrio/pyarrow raise library-specific types
        raise BadInputError(f"{path}: cannot read observations ({exc})") from exc
    raise BadInputError(
        f"{path}: unsupported observations format {suffix!r} "
        "(expected .csv, .tsv, .parquet, .geoparquet, .geojson, .json, .gpkg)"
    )


def _parse_crs(text: str) -> CRS:
    try:
        return CRS.from_user_input(text)
    except CRSError as exc:
        raise BadInputError(f"--crs: {text!r} is not a coordinate reference system") from exc


def _label_lookup(classes: Sequence[str] | None) -> dict[str, int] | None:
    if classes is None:
        return None
    lookup = {name: i for i, name in enumerate(classes)}
    lookup.update({str(i): i for i in range(len(classes))})
    return lookup


def load_observations(path: str | Path, opts: ObservationOptions | None = None) -> Observations:
    """Read ``path`` and validate every row; bad rows go to ``rejected`` with a reason.

    Row numbers are 1-based data rows (the header is not counted), so row N of a CSV is on
    line N + 1 of the file.
    """
    opts = opts or ObservationOptions()
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{path}: observations file not found")
    df, has_geom = _read_table(path, opts)
    if len(df) == 0:
        raise BadInputError(f"{path}: no observations (the table is empty)")
    crs = _parse_crs(opts.crs)

    needed = [opts.label_col]
    if opts.date is None:
        needed.append(opts.date_col)
    geom_col = has_geom and isinstance(df, gpd.GeoDataFrame) and df.geometry.notna().any()
    if not geom_col:
        needed += [opts.lon_col, opts.lat_col]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise BadInputError(
            f"{path}: missing column {missing[0]!r} (columns are: "
            f"{', '.join(map(str, df.columns))}; "
            "use --lon-col/--lat-col/--date-col/--label-col to name them)"
        )
    if geom_col and df.crs is not None:
        crs = CRS.from_user_input(df.crs)

    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lookup = _label_lookup(opts.classes)
    geographic = crs.is_geographic
    fixed_date = None
    if opts.date is not None:
        fixed_date = parse_date(opts.date)
        if fixed_date is None:
            raise BadInputError(f"--date: {opts.date!r} is not an ISO date (expected YYYY-MM-DD)")
    original = _original_rows(df)
    # exact duplicates (every column equal) count once
    first_of: dict[tuple, int] = {}
    duplicate_of: dict[int, int] = {}
    for i, key in enumerate(original.astype(str).itertuples(index=False, name=None), start=1):
        if key in first_of:
            duplicate_of[i] = first_of[key]
        else:
            first_of[key] = i

    good: list[dict] = []
    bad: list[dict] = []
    labels_seen: set[str] = set()
    for i, rec in enumerate(df.to_dict("records"), start=1):
        raw_label = rec.get(opts.label_col)
        raw_date = fixed_date if fixed_date is not None else rec.get(opts.date_col)
        out = {"source_row": i, "lon": None, "lat": None, "date": raw_date, "label": raw_label,
               "chip_id": ""}

        def reject(reason: str, out: dict = out) -> None:
            bad.append({**out, "reason": reason})

        if i in duplicate_of:
            reject(f"exact duplicate of row {duplicate_of[i]} (counted once)")
            continue

        geom: BaseGeometry | None = None
        if geom_col:
            geom = rec.get("geometry")
            if geom is None or geom.is_empty:
                reject("missing geometry")
                continue
            if not geom.is_valid:
                reject("invalid geometry (self-intersecting or malformed)")
                continue
            x, y = geom.representative_point().coords[0]
        else:
            x_raw, y_raw = rec.get(opts.lon_col), rec.get(opts.lat_col)
            try:
                x = float(x_raw) if x_raw is not None else math.nan
                y = float(y_raw) if y_raw is not None else math.nan
            except (TypeError, ValueError):
                reject(f"coordinates are not numbers ({opts.lon_col}={x_raw!r}, "
                       f"{opts.lat_col}={y_raw!r})")
                continue
            if not (math.isfinite(x) and math.isfinite(y)):
                which = opts.lon_col if not math.isfinite(x) else opts.lat_col
                reject(f"missing or NaN coordinate in column {which!r}")
                continue
        if geographic and not (-180 <= x <= 180 and -90 <= y <= 90):
            reject(f"coordinates out of range (lon {x} must be in [-180, 180], "
                   f"lat {y} in [-90, 90])")
            continue
        lon, lat = to_ll.transform(x, y)
        if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 84:
            reject(f"coordinates ({x}, {y}) fall outside the UTM area (|lat| ≤ 84°)")
            continue
        out["lon"], out["lat"] = round(lon, 9), round(lat, 9)

        day = parse_date(raw_date, opts.date_format)
        if day is None:
            want = (f"--date-format {opts.date_format}" if opts.date_format else
                    "ISO 8601, e.g. 2024-05-01; --date-format names another format")
            reject(f"unparsable date {raw_date!r} in column {opts.date_col!r} (expected {want})")
            continue
        out["date"] = day.isoformat()

        if raw_label is None or (isinstance(raw_label, float) and math.isnan(raw_label)):
            reject(f"missing label in column {opts.label_col!r}")
            continue
        label_text = str(raw_label).strip()
        if label_text.endswith(".0") and label_text[:-2].isdigit():
            label_text = label_text[:-2]
        if lookup is not None:
            if label_text not in lookup:
                reject(f"unknown label {label_text!r} (expected one of "
                       f"{', '.join(opts.classes or [])})")
                continue
            label_id = lookup[label_text]
        else:
            label_id = -2  # resolved below once every label is known
            labels_seen.add(label_text)

        if geom is None:
            geom = Point(lon, lat)
        elif not geographic:
            from shapely.ops import transform as shp_transform

            geom = shp_transform(to_ll.transform, geom)
        good.append({**out, "label": label_id, "label_name": label_text, "geometry": geom})

    if lookup is None:
        class_names = _infer_classes(labels_seen)
        ids = {name: i for i, name in enumerate(class_names)}
        for g in good:
            g["label"] = ids[g["label_name"]]
    else:
        class_names = list(opts.classes or [])
        for g in good:
            g["label_name"] = class_names[g["label"]]

    table = gpd.GeoDataFrame(
        good or None,
        columns=["source_row", "lon", "lat", "date", "label", "label_name", "chip_id", "geometry"],
        geometry="geometry",
        crs="EPSG:4326",
    )
    rejected = pd.DataFrame(bad, columns=REJECT_COLUMNS)
    if len(bad):
        log.info("%s: %d of %d rows rejected", path, len(bad), len(df))
    notes = []
    if duplicate_of:
        notes.append(f"{len(duplicate_of)} exact duplicate row(s) counted once "
                     f"(first: row {min(duplicate_of)} repeats row "
                     f"{duplicate_of[min(duplicate_of)]})")
    return Observations(table=table, rejected=rejected, class_names=class_names, path=str(path),
                        original=original, notes=notes)


def _infer_classes(labels: set[str]) -> list[str]:
    """Class names when none were given: integer labels keep their ids, others sort."""
    if labels and all(s.isdigit() for s in labels):
        top = max(int(s) for s in labels)
        return [str(i) for i in range(top + 1)]
    return sorted(labels)


def strict_error(obs: Observations) -> BadInputError | None:
    """The error ``--strict`` raises for the first rejected row, or None if all rows are good."""
    if obs.rejected.empty:
        return None
    first = obs.rejected.iloc[0]
    n = len(obs.rejected)
    more = f" (and {n - 1} more bad rows)" if n > 1 else ""
    return BadInputError(f"{obs.path}: row {first.source_row}: {first.reason}{more}")

