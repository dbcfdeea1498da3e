"""``terrastill chips``: plan, make (resumable, parallel) and index a chip dataset folder."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from shapely import wkt
from shapely.geometry import box

from terrastill import __version__
from terrastill.atomic import atomic_path, remove_stale_temps, write_text_atomic
from terrastill.catalog import open_catalog
from terrastill.data.chips import ReadOptions, read_chip
from terrastill.data.grid import GridSpec, to_crs
from terrastill.data.labels import burn_labels, label_counts
from terrastill.data.observations import (
    REJECT_COLUMNS,
    ObservationOptions,
    Observations,
    load_observations,
    strict_error,
)
from terrastill.data.plan import (
    ChipTask,
    attach_items,
    catalog_collections,
    group_observations,
    raster_tasks,
)
from terrastill.data.rasters import write_raster
from terrastill.data.read import read_asset
from terrastill.data.splits import assign_splits, band_stats, chip_band_sums
from terrastill.errors import AssetReadError, BadInputError, NoImageryError
from terrastill.scale import dask_client

log = logging.getLogger(__name__)

RUN_FILE = ".terrastill-run.json"


@dataclass(frozen=True)
class ChipJob:
    """Every option of a chip run besides the inputs (recorded so a resume can check it)."""

    read: ReadOptions = field(default_factory=ReadOptions)
    chip_size: int = 32
    min_count: int = 1
    min_valid: float = 0.5
    label_window: int = 1
    max_scene_cloud: float | None = None
    split_block: float = 3000.0
    split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0

    @property
    def resolution(self) -> float:
        return self.read.profile.resolution

    def validate(self) -> None:
        if self.chip_size < 8 or self.chip_size > 4096:
            raise BadInputError(f"--chip-size {self.chip_size}: expected 8 to 4096 pixels")
        if not 0 <= self.min_valid <= 1:
            raise BadInputError(f"--min-valid {self.min_valid}: expected a fraction in [0, 1]")
        if self.min_count < 1:
            raise BadInputError(f"--min-count {self.min_count}: expected at least 1")
        if self.label_window < 1 or self.label_window % 2 == 0:
            raise BadInputError(f"--label-window {self.label_window}: expected an odd number ≥ 1")
        t = self.read.temporal
        if t.num_steps < 1 or t.temporal_step < 0 or t.temporal_tolerance < 0:
            raise BadInputError("--num-steps must be ≥ 1, --temporal-step and "
                                "--temporal-tolerance ≥ 0")
        if t.num_steps > 1 and t.temporal_step <= 0:
            raise BadInputError("--temporal-step must be > 0 when --num-steps > 1")
        if not 0 <= t.max_cloud <= 100:
            raise BadInputError(f"--max-cloud {t.max_cloud}: expected a percentage in [0, 100]")
        self.read.resolved_bands()
        self.read.resolved_mask()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["read"] = self.read.to_dict()
        d["split_ratios"] = list(self.split_ratios)
        return d


@dataclass
class ChipsResult:
    """What a chip run produced."""

    out: Path
    chips: int
    rejected_rows: int
    skipped: int
    dataset: dict


def _task_record(task: ChipTask) -> dict:
    return {"id": task.chip_id, "grid": task.grid.to_dict(), "date": task.date.isoformat(),
            "rows": task.rows, "labels": task.labels}


def process_task(task: ChipTask, job: ChipJob, out: str, num_classes: int) -> dict:
    """Make one chip (image + label files + record). Pure in its inputs: safe on any worker.

    Returns the chip's record; a chip that cannot be made gets a record with ``status`` =
    ``rejected`` and the reason. Unreachable assets (transient) raise instead, so a resumed
    run tries again.
    """
    root = Path(out)
    rec = _task_record(task)
    if task.reason:
        return {**rec, "status": "rejected", "reason": task.reason}
    try:
        chip = read_chip(task.grid, task.date, task.items, job.read)
    except NoImageryError as exc:
        return {**rec, "status": "rejected", "reason": str(exc)}
    except AssetReadError as exc:
        if exc.transient:
            raise
        return {**rec, "status": "rejected", "reason": str(exc)}
    frac = chip.valid_fraction
    if frac < job.min_valid:
        return {**rec, "status": "rejected",
                "reason": f"only {frac:.0%} valid pixels over {len(chip.steps)} steps "
                          f"(--min-valid {job.min_valid:.0%})"}
    if task.label_raster:
        labels = raster_labels(task.label_raster, task.grid, num_classes)
    else:
        labels = burn_labels(task.grid, [wkt.loads(g) for g in task.geoms_wkt], task.labels,
                             job.label_window)
    if not (labels >= 0).any():
        return {**rec, "status": "rejected",
                "reason": "no labelled pixel in the chip (its labels cover no pixel centre)"}
    # training can only use a labelled pixel with data at every step: the others are ignored
    labels[~np.isfinite(chip.array).all(axis=(0, 1))] = -1
    if not (labels >= 0).any():
        return {**rec, "status": "rejected",
                "reason": "no labelled pixel has valid data at every step (cloud, shadow, "
                          "nodata or fill at some step)"}
    steps = chip.step_records()
    band_tags = [{"date": steps[t]["date"], "items": ",".join(steps[t]["items"])}
                 for t in range(len(steps)) for _ in chip.bands]
    tags = {"observation_date": task.date.isoformat(), "source": job.read.source,
            **{f"t{t}_date": s["date"] for t, s in enumerate(steps)},
            **{f"t{t}_items": ",".join(s["items"]) for t, s in enumerate(steps)}}
    T, C, H, W = chip.array.shape
    write_raster(root / "chips" / f"{task.chip_id}.tif", chip.array.reshape(T * C, H, W),
                 task.grid, float("nan"), chip.descriptions(), tags, band_tags)
    write_raster(root / "labels" / f"{task.chip_id}.tif", labels, task.grid, -1,
                 ["label"], {"observation_date": task.date.isoformat()})
    return {**rec, "status": "ok", "steps": steps, "valid_fraction": round(frac, 6),
            "cloud_fraction": round(chip.cloud_fraction, 6),
            "label_counts": label_counts(labels, num_classes),
            "band_sums": chip_band_sums(chip.array)}


def raster_labels(path: str, grid: GridSpec, num_classes: int) -> np.ndarray:
    """Class ids of a label raster on a chip grid (nearest); nodata and unknown ids → -1."""
    with rasterio.open(path) as src:
        nodata, dtype = src.nodata, np.dtype(src.dtypes[0])
    if nodata is not None:
        fill = nodata
    elif np.issubdtype(dtype, np.signedinteger) or np.issubdtype(dtype, np.floating):
        fill = -1
    else:
        fill = np.iinfo(dtype).max
    raw = read_asset(path, grid, fill=fill)
    ok = (raw != fill) & (raw >= 0) & (raw < num_classes)
    return np.where(ok, raw, -1).astype(np.int16)


def _save_record(out: Path, record: dict) -> None:
    write_text_atomic(out / "records" / f"{record['id']}.json",
                      json.dumps(record, sort_keys=True, indent=1))


def _load_records(out: Path) -> dict[str, dict]:
    recs = {}
    for p in sorted((out / "records").glob("*.json")):
        try:
            recs[p.stem] = json.loads(p.read_text())
        except ValueError:  # a record is written atomically; a bad one is from elsewhere
            log.warning("%s: unreadable record, chip will be remade", p)
    return recs


def _check_run_file(out: Path, run: dict, overwrite: bool) -> None:
    path = out / RUN_FILE
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        if old != run:
            diff = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
            raise BadInputError(
                f"{out}: made by an earlier run with different {', '.join(diff)}; "
                "use another --out or pass --overwrite to start again"
            )
    elif path.exists() and overwrite:
        for sub in ("chips", "labels", "records"):
            shutil.rmtree(out / sub, ignore_errors=True)


def _run_tasks(tasks: Sequence[ChipTask], job: ChipJob, out: Path, num_classes: int,
               workers: int, scheduler: str | None,
               on_done: Callable[[dict], None]) -> None:
    with dask_client(workers, scheduler) as client:
        if client is None:
            for t in tasks:
                on_done(process_task(t, job, str(out), num_classes))
            return
        from distributed import as_completed

        futures = client.map(process_task, list(tasks), job=job, out=str(out),
                             num_classes=num_classes, pure=False)
        for fut in as_completed(futures):
            on_done(fut.result())


def make_chips(
    observations: str | Path,
    out: str | Path,
    catalog: str,
    job: ChipJob,
    obs_opts: ObservationOptions | None = None,
    *,
    strict: bool = False,
    workers: int = 0,
    scheduler: str | None = None,
    overwrite: bool = False,
    command: str = "",
    progress: Callable[[int, int], None] | None = None,
    indices: Sequence[str] = (),
) -> ChipsResult:
    """Build (or resume) a chip dataset folder from observations and a catalogue.

    Everything about the inputs is validated before anything is written: a bad option, file or
    (with ``strict``) row raises :class:`BadInputError` and leaves ``out`` untouched.
    ``indices`` (e.g. ``("ndwi", "ndvi")``) are recorded in ``dataset.json`` with their
    train-split statistics (:mod:`terrastill.data.indices`); the chips keep the raw bands.
    """
    out = Path(out)
    job.validate()
    if indices:  # terrastill.data.indices imports torch: only when indices are asked for
        from terrastill.data.indices import resolve_indices

        resolve_indices(indices, job.read.resolved_bands(), job.read.source)
    obs_opts = obs_opts or ObservationOptions()
    if Path(observations).suffix.lower() in (".tif", ".tiff"):
        obs, tasks, group_rejects = _label_raster_plan(Path(observations), job, obs_opts)
    else:
        obs = load_observations(observations, obs_opts)
        for note in obs.notes:
            log.warning("%s: %s", observations, note)
        if strict and (err := strict_error(obs)) is not None:
            raise err
        if len(obs) == 0:
            _all_rejected(out, obs, obs.rejected)
        tasks, group_rejects = group_observations(obs, job.chip_size, job.resolution,
                                                  job.min_count)
        if strict and group_rejects:
            first = group_rejects[0]
            raise BadInputError(f"{observations}: row {first['source_row']}: {first['reason']}"
                                + _more(len(group_rejects)) + " (--strict)")
    cat = open_catalog(catalog)
    collections = catalog_collections(cat, job.read)
    attach_items(tasks, cat, collections, job.read, job.max_scene_cloud)
    if strict and (planned := [t for t in tasks if t.reason]):
        raise BadInputError(f"{observations}: row {planned[0].rows[0]}: {planned[0].reason}"
                            + _more(len(planned)) + " (--strict)")

    run = {"observations": str(Path(observations).resolve()), "catalog": catalog,
           "class_names": obs.class_names, "job": job.to_dict()}
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: exists and is not a folder")
    _check_run_file(out, run, overwrite)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / RUN_FILE, json.dumps(run, sort_keys=True, indent=1))
    except PermissionError as exc:
        raise BadInputError(f"{out}: cannot write here ({exc.strerror})") from exc
    remove_stale_temps(out)

    done = _load_records(out)
    # date order: consecutive chips share scenes, so open datasets are reused (bytes are the same
    # in any order; records are indexed by id)
    todo = sorted((t for t in tasks if t.chip_id not in done), key=lambda t: (t.date, t.chip_id))
    skipped = len(tasks) - len(todo)
    num_classes = len(obs.class_names)
    completed = [skipped]
    before = set(done)

    def on_done(rec: dict) -> None:
        if strict and rec["status"] != "ok":
            raise _StrictStop(rec)
        _save_record(out, rec)
        done[rec["id"]] = rec
        completed[0] += 1
        if progress:
            progress(completed[0], len(tasks))

    if progress:
        progress(skipped, len(tasks))
    try:
        _run_tasks(todo, job, out, num_classes, workers, scheduler, on_done)
    except _StrictStop as stop:
        _undo(out, before, created)
        rec = stop.record
        raise BadInputError(f"{observations}: row {rec['rows'][0] if rec['rows'] else '-'} "
                            f"(chip {rec['id']}): {rec['reason']} (--strict: nothing was "
                            "written)") from None
    records = [done[t.chip_id] for t in tasks]
    dataset = finalize(out, records, obs.rejected, group_rejects, obs.class_names, job,
                       catalog, command, obs=obs, indices=indices)
    if dataset["counts"]["chips"] == 0:
        n = dataset["counts"]["rejected_rows"]
        for name in ("index.parquet", "dataset.json"):
            (out / name).unlink(missing_ok=True)
        raise BadInputError(f"no chips: all {n} rows rejected, see {out / 'rejected.csv'}")
    return ChipsResult(out, dataset["counts"]["chips"], dataset["counts"]["rejected_rows"],
                       skipped, dataset)


class _StrictStop(Exception):
    """A chip was rejected under ``--strict``: the run stops and undoes its writes."""

    def __init__(self, record: dict):
        super().__init__(record.get("reason", ""))
        self.record = record


def _more(n: int) -> str:
    return f" (and {n - 1} more)" if n > 1 else ""


def _undo(out: Path, keep: set[str], created: bool) -> None:
    """Remove what this run wrote: the whole folder if it made it, else every chip, label and
    record but those of earlier runs (``keep``), workers' in-flight chips included."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for sub in ("chips", "labels", "records"):
        for p in (out / sub).glob("*"):
            if p.stem not in keep:
                p.unlink(missing_ok=True)


