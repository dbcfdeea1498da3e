"""Embedding rasters over areas of interest: one COG (+ STAC item) per UTM zone.

The AOI is tiled with non-overlapping windows of the model's chip size on a lattice of
``chip_size × resolution`` metres (so the patch grid is the same for any AOI), each window
read through the prediction's chip path and encoded; a pixel is one encoder patch (or, with
``pixel``, one input pixel repeating its patch's vector). The vector is the patch's final
token averaged over the T' token steps. A patch with less than half of its pixels valid (every
band at every step) is NaN; so is every patch of a window without imagery. Rows of windows are
written as they finish, so memory holds one row of windows whatever the AOI's size.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from terrastill import __version__
from terrastill.data.chips import ReadOptions, items_over
from terrastill.data.grid import GridSpec, union_grid
from terrastill.embeddings.encoders import MIN_VALID, ViTEncoder, model_file_encoder
from terrastill.errors import BadInputError, NoImageryError, SpecMismatchError
from terrastill.inference.aoi import DEFAULT_MAX_AREA_KM2
from terrastill.inference.predict import WindowOutput

log = logging.getLogger(__name__)
QUANTIZE = (None, "int8")
INT8_NODATA = -128


@dataclass
class EmbedRequest:
    """One AOI embedding run; read defaults come from the model's input spec."""

    model: Path
    aois: list[BaseGeometry]
    date: dt.date
    out_dir: Path
    catalog: str | None = None
    max_cloud: float | None = None
    tolerance: int | None = None
    precision: str = "auto"
    device: str = "auto"
    batch_size: int = 8
    block_windows: int = 64
    read_ahead: int | None = None
    workers: int = 0
    scheduler: str | None = None
    max_area_km2: float = DEFAULT_MAX_AREA_KM2
    pixel: bool = False
    quantize: str | None = None


@dataclass
class EmbedResult:
    """Products (one COG and one STAC item per zone) and where the time went."""

    products: list[Path] = field(default_factory=list)
    items: list[Path] = field(default_factory=list)
    windows: int = 0
    skipped: int = 0
    patches: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def tile_grid(aoi_utm: BaseGeometry, epsg: int, size: int, res: float
              ) -> tuple[GridSpec, list[GridSpec]]:
    """The AOI's bounds snapped outward to a lattice of ``size``-px tiles, and those tiles
    (row-major): every patch of the output is one patch of one window."""
    step = size * res
    minx, miny, maxx, maxy = aoi_utm.bounds
    x0, y1 = math.floor(minx / step) * step, math.ceil(maxy / step) * step
    nx = max(1, math.ceil((maxx - x0) / step - 1e-9))
    ny = max(1, math.ceil((y1 - miny) / step - 1e-9))
    grid = GridSpec(epsg, Affine(res, 0.0, x0, 0.0, -res, y1), nx * size, ny * size)
    tiles = [GridSpec(epsg, Affine(res, 0.0, x0 + c * step, 0.0, -res, y1 - r * step), size,
                      size) for r in range(ny) for c in range(nx)]
    return grid, tiles


def patch_valid(valid: np.ndarray, patch: int) -> np.ndarray:
    """(h, w) patches with at least :data:`MIN_VALID` of their pixels valid."""
    h, w = valid.shape
    share = valid.reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3))
    return share >= MIN_VALID


def encode_windows(enc: ViTEncoder, outs: Sequence[WindowOutput], batch_size: int) -> None:
    """Encode read windows in place: ``values`` becomes the (D, h, w) patch vectors, NaN
    where a patch has too few valid pixels; ``tensor`` is dropped."""
    import torch

    todo = [o for o in outs if o.tensor is not None]
    for k in range(0, len(todo), batch_size):
        part = todo[k:k + batch_size]
        t0 = time.perf_counter()
        maps = enc.patch_maps_from_tensor(torch.stack([o.tensor for o in part]),
                                          [o.coords for o in part])
        per = (time.perf_counter() - t0) / len(part)
        for o, m in zip(part, maps, strict=True):
            ok = patch_valid(np.asarray(o.valid, bool), enc.patch)
            o.values = np.where(ok[None], m, np.nan).astype(np.float32)
            o.infer_s, o.tensor, o.rgb = per, None, None
            if not ok.any():
                o.reason = "no patch with enough valid pixels"


