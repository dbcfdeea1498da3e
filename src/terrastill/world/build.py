"""Build the whole demo world: truth, scenes, catalogue, observations and ``world.json``.

Layout of ``OUT`` (every path in the manifest is relative to ``OUT``)::

    world.json                       the manifest, written last (atomically)
    catalog.json                     STAC ItemCollection, asset hrefs relative to this file
    collections/<collection>.json    one STAC Collection per collection (for a STAC API)
    scenes/<tile>/<item id>/<key>.tif  one COG per band and the QA band (Fmask / SCL)
    truth/landcover_<epsg>.tif       int16 class ids, one raster per UTM zone (zone union grid)
    truth/flood_<epsg>.tif           int16 0 land / 1 water on the flood date
    truth/fine/<epsg>/<date>.tif     --fine-factor (s2): each pass's fine truth (world/fine.py;
                                     world.json "fine": factor, PSF, shifts, truth paths)
    observations/<task>.csv          lon,lat,date,label (label = class name)
    zones.parquet                    census-like blocks with truth-derived shares (world/zones)
    observations/<task>_with_bad_rows.csv   with --bad-rows

``world.json`` (version 1)::

    {"version": 1, "source": "hls|s2|s1", "seed": int,
     "bbox": [lon0, lat0, lon1, lat1], "epsg": [32632, 32633], "resolution": 30.0,
     "start": "YYYY-MM-DD", "end": "YYYY-MM-DD", "flood_date": "YYYY-MM-DD",
     "catalog": "catalog.json", "collections": {"<id>": "collections/<id>.json"},
     "tiles": [{"id", "epsg", "bounds" (UTM m), "lonlat_bounds", "shape", "transform"}],
     "overlap": px shared by neighbouring tiles, "items": int, "acquisitions": int,
     "tasks": {"landcover": {"classes": [...], "observations": path,
                             "truth": {"<epsg>": path}, "kind": "segmentation"},
               "flood": {... same ..., "date": flood_date, "end": recession (if any)}},
     "bad_rows": {"<task>": {"file": path, "rows": [{"row": 0-based data row,
                                                      "line": 1-based file line,
                                                      "reason": str}]}},   (with --bad-rows)
     "config": {every WorldConfig field except workers}}
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from affine import Affine

from terrastill.atomic import remove_stale_temps, write_text_atomic
from terrastill.errors import BadInputError, NotFoundError
from terrastill.world import catalogue, clouds, fine, observations, scenes, spectra
from terrastill.world.config import WorldConfig
from terrastill.world.grid import LocalFrame, ZoneGrid, layout, region_bbox
from terrastill.world.noise import fbm, value_noise
from terrastill.world.schedule import Pass, make_schedule
from terrastill.world.truth import FLOOD_CLASSES, LANDCOVER_CLASSES, Truth

__all__ = ["World", "WorldConfig", "build_world", "load_manifest", "prepare"]

log = logging.getLogger(__name__)
MANIFEST_VERSION = 1
Progress = Callable[[int, int, str], None]


@dataclass
class ZoneData:
    grid: ZoneGrid
    x: np.ndarray
    y: np.ndarray
    landcover: np.ndarray
    permanent_water: np.ndarray
    flood_zone: np.ndarray
    texture: np.ndarray


@dataclass
class World:
    """The in-memory world of a config: grids, truth, schedule (no files)."""

    config: WorldConfig
    frame: LocalFrame
    truth: Truth
    zones: list[ZoneData]
    passes: list[Pass]
    thresholds: dict[int, float]
    bbox: tuple[float, float, float, float]

    def masks(self, p: Pass, zone: ZoneData) -> clouds.PassMasks:
        return clouds.pass_masks(p, zone.grid, self.frame, zone.x, zone.y,
                                 self.thresholds[p.index])

    def water_on(self, zone: ZoneData, when) -> np.ndarray:
        fl = self.truth
        if fl.flood_date <= when and (fl.flood_end is None or when < fl.flood_end):
            return zone.permanent_water | zone.flood_zone
        return zone.permanent_water.copy()


def _texture(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Static brightness pattern around 1: within-field variation at ~250 m and ~50 m."""
    t = 1.0 + 0.07 * fbm(x, y, 0.25, seed + 909, octaves=2)
    t += 0.04 * value_noise(x, y, 0.05, seed + 910)
    return t.astype(np.float32)