def _all_rejected(out: Path, obs: Observations, rejects: pd.DataFrame) -> None:
    """Every row was rejected while validating: keep rejected.csv, say so, exit 2."""
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "rejected.csv") as tmp:
            obs.rejected_csv(rejects).to_csv(tmp, index=False)
    except PermissionError as exc:
        raise BadInputError(f"{out}: cannot write here ({exc.strerror})") from exc
    raise BadInputError(f"no chips: all {len(rejects)} rows rejected, see "
                        f"{out / 'rejected.csv'}")


def _label_raster_plan(path: Path, job: ChipJob, opts: ObservationOptions):
    """Chip tasks covering a label raster on one date (``--date``)."""
    if not path.exists():
        raise BadInputError(f"{path}: label raster not found")
    if opts.date is None:
        raise BadInputError(f"{path}: a label raster needs --date (the labels' date)")
    day = observation_date(opts.date)
    if opts.classes:
        names = list(opts.classes)
    else:
        with rasterio.open(path) as src:
            arr = src.read(1, masked=True)
        values = np.unique(arr.compressed())
        values = values[values >= 0]
        if values.size == 0:
            raise BadInputError(f"{path}: the label raster has no class ids ≥ 0")
        names = [str(i) for i in range(int(values.max()) + 1)]
    tasks = raster_tasks(path, day, job.chip_size, job.resolution)
    if not tasks:
        raise BadInputError(f"{path}: the label raster covers no chip")
    empty = pd.DataFrame(columns=REJECT_COLUMNS)
    obs = Observations(gpd.GeoDataFrame(geometry=[], crs="EPSG:4326"), empty, names, str(path))
    return obs, tasks, []