def embed_windows(model_path: str, grids: Sequence[GridSpec], date: dt.date,
                  items: Sequence[dict], read: ReadOptions, device: str, precision: str,
                  batch_size: int) -> list[WindowOutput]:
    """Read and encode a block of windows. Pure: runs the same on a Dask worker."""
    from terrastill.inference.predict import read_windows

    enc = model_file_encoder(Path(model_path), device, precision)
    outs = read_windows(grids, date, items, read, _spec(enc))
    encode_windows(enc, outs, batch_size)
    return outs


def _spec(enc: ViTEncoder) -> dict[str, Any]:
    assert enc.normalisation is not None
    return {"mean": enc.normalisation["mean"], "std": enc.normalisation["std"]}


def _run_blocks(client: Any, enc: ViTEncoder, req: EmbedRequest, blocks: list[list[GridSpec]],
                items: list[dict], read: ReadOptions, device: str, read_ahead: int
                ) -> Iterator[tuple[list[GridSpec], list[WindowOutput]]]:
    """(grids, encoded windows) block by block, in order: locally in full batches across
    blocks, or on Dask with a bounded queue."""
    from terrastill.inference.predict import _read_blocks, infer_across_blocks

    if client is None:
        yield from infer_across_blocks(
            _read_blocks(blocks, req.date, items, read, _spec(enc), read_ahead),
            lambda outs: encode_windows(enc, outs, req.batch_size), req.batch_size)
        return
    ahead: deque[tuple[list[GridSpec], Any]] = deque()
    limit = max(2, 2 * len(client.scheduler_info().get("workers", {})))
    path = str(Path(req.model).resolve())
    for grids in blocks:
        sub = items_over(items, union_grid(grids))
        ahead.append((grids, client.submit(embed_windows, path, grids, req.date, sub, read,
                                           device, req.precision, req.batch_size, pure=False)))
        if len(ahead) >= limit:
            g, f = ahead.popleft()
            yield g, f.result()
    while ahead:
        g, f = ahead.popleft()
        yield g, f.result()


