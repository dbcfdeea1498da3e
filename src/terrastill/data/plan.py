"""Group observations into chips (grid cell × date) and find each chip's candidate items."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
from shapely.geometry import box

from terrastill.catalog import Catalog, Search, pick_collections
from terrastill.data.chips import ReadOptions, items_over_each
from terrastill.data.grid import ChipGrid, GridSpec, to_crs, utm_epsg
from terrastill.data.observations import Observations
from terrastill.errors import BadInputError

log = logging.getLogger(__name__)


@dataclass
class ChipTask:
    """One chip to make: its grid, observation date, observations and candidate items."""

    chip_id: str
    grid: GridSpec
    date: dt.date
    rows: list[int]  # source rows of the observations in this chip
    geoms_wkt: list[str]
    labels: list[int]
    items: list[dict] = field(default_factory=list)
    label_raster: str | None = None  # labels come from this raster instead of observations
    reason: str = ""  # why the chip cannot be made, known while planning ("" when it can)


@dataclass
class Plan:
    """Chip tasks plus observations rejected while grouping (too few per chip)."""

    tasks: list[ChipTask]
    rejected: list[dict]
    collections: tuple[str, ...]


def chip_id(epsg: int, col: int, row: int, day: dt.date) -> str:
    """Stable chip id: zone, grid cell and date, e.g. ``32633_000123_005678_20240501``."""
    return f"{epsg}_{col:06d}_{row:07d}_{day:%Y%m%d}"


def catalog_collections(catalog: Catalog, opts: ReadOptions) -> tuple[str, ...]:
    """The source's collections that ``catalog`` holds, or a clear error naming both sides."""
    wanted = [c for ids in opts.profile.collections.values() for c in ids]
    wanted = list(dict.fromkeys(wanted))
    found = pick_collections(catalog, wanted)
    if not found:
        have = ", ".join(catalog.collection_ids()) or "none"
        raise BadInputError(
            f"{catalog.location}: no {opts.profile.name.upper()} collection (looked for "
            f"{', '.join(wanted)}; the catalogue has {have})"
        )
    return found


def group_observations(obs: Observations, chip_size: int, resolution: float,
                       min_count: int) -> tuple[list[ChipTask], list[dict]]:
    """Put observations falling in the same chip cell on the same date into one task.

    Points that fall on one pixel on one date with different labels contradict each other:
    all of them are rejected as a conflict (whatever their order)."""
    groups: dict[tuple[int, int, int, str], list[int]] = defaultdict(list)
    # plain rows, not pandas indexing per chip (that cost more than the rest of the planning)
    recs = list(obs.table.reset_index(drop=True).itertuples(index=False))
    pixel_of: dict[int, tuple[int, int]] = {}
    for i, rec in enumerate(recs):
        epsg = utm_epsg(rec.lon, rec.lat)
        cg = ChipGrid(epsg, chip_size, resolution)
        geom_utm = to_crs(rec.geometry, 4326, epsg)
        if rec.geometry.geom_type == "Point":
            cells = [cg.cell_of(geom_utm.x, geom_utm.y)]
            pixel_of[i] = cg.spec(*cells[0]).pixel_of(geom_utm.x, geom_utm.y)
        else:
            cells = cg.cells_covering(geom_utm)
        for col, row in cells:
            groups[(epsg, col, row, rec.date)].append(i)
    tasks, rejected = [], []

    def reject(rec: object, cid: str, reason: str) -> None:
        rejected.append({"source_row": rec.source_row, "lon": rec.lon, "lat": rec.lat,
                         "date": rec.date, "label": rec.label_name, "chip_id": cid,
                         "reason": reason})

    for (epsg, col, row, day), idx in sorted(groups.items()):
        date = dt.date.fromisoformat(day)
        cid = chip_id(epsg, col, row, date)
        by_pixel: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i in idx:
            if i in pixel_of:
                by_pixel[pixel_of[i]].append(i)
        clash = set()
        for pix, members in by_pixel.items():
            labels = {recs[i].label_name for i in members}
            if len(labels) > 1:
                rows = sorted(int(recs[i].source_row) for i in members)
                for i in members:
                    reject(recs[i], cid,
                           f"conflict: rows {', '.join(map(str, rows))} give pixel "
                           f"(row {pix[0]}, col {pix[1]}) of chip {cid} on {day} different "
                           f"labels ({', '.join(sorted(labels))})")
                clash.update(members)
        idx = [i for i in idx if i not in clash]
        if not idx:
            continue
        sub = [recs[i] for i in idx]
        if len(idx) < min_count:
            for rec in sub:
                reject(rec, cid, f"only {len(idx)} observation(s) in chip {cid} "
                                 f"(--min-count {min_count})")
            continue
        grid = ChipGrid(epsg, chip_size, resolution).spec(col, row)
        tasks.append(ChipTask(cid, grid, date, [int(r.source_row) for r in sub],
                              [r.geometry.wkt for r in sub], [int(r.label) for r in sub]))
    return tasks, rejected