def prepare(config: WorldConfig) -> World:
    """Everything about the world that is not a file: reproducible from the config alone."""
    frame = LocalFrame(config.center_lon, config.center_lat)
    truth = Truth(config.seed, config.flood, config.flood_end)
    grids = layout(config)
    zones = []
    for g in grids:
        x, y = frame.to_km(*g.lonlat)
        pw = truth.permanent_water(x, y)
        zones.append(ZoneData(
            grid=g, x=x, y=y, landcover=truth.landcover(x, y, water=pw), permanent_water=pw,
            flood_zone=truth.flood_zone(x, y, water=pw),
            texture=_texture(x, y, config.seed),
        ))
    bbox = region_bbox(grids)
    bx0, by0 = frame.to_km(np.array(bbox[0]), np.array(bbox[1]))
    bx1, by1 = frame.to_km(np.array(bbox[2]), np.array(bbox[3]))
    bbox_km = (float(bx0), float(by0), float(bx1), float(by1))
    passes = make_schedule(config, bbox_km)
    thresholds = {p.index: clouds.threshold(p, bbox_km) for p in passes}
    return World(config, frame, truth, zones, passes, thresholds, bbox)


# The world a forked worker process writes from (inherited from the parent, never pickled).
_JOB: tuple[World, Path] | None = None


def _init_job(world: World, out: Path) -> None:
    global _JOB
    _JOB = (world, out)


def _run_job(job: tuple[int, int]) -> tuple[int, int, list[dict], np.ndarray | None]:
    assert _JOB is not None
    world, out = _JOB
    pi, zi = job
    items, clear = _write_pass(world, world.passes[pi], world.zones[zi], out)
    return pi, zi, [catalogue.item_dict(it) for it in items], clear


def _pool_workers(requested: int, jobs: int) -> int:
    """Processes to use: forked workers only where fork is safe (no other threads running)."""
    if requested == 1 or jobs < 4 or "fork" not in mp.get_all_start_methods():
        return 1
    if threading.active_count() > 1:
        if requested:
            log.info("other threads are running: writing scenes in this process only")
        return 1
    n = requested or min(4, os.cpu_count() or 1)
    return max(1, min(n, jobs))