def _index_frame(records: Iterable[dict]) -> gpd.GeoDataFrame:
    rows = []
    for r in records:
        g = r["grid"]
        t = g["transform"]
        bounds = (t[2], t[5] + t[4] * g["height"], t[2] + t[0] * g["width"], t[5])
        foot = to_crs(box(*bounds), g["epsg"], 4326)
        steps = r["steps"]
        rows.append({
            "id": r["id"],
            "date": r["date"],
            "epsg": g["epsg"],
            "crs": f"EPSG:{g['epsg']}",
            "transform": [float(v) for v in t],
            "width": g["width"],
            "height": g["height"],
            "num_observations": len(r["rows"]),
            "source_rows": list(r["rows"]),
            "step_dates": [s["date"] for s in steps],
            "step_items": json.dumps([s["items"] for s in steps], sort_keys=True),
            "step_datetimes": json.dumps([s["datetimes"] for s in steps], sort_keys=True),
            "step_hrefs": json.dumps([s["hrefs"] for s in steps], sort_keys=True),
            "valid_fraction": r["valid_fraction"],
            "cloud_fraction": r["cloud_fraction"],
            "label_counts": list(r["label_counts"]),
            "geometry": foot,
        })
    cols = ["id", "date", "epsg", "crs", "transform", "width", "height", "num_observations",
            "source_rows", "step_dates", "step_items", "step_datetimes", "step_hrefs",
            "valid_fraction", "cloud_fraction", "label_counts", "geometry"]
    return gpd.GeoDataFrame(rows or None, columns=cols, geometry="geometry", crs="EPSG:4326")