class _ZoneProduct:
    """Row strips of one zone's embedding raster, written as each row of windows finishes."""

    def __init__(self, out_dir: Path, epsg: int, grid: GridSpec, enc: ViTEncoder, size: int,
                 pixel: bool):
        from terrastill.inference.cog import RowWriter

        self.patch, self.size, self.pixel = enc.patch, size, pixel
        self.grid = grid
        self.scale = 1 if pixel else enc.patch
        t = grid.transform
        self.out_grid = GridSpec(epsg, Affine(t.a * self.scale, 0.0, t.c, 0.0,
                                              t.e * self.scale, t.f),
                                 grid.width // self.scale, grid.height // self.scale)
        self.path = out_dir / f"embeddings_{epsg}.tif"
        self.tmp = out_dir / f".tmp-embeddings_{epsg}.float.tif"
        self.dim = enc.dim
        self.writer = RowWriter(self.tmp, self.out_grid, enc.dim, "float32", float("nan"),
                                [f"emb:{i:03d}" for i in range(enc.dim)])
        self.lo = np.full(enc.dim, np.inf)
        self.hi = np.full(enc.dim, -np.inf)
        self.row_top: float | None = None
        self.strip = self._empty()

    def _empty(self) -> np.ndarray:
        cells = self.size // self.patch
        return np.full((self.dim, cells, self.grid.width // self.patch), np.nan, np.float32)

    def _flush(self) -> None:
        if self.row_top is None:
            return
        row = int(round((self.grid.transform.f - self.row_top) / -self.grid.transform.e))
        s = self.strip
        with np.errstate(invalid="ignore"):
            self.lo = np.fmin(self.lo, np.nanmin(s, axis=(1, 2), initial=np.inf))
            self.hi = np.fmax(self.hi, np.nanmax(s, axis=(1, 2), initial=-np.inf))
        if self.pixel:
            for k in range(s.shape[1]):  # one patch row at a time: D × p × width
                up = np.repeat(np.repeat(s[:, k:k + 1], self.patch, 1), self.patch, 2)
                self.writer.write_rows(row + k * self.patch, up)
        else:
            self.writer.write_rows(row // self.patch, s)
        self.strip = self._empty()

    def add(self, g: GridSpec, emb: WindowOutput) -> None:
        if self.row_top is not None and g.transform.f != self.row_top:
            self._flush()
        self.row_top = g.transform.f
        if not emb.values.size:
            return
        col = int(round((g.transform.c - self.grid.transform.c) / g.transform.a)) // self.patch
        self.strip[:, :, col:col + emb.values.shape[2]] = emb.values

    def finish(self, quantize: str | None, tags: dict[str, str]) -> Path:
        from terrastill.inference.cog import publish_cog

        self._flush()
        self.writer.close()
        if quantize != "int8":
            return publish_cog(self.tmp, self.path, "average", tags)
        scale, offset = int8_params(self.lo, self.hi)
        tmp8 = self.tmp.with_name(self.tmp.name.replace(".float.", ".int8."))
        to_int8(self.tmp, tmp8, scale, offset)
        self.tmp.unlink(missing_ok=True)
        self.tmp = tmp8
        return publish_cog(tmp8, self.path, "nearest", tags)

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            for p in self.tmp.parent.glob(self.tmp.name.split(".float.")[0] + ".*"):
                p.unlink(missing_ok=True)


def int8_params(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band scale and offset mapping [lo, hi] onto [-127, 127] (value = q·scale + offset;
    -128 is nodata)."""
    lo = np.where(np.isfinite(lo), lo, 0.0)
    hi = np.where(np.isfinite(hi), hi, 0.0)
    scale = np.maximum((hi - lo) / 254.0, 1e-12)
    return scale, (hi + lo) / 2.0


def to_int8(src_path: Path, dst_path: Path, scale: np.ndarray, offset: np.ndarray,
            rows: int = 256) -> None:
    """Quantise a float32 raster strip by strip into an int8 one with per-band scale/offset."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        prof = {**src.profile, "dtype": "int8", "nodata": INT8_NODATA}
        with rasterio.open(dst_path, "w", **prof) as dst:
            for r0 in range(0, src.height, rows):
                win = Window(0, r0, src.width, min(rows, src.height - r0))
                v = src.read(window=win)
                q = np.round((v - offset[:, None, None]) / scale[:, None, None])
                q = np.where(np.isfinite(v), np.clip(q, -127, 127), INT8_NODATA)
                dst.write(q.astype(np.int8), window=win)
            dst.descriptions = src.descriptions
            dst.scales = [float(s) for s in scale]
            dst.offsets = [float(o) for o in offset]


def stac_item(cog: Path, grid: GridSpec, date: dt.date, props: dict[str, Any]) -> Path:
    """A STAC item (projection extension) describing ``cog``, written beside it."""
    import pystac
    from pystac.extensions.projection import ProjectionExtension

    from terrastill.atomic import write_text_atomic

    foot = box(*grid.lonlat_bounds())
    item = pystac.Item(id=cog.stem, geometry=mapping(foot), bbox=list(foot.bounds),
                       datetime=dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC),
                       properties=props)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.epsg = grid.epsg
    proj.shape = [grid.height, grid.width]
    proj.transform = list(grid.transform)[:6]
    proj.bbox = list(grid.bounds)
    item.add_asset("data", pystac.Asset(href=f"./{cog.name}",
                                        media_type=pystac.MediaType.COG,
                                        title="embeddings", roles=["data"]))
    path = cog.with_suffix(".json")
    write_text_atomic(path, json.dumps(item.to_dict(include_self_link=False), indent=2))
    return path


def _tags(enc: ViTEncoder, req: EmbedRequest, res: float, size: int) -> dict[str, str]:
    cell = res * (1 if req.pixel else enc.patch)
    return {
        "model": enc.model["name"], "model_sha256": str(enc.model.get("sha256")),
        "model_file": str(enc.model.get("file")), "date": req.date.isoformat(),
        "embedding_dim": str(enc.dim), "time_pooling": enc.pooling_note,
        "normalisation": json.dumps(enc.normalisation),
        "patch_grid": json.dumps({"patch_size_px": enc.patch, "input_resolution_m": res,
                                  "patch_m": res * enc.patch, "pixel_m": cell,
                                  "window_px": size, "pixel_per": "input pixel" if req.pixel
                                  else "patch"}),
        "quantization": "int8 per band: value = q * scale + offset, nodata -128"
        if req.quantize == "int8" else "none (float32, NaN nodata)",
        "software": f"terrastill {__version__}",
    }


def embed_aoi(req: EmbedRequest, progress: Callable[[int, int], None] | None = None
              ) -> EmbedResult:
    """Embed the request's AOIs with a model file's encoder; one COG + STAC item per zone."""
    from terrastill.catalog import Search
    from terrastill.inference.aoi import split_by_zone, validate_aois
    from terrastill.inference.predict import _blocks, _check_output, read_options
    from terrastill.scale import dask_client

    t_start = time.perf_counter()
    if req.quantize not in QUANTIZE:
        raise BadInputError(f"--quantize {req.quantize!r}: expected int8 (or none for float32)")
    if req.batch_size < 1 or req.block_windows < 1:
        raise BadInputError(f"--batch-size {req.batch_size} / --block-windows "
                            f"{req.block_windows}: expected positive whole numbers")
    aois = validate_aois(req.aois, req.max_area_km2)
    enc = model_file_encoder(req.model, req.device, req.precision)
    from terrastill.inference.predict import _load, model_catalog, resolve_device

    device = resolve_device(req.device)
    spec = _load(str(Path(req.model).resolve()), device).card.input_spec
    size = int(spec["chip_size"])
    if size % enc.patch:
        raise SpecMismatchError(f"{req.model}: chip size {size} is not a multiple of the "
                                f"patch size {enc.patch}")
    read = read_options(spec, req.max_cloud, req.tolerance)
    cat, collections, _location = model_catalog(spec, req.catalog, read)
    res = float(spec.get("resolution") or read.profile.resolution)
    zones = []
    for epsg, piece in split_by_zone(aois):
        grid, windows = tile_grid(piece, epsg, size, res)
        start, end = read.temporal.search_window(req.date)
        s = Search(collections, grid.lonlat_bounds(),
                   dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
                   dt.datetime.combine(end, dt.time.max, tzinfo=dt.UTC))
        zones.append((epsg, grid, windows, [it.to_dict(transform_hrefs=False)
                                            for it in cat.search(s)]))
    if not any(z[3] for z in zones):
        raise NoImageryError(f"no {read.profile.name.upper()} item within "
                             f"±{read.temporal.temporal_tolerance} days of the "
                             f"{read.temporal.num_steps} step date(s) ending {req.date}")
    _check_output(req.out_dir)
    for stale in req.out_dir.glob(".tmp-embeddings_*"):
        stale.unlink(missing_ok=True)
    read_ahead = req.read_ahead if req.read_ahead is not None else int(device != "cpu")
    result = EmbedResult(windows=sum(len(z[2]) for z in zones))
    timings = {"read": 0.0, "inference": 0.0, "write": 0.0}
    tags = _tags(enc, req, res, size)
    opened: list[_ZoneProduct] = []
    reasons: list[str] = []
    done = 0
    with dask_client(req.workers, req.scheduler) as client:
        try:
            for epsg, grid, windows, items in zones:
                zone = _ZoneProduct(req.out_dir, epsg, grid, enc, size, req.pixel)
                opened.append(zone)
                blocks = list(_blocks(windows, max(req.batch_size, req.block_windows)))
                for grids, embs in _run_blocks(client, enc, req, blocks, items, read, device,
                                               read_ahead):
                    t0 = time.perf_counter()
                    for g, e in zip(grids, embs, strict=True):
                        reasons += [e.reason] if e.reason else []
                        timings["read"] += e.read_s
                        timings["inference"] += e.infer_s
                        if e.values.size:
                            result.patches += int(np.isfinite(e.values[0]).sum())
                        zone.add(g, e)
                    timings["write"] += time.perf_counter() - t0
                    done += len(grids)
                    if progress:
                        progress(done, result.windows)
            if len(reasons) == result.windows:
                raise NoImageryError(f"no window could be embedded: {reasons[0]}")
            t0 = time.perf_counter()
            for (epsg, _grid, windows, _items), zone in zip(zones, opened, strict=True):
                cog = zone.finish(req.quantize, tags)
                result.products.append(cog)
                props = {"terrastill:" + k: v for k, v in tags.items()}
                props.update({"terrastill:windows": len(windows), "terrastill:epsg": epsg})
                result.items.append(stac_item(cog, zone.out_grid, req.date, props))
            timings["write"] += time.perf_counter() - t0
        except BaseException:
            for zone in opened:
                zone.abort()
            for p in result.products + result.items:
                p.unlink(missing_ok=True)
            raise
    result.skipped = len(reasons)
    timings["total"] = time.perf_counter() - t_start
    result.timings = {k: round(v, 4) for k, v in timings.items()}
    return result