def _write_pass(world: World, p: Pass, zone: ZoneData, out: Path) -> tuple[list[pystac.Item],
                                                                            np.ndarray | None]:
    """Write every tile of pass ``p`` in ``zone``; return the items and the clear mask."""
    cfg = world.config
    truth = world.truth
    when = p.date
    masks = world.masks(p, zone)
    lc = zone.landcover
    veg = truth.vegetation(lc, zone.x, zone.y, when)
    water = world.water_on(zone, when)
    rng = np.random.default_rng([cfg.seed, p.index, zone.grid.zone])
    g = zone.grid
    # asset key -> (array at its resolution, resolution, dtype, nodata, overview resampling)
    layers: dict[str, tuple[np.ndarray, float, str, float, str]] = {}
    specs_extra: dict[str, dict[str, Any]] = {}
    if cfg.source == "hls":
        keys = scenes.HLS_S30_KEYS if p.product == "S30" else scenes.HLS_L30_KEYS
        bands = tuple(keys.values())
        refl = spectra.observe(spectra.surface(lc, veg, water, zone.texture, bands), masks, rng,
                               bands, haze=0.01 * (p.aerosol - 1))
        dn = scenes.hls_dn(refl, masks.nodata)
        for i, k in enumerate(keys):
            layers[k] = (dn[i], g.resolution, "int16", scenes.HLS_NODATA, "average")
            specs_extra[k] = {"band": keys[k], "scale": 0.0001, "offset": 0.0}
        qa = scenes.hls_fmask(masks, water, p.aerosol)
        layers["Fmask"] = (qa, g.resolution, "uint8", 255, "nearest")
        specs_extra["Fmask"] = {"band": None, "roles": ("cloud-mask",), "title": "Fmask"}
    elif cfg.source == "s2":
        bands10 = tuple(scenes.S2_10M_KEYS.values())
        bands20 = tuple(scenes.S2_20M_KEYS.values())
        allb = bands10 + bands20
        surf = (fine.render_pass(world, zone, p, allb, out) if cfg.fine_factor > 1
                else spectra.surface(lc, veg, water, zone.texture, allb))
        refl = spectra.observe(surf, masks, rng, allb)
        off = -0.1 if scenes.s2_offset(p.baseline) else 0.0
        dn10 = scenes.s2_dn(refl[: len(bands10)], masks.nodata, p.baseline)
        nod20 = scenes.any2(masks.nodata)
        dn20 = scenes.s2_dn(scenes.downsample2(refl[len(bands10):]), nod20, p.baseline)
        for i, k in enumerate(scenes.S2_10M_KEYS):
            layers[k] = (dn10[i], g.resolution, "uint16", 0, "average")
            specs_extra[k] = {"band": scenes.S2_10M_KEYS[k], "scale": 0.0001, "offset": off}
        for i, k in enumerate(scenes.S2_20M_KEYS):
            layers[k] = (dn20[i], g.resolution * 2, "uint16", 0, "average")
            specs_extra[k] = {"band": scenes.S2_20M_KEYS[k], "scale": 0.0001, "offset": off}
        scl = scenes.s2_scl(masks, lc, veg, water)[::2, ::2].copy()
        scl[nod20] = 0
        layers["SCL"] = (scl, g.resolution * 2, "uint8", 0, "nearest")
        specs_extra["SCL"] = {"band": None, "roles": ("cloud-mask",),
                              "title": "Scene classification"}
    else:
        sar = spectra.backscatter(lc, veg, water, zone.texture, rng)
        sar[:, masks.nodata] = scenes.S1_NODATA
        for i, k in enumerate(scenes.S1_KEYS):
            layers[k] = (sar[i], g.resolution, "float32", scenes.S1_NODATA, "average")
            specs_extra[k] = {"band": k}

    items = []
    any_written = False
    for tile in g.tiles:
        win = (slice(tile.row_off, tile.row_off + tile.size),
               slice(tile.col_off, tile.col_off + tile.size))
        if masks.nodata[win].all():
            continue
        any_written = True
        iid = catalogue.item_id(p, tile)
        hrefs: dict[str, str] = {}
        specs = []
        cover = None
        for key, (arr, res, dtype, nodata, resampling) in layers.items():
            f = round(res / g.resolution)
            sub = arr[tile.row_off // f:(tile.row_off + tile.size) // f,
                      tile.col_off // f:(tile.col_off + tile.size) // f]
            tr = tile.transform @ Affine.scale(f)
            rel = f"scenes/{tile.id}/{iid}/{key}.tif"
            scenes.write_cog(out / rel, np.ascontiguousarray(sub), tr, tile.epsg, nodata,
                             resampling, block=cfg.block_size)
            hrefs[key] = rel
            ex = specs_extra[key]
            specs.append(catalogue.AssetSpec(
                key=key, band=ex["band"], dtype=dtype, nodata=nodata, resolution=res,
                shape=sub.shape, transform=tuple(list(tr)[:6]), scale=ex.get("scale"),
                offset=ex.get("offset"), roles=ex.get("roles", ("data",)), title=ex.get("title"),
            ))
            if key == "Fmask":
                cover = scenes.cloud_cover_fmask(sub)
            elif key == "SCL":
                cover = scenes.cloud_cover_scl(sub)
        items.append(catalogue.make_item(p, tile, specs, hrefs, cover))
    clear = masks.clear if any_written else None
    return items, clear


def build_world(out: Path, config: WorldConfig | None = None,
                progress: Progress | None = None) -> dict:
    """Write the world described by ``config`` under ``out``; return the manifest."""
    config = config or WorldConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    for sub in ("scenes", "truth", "observations", "collections"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "world.json").unlink(missing_ok=True)

    world = prepare(config)
    total = len(world.passes) * len(world.zones) + 2
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    # truth rasters
    truth_paths: dict[str, dict[str, str]] = {"landcover": {}, "flood": {}}
    for z in world.zones:
        g = z.grid
        lc_rel = f"truth/landcover_{g.epsg}.tif"
        fl_rel = f"truth/flood_{g.epsg}.tif"
        scenes.write_cog(out / lc_rel, z.landcover.astype(np.int16), g.transform, g.epsg, -1,
                         "mode", tags={"classes": json.dumps(LANDCOVER_CLASSES)})
        post = (z.permanent_water | z.flood_zone).astype(np.int16)
        scenes.write_cog(out / fl_rel, post, g.transform, g.epsg, -1, "mode",
                         tags={"classes": json.dumps(FLOOD_CLASSES),
                               "date": config.flood.isoformat()})
        truth_paths["landcover"][str(g.epsg)] = lc_rel
        truth_paths["flood"][str(g.epsg)] = fl_rel
    tick("truth")
    from terrastill.world.zones import write_zones

    zones_rel = write_zones(out, world, truth_paths["landcover"])  # census-like blocks

    jobs = [(pi, zi) for pi in range(len(world.passes)) for zi in range(len(world.zones))]
    feats: list[dict] = []
    clear: list[dict[int, np.ndarray]] = [{} for _ in world.zones]
    workers = _pool_workers(config.workers, len(jobs))
    _init_job(world, out)
    try:
        if workers > 1:
            ctx = mp.get_context("fork")
            with ctx.Pool(workers, initializer=_init_job, initargs=(world, out)) as pool:
                results = pool.imap(_run_job, jobs, chunksize=1)
                for pi, zi, its, cl in results:
                    feats.extend(its)
                    if cl is not None:
                        clear[zi][pi] = cl
                    tick(f"{world.passes[pi].date} {world.zones[zi].grid.epsg}")
        else:
            for job in jobs:
                pi, zi, its, cl = _run_job(job)
                feats.extend(its)
                if cl is not None:
                    clear[zi][pi] = cl
                tick(f"{world.passes[pi].date} {world.zones[zi].grid.epsg}")
    finally:
        _init_job(None, out)  # type: ignore[arg-type]
    items = [pystac.Item.from_dict(d) for d in feats]

    # observations
    pass_dates = {p.index: p.date for p in world.passes}
    states = [observations.ZoneState(z.grid, z.landcover, z.permanent_water, z.flood_zone,
                                     clear[zi]) for zi, z in enumerate(world.zones)]
    tasks: dict[str, Any] = {}
    bad: dict[str, Any] = {}
    for task, classes in (("landcover", LANDCOVER_CLASSES), ("flood", FLOOD_CLASSES)):
        rows = observations.sample(task, config.observations, states, pass_dates, config.flood,
                                   config.flood_end, config.seed)
        rel = f"observations/{task}.csv"
        write_text_atomic(out / rel, observations.to_csv(rows))
        tasks[task] = {"classes": list(classes), "observations": rel,
                       "truth": truth_paths[task], "kind": "segmentation"}
        if config.bad_rows:
            text, rowsinfo = observations.with_bad_rows(rows, config.seed)
            brel = f"observations/{task}_with_bad_rows.csv"
            write_text_atomic(out / brel, text)
            bad[task] = {"file": brel, "rows": rowsinfo}
    tasks["flood"]["date"] = config.flood.isoformat()
    if config.flood_end is not None:
        tasks["flood"]["end"] = config.flood_end.isoformat()

    # catalogue + collections
    order = sorted(range(len(items)), key=lambda i: (items[i].datetime.isoformat(), items[i].id))
    items = [items[i] for i in order]
    fc = {"type": "FeatureCollection", "features": [feats[i] for i in order]}
    write_text_atomic(out / "catalog.json", json.dumps(fc, indent=1) + "\n")
    collections: dict[str, str] = {}
    for cid in sorted({it.collection_id for it in items}):
        mine = [it for it in items if it.collection_id == cid]
        rel = f"collections/{cid}.json"
        write_text_atomic(out / rel, json.dumps(catalogue.make_collection(cid, mine, config.seed),
                                                indent=1) + "\n")
        collections[cid] = rel
    tick("catalogue")

    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "source": config.source,
        "seed": config.seed,
        "bbox": [round(v, 7) for v in world.bbox],
        "epsg": [z.grid.epsg for z in world.zones],
        "resolution": config.resolution,
        "start": config.start.isoformat(),
        "end": config.end.isoformat(),
        "flood_date": config.flood.isoformat(),
        "catalog": "catalog.json",
        "collections": collections,
        "tiles": [{"id": t.id, "epsg": t.epsg, "bounds": list(t.bounds),
                   "lonlat_bounds": list(t.lonlat_bounds()), "shape": [t.size, t.size],
                   "transform": list(t.transform)[:6]}
                  for z in world.zones for t in z.grid.tiles],
        "overlap": config.overlap_px,
        "items": len(items),
        "acquisitions": len(world.passes),
        "tasks": tasks,
        "config": json.loads(config.model_dump_json(
            exclude={"workers"} | fine.config_exclude(config)
            | ({"block_size"} if config.block_size is None else set()))),
    }
    manifest["zones"] = zones_rel
    if config.bad_rows:
        manifest["bad_rows"] = bad
    if config.fine_factor > 1:
        manifest["fine"] = fine.manifest_section(world)
    write_text_atomic(out / "world.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(path: str | Path) -> dict:
    """Read ``world.json`` (or the folder holding it) with every path made absolute."""
    p = Path(path)
    if p.is_dir():
        p = p / "world.json"
    if not p.exists():
        raise NotFoundError(f"{p}: world manifest not found (run `terrastill world` first)")
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{p}: not a readable world manifest ({exc})") from exc
    if not isinstance(m, dict) or m.get("version") != MANIFEST_VERSION:
        raise BadInputError(f"{p}: not a version {MANIFEST_VERSION} world manifest")
    root = p.parent.resolve()

    def absolute(rel: str) -> str:
        return str(root / rel)

    m["catalog"] = absolute(m["catalog"])
    m["collections"] = {k: absolute(v) for k, v in m.get("collections", {}).items()}
    for t in m.get("tasks", {}).values():
        t["observations"] = absolute(t["observations"])
        t["truth"] = {k: absolute(v) for k, v in t["truth"].items()}
    for b in m.get("bad_rows", {}).values():
        b["file"] = absolute(b["file"])
    if "zones" in m:
        m["zones"] = absolute(m["zones"])
    m["root"] = str(root)
    return m