def _rejects_frame(row_rejects: pd.DataFrame, group_rejects: list[dict],
                   chip_records: Iterable[dict], obs_lookup: dict[int, dict]) -> pd.DataFrame:
    rows = row_rejects.to_dict("records") + list(group_rejects)
    for r in chip_records:
        for src in r["rows"]:
            o = obs_lookup.get(src, {})
            rows.append({"source_row": src, "lon": o.get("lon"), "lat": o.get("lat"),
                         "date": r["date"], "label": o.get("label"), "chip_id": r["id"],
                         "reason": r["reason"]})
    df = pd.DataFrame(rows, columns=REJECT_COLUMNS)
    return df.sort_values(["source_row", "chip_id"], kind="stable").reset_index(drop=True)


def finalize(out: Path, records: list[dict], row_rejects: pd.DataFrame,
             group_rejects: list[dict], class_names: list[str], job: ChipJob, catalog: str,
             command: str, split_seed: int | None = None,
             obs: Observations | None = None, indices: Sequence[str] = ()) -> dict:
    """Write ``index.parquet``, ``rejected.csv`` and ``dataset.json`` from the chip records.

    ``obs`` (the observations as loaded for this run) gives rejected rows their original
    columns; without it they are re-read with default options."""
    records = sorted(records, key=lambda r: r["id"])
    ok = [r for r in records if r["status"] == "ok"]
    bad = [r for r in records if r["status"] != "ok"]
    index = _index_frame(ok)
    if len(index):
        index["split"] = assign_splits(index, job.split_block, job.split_ratios,
                                       job.seed if split_seed is None else split_seed)
    else:
        index["split"] = pd.Series(dtype=object)
    obs_lookup = _obs_lookup(out) if obs is None else _lookup(obs)
    rejects = _rejects_frame(row_rejects, group_rejects, bad, obs_lookup)
    sums = {r["id"]: r["band_sums"] for r in ok if "band_sums" in r}
    dataset = dataset_json(out, index, rejects, class_names, job, catalog, command, sums)
    add_index_stats(out, dataset, index, indices)
    write_index(out, index)
    with atomic_path(out / "rejected.csv") as tmp:
        (obs.rejected_csv(rejects) if obs is not None else rejects).to_csv(tmp, index=False)
    write_text_atomic(out / "dataset.json", json.dumps(dataset, indent=2, sort_keys=False))
    return dataset