def raster_tasks(path: str | Path, day: dt.date, chip_size: int,
                 resolution: float) -> list[ChipTask]:
    """One task per chip cell covering a label raster (labels are read onto each chip)."""
    try:
        with rasterio.open(path) as src:
            crs, bounds = src.crs, src.bounds
    except rasterio.errors.RasterioIOError as exc:
        raise BadInputError(f"{path}: not a readable label raster ({exc})") from exc
    if crs is None:
        raise BadInputError(f"{path}: the label raster has no coordinate reference system")
    src_epsg = crs.to_epsg()
    if src_epsg is None:
        raise BadInputError(f"{path}: the label raster's CRS has no EPSG code")
    foot = to_crs(box(*bounds), src_epsg, 4326)
    c = foot.centroid
    epsg = utm_epsg(c.x, c.y)
    grid = ChipGrid(epsg, chip_size, resolution)
    return [ChipTask(chip_id(epsg, col, row, day), grid.spec(col, row), day, [], [], [],
                     label_raster=str(Path(path).resolve()))
            for col, row in grid.cells_covering(to_crs(foot, 4326, epsg))]


def attach_items(tasks: list[ChipTask], catalog: Catalog, collections: tuple[str, ...],
                 opts: ReadOptions, max_scene_cloud: float | None = None) -> None:
    """Give each task the catalogue items intersecting it within its date's search window.
    A task that no item's footprint covers on any date gets that as its ``reason`` (rather
    than a date search that finds nothing).

    Observation dates whose search windows overlap and whose chips' bounding boxes intersect
    share one search (their union); each task then keeps the items dated within its own
    window, by the test both catalogue backends apply to a search's results (a datetime,
    inside the closed window), in the catalogue's order: exactly the items a search of its
    own date would give, for fewer searches (one per campaign rather than one per day)."""
    by_date: dict[dt.date, list[ChipTask]] = defaultdict(list)
    for t in tasks:
        by_date[t.date].append(t)
    for days, bbox in _search_spans(by_date, opts):
        start = _window(opts, days[0])[0]
        end = max(_window(opts, d)[1] for d in days)
        found = catalog.search(Search(collections, bbox, start, end, max_scene_cloud))
        dicts = [it.to_dict(transform_hrefs=False) for it in found]
        when = {id(d): it.datetime for d, it in zip(dicts, found, strict=True)}
        group = [t for d in days for t in by_date[d]]
        for t, over in zip(group, items_over_each(dicts, [t.grid for t in group]), strict=True):
            lo, hi = _window(opts, t.date)
            t.items = [d for d in over if _dated_within(when[id(d)], lo, hi)]
    uncovered = [t for t in tasks if not t.items and not t.label_raster]
    if uncovered:
        _explain_uncovered(uncovered, catalog, collections, opts)


def _window(opts: ReadOptions, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The closed UTC datetime interval searched for chips observed on ``day``."""
    start, end = opts.temporal.search_window(day)
    return (dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            dt.datetime.combine(end, dt.time.max, tzinfo=dt.UTC))


def _dated_within(when: dt.datetime | None, lo: dt.datetime, hi: dt.datetime) -> bool:
    if when is None:
        return False
    return lo <= (when if when.tzinfo else when.replace(tzinfo=dt.UTC)) <= hi


def _search_spans(by_date: dict[dt.date, list[ChipTask]], opts: ReadOptions,
                  ) -> list[tuple[list[dt.date], tuple[float, ...]]]:
    """Consecutive dates whose windows overlap and whose chips' bounding boxes intersect,
    with the union of their boxes: one search each."""
    spans: list[tuple[list[dt.date], tuple[float, ...]]] = []
    end: dt.datetime | None = None
    for day in sorted(by_date):
        bbox = _union_bounds([t.grid.lonlat_bounds() for t in by_date[day]])
        lo, hi = _window(opts, day)
        if spans and end is not None and lo <= end and _boxes_meet(spans[-1][1], bbox):
            days, union = spans[-1]
            spans[-1] = ([*days, day], _union_bounds([union, bbox]))
            end = max(end, hi)
        else:
            spans.append(([day], bbox))
            end = hi
    return spans


def _boxes_meet(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _union_bounds(boxes: list[tuple[float, ...]]) -> tuple[float, ...]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


EXPLAIN_DAYS = 183  # how far from its date a chip's coverage is looked for


def _explain_uncovered(tasks: list[ChipTask], catalog: Catalog, collections: tuple[str, ...],
                       opts: ReadOptions) -> None:
    """Tell chips outside every item's footprint from chips that only lack an acquisition
    near their date: one search per date over that date's uncovered chips, ±6 months."""
    by_date: dict[dt.date, list[ChipTask]] = defaultdict(list)
    for t in tasks:
        by_date[t.date].append(t)
    name = opts.profile.name.upper()
    for day, group in sorted(by_date.items()):
        span = dt.timedelta(days=EXPLAIN_DAYS)
        search = Search(collections, _union_bounds([t.grid.lonlat_bounds() for t in group]),
                        dt.datetime.combine(day - span, dt.time.min, tzinfo=dt.UTC),
                        dt.datetime.combine(day + span, dt.time.max, tzinfo=dt.UTC))
        items = [it.to_dict(transform_hrefs=False) for it in catalog.search(search)]
        for t, over in zip(group, items_over_each(items, [t.grid for t in group]), strict=True):
            if not over:
                t.reason = (f"outside the footprint of every {name} item within "
                            f"±{EXPLAIN_DAYS} days of {day} (chip {t.chip_id} at "
                            f"{_centre(t.grid)})")


def _centre(grid: GridSpec) -> str:
    b = grid.lonlat_bounds()
    return f"lon {(b[0] + b[2]) / 2:.5f}, lat {(b[1] + b[3]) / 2:.5f}"