def _obs_lookup(out: Path) -> dict[int, dict]:
    run = json.loads((out / RUN_FILE).read_text())
    try:
        obs = load_observations(run["observations"], None)
    except BadInputError:
        return {}
    return _lookup(obs)


def _lookup(obs: Observations) -> dict[int, dict]:
    return {int(r.source_row): {"lon": r.lon, "lat": r.lat, "label": r.label_name}
            for r in obs.table.itertuples(index=False)}


def write_index(out: Path, index: gpd.GeoDataFrame) -> None:
    """Write the chip index as GeoParquet atomically."""
    with atomic_path(out / "index.parquet") as tmp:
        index.to_parquet(tmp, index=False)


def dataset_json(out: Path, index: gpd.GeoDataFrame, rejects: pd.DataFrame,
                 class_names: list[str], job: ChipJob, catalog: str, command: str,
                 band_sums: dict[str, dict] | None = None) -> dict:
    """The dataset description, with per-band mean/std over the train split (from the chips'
    ``band_sums`` where their records have them, else from their files)."""
    read = job.read.to_dict()
    train_ids = list(index.loc[index["split"] == "train", "id"]) if len(index) else []
    ids = train_ids or list(index["id"])
    mean, std = band_stats([out / "chips" / f"{i}.tif" for i in ids], len(read["bands"]),
                           band_sums)
    counts_by_split = {s: int((index["split"] == s).sum()) if len(index) else 0
                       for s in ("train", "val", "test")}
    labels = (np.sum(np.stack([np.asarray(c) for c in index["label_counts"]]), axis=0).tolist()
              if len(index) else [0] * len(class_names))
    return {
        "format": "terrastill-chips",
        "version": 1,
        "source": read["source"],
        "bands": read["bands"],
        "num_steps": read["num_steps"],
        "chip_size": job.chip_size,
        "resolution": job.resolution,
        "temporal_step": read["temporal_step"],
        "temporal_tolerance": read["temporal_tolerance"],
        "max_cloud": read["max_cloud"],
        "mask_classes": read["mask_classes"],
        "resampling": read["resampling"],
        "task": "segmentation",
        "class_names": class_names,
        "stats": {"mean": mean, "std": std, "split": "train" if train_ids else "all"},
        "counts": {"chips": len(index), **counts_by_split,
                   "rejected_rows": len(rejects),
                   "label_pixels": dict(zip(class_names, [int(v) for v in labels],
                                            strict=False))},
        "split": {"block_size": job.split_block, "ratios": list(job.split_ratios),
                  "seed": job.seed},
        "catalog": catalog,
        "options": job.to_dict(),
        "software": {"terrastill": __version__},
        "command": command,
    }


def add_index_stats(out: Path, dataset: dict, index: gpd.GeoDataFrame,
                    indices: Sequence[str]) -> None:
    """Record ``indices`` (resolved against the bands) and their train-split mean/std."""
    if not indices:  # without indices, no torch import (terrastill.data.indices needs it)
        dataset.pop("indices", None)
        dataset.pop("index_stats", None)
        return
    from terrastill.data.indices import index_stats, resolve_indices

    specs = resolve_indices(indices, dataset["bands"], dataset.get("source"))
    if not specs:
        dataset.pop("indices", None)
        dataset.pop("index_stats", None)
        return
    train = list(index.loc[index["split"] == "train", "id"]) if len(index) else []
    ids = train or (list(index["id"]) if len(index) else [])
    mean, std = index_stats([out / "chips" / f"{i}.tif" for i in ids], dataset["bands"],
                            int(dataset["num_steps"]), specs)
    dataset["indices"] = specs
    dataset["index_stats"] = {"mean": mean, "std": std, "split": "train" if train else "all"}


def resplit(out: str | Path, block_size: float, ratios: Sequence[float], seed: int,
            command: str = "") -> dict:
    """Re-assign spatial-block splits of an existing dataset and recompute train statistics."""
    out = Path(out)
    ds_path, idx_path = out / "dataset.json", out / "index.parquet"
    if not ds_path.exists() or not idx_path.exists():
        raise BadInputError(f"{out}: not a chip dataset (no dataset.json / index.parquet)")
    dataset = json.loads(ds_path.read_text())
    index = gpd.read_parquet(idx_path)
    if len(index) == 0:
        raise BadInputError(f"{out}: the dataset has no chips to split")
    try:
        index["split"] = assign_splits(index, block_size, ratios, seed)
    except ValueError as exc:
        raise BadInputError(f"--ratios: {exc}") from exc
    train = list(index.loc[index["split"] == "train", "id"]) or list(index["id"])
    mean, std = band_stats([out / "chips" / f"{i}.tif" for i in train], len(dataset["bands"]))
    dataset["stats"] = {"mean": mean, "std": std,
                        "split": "train" if (index["split"] == "train").any() else "all"}
    if dataset.get("indices"):
        add_index_stats(out, dataset, index, [i["name"] for i in dataset["indices"]])
    for s in ("train", "val", "test"):
        dataset["counts"][s] = int((index["split"] == s).sum())
    dataset["split"] = {"block_size": block_size, "ratios": list(ratios), "seed": seed}
    if command:
        dataset["split_command"] = command
    write_index(out, index)
    write_text_atomic(ds_path, json.dumps(dataset, indent=2))
    return dataset


def observation_date(value: str) -> dt.date:
    """Parse an ISO date given on the command line."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadInputError(f"{value!r} is not an ISO date (expected YYYY-MM-DD)") from None

