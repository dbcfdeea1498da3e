"""Search-by-example routes: registered indexes, searches, heatmap tiles and exports.

Built from the settings like the job routes (:func:`terrastill.app.routes.build_router`): the
same bearer-token dependency sits on the router, the search area passes the jobs' AOI checks
(count, vertices, total km²), and the request body limit is the app's. An index is named by
its folder name under ``--indexes``; a search is kept in memory (the newest
:data:`MAX_SEARCHES`) and its tiles and exports are found by its id only.
"""


import io
import json
import math
import secrets
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, model_validator
from shapely.ops import unary_union

from terrastill.app.auth import token_dependency
from terrastill.app.routes import BBox, MultiPolygonGeometry, PolygonGeometry, parse_aois
from terrastill.app.settings import Settings
from terrastill.errors import BadInputError, NotFoundError

MAX_SEARCHES = 32
MAX_K = 1000
MAX_EXEMPLARS = 16
SEARCH_ID = r"^[0-9a-f]{32}$"
INDEX_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
Point = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]],
                  Field(min_length=2, max_length=2, description="[lon, lat]")]


class SearchBody(BaseModel):
    """A search by example over one registered index."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"index": "demo", "near": [[11.97, 45.30]], "aois": [[11.9, 45.25, 12.1, 45.36]],
         "k": 50}]})
    index: str = Field(pattern=INDEX_NAME, description="A name from GET /api/indexes.")
    near: list[Point] = Field([], max_length=MAX_EXEMPLARS,
                              description="Positive exemplars [lon, lat] (or give text).")
    text: str | None = Field(None, min_length=1, max_length=200,
                             description="A text query instead of exemplars, for an index of "
                                         "a text-aligned model's embeddings (`text` in "
                                         "GET /api/indexes).")
    negatives: list[Point] = Field([], max_length=MAX_EXEMPLARS,
                                   description="Negative exemplars [lon, lat].")
    aois: list[BBox] | PolygonGeometry | MultiPolygonGeometry = Field(
        description="Search area: bboxes or a GeoJSON (Multi)Polygon, within the job limits.")
    k: int = Field(100, ge=1, le=MAX_K)
    combine: Literal["mean", "and", "or"] = "mean"
    invert: bool = False
    rerank: bool = False

    @model_validator(mode="after")
    def _one_query(self) -> Self:
        if (self.text is None) == (not self.near):
            raise ValueError("give exemplars (near) or a text query (text), not both")
        if self.text is not None and (self.negatives or self.invert or self.combine != "mean"):
            raise ValueError("a text query takes no negatives, invert or combine")
        return self


class IndexInfo(BaseModel):
    name: str
    rows: int
    shards: int
    bbox: list[float] | None
    method: str
    distance: str
    dim: int
    model: str | None
    rerank: bool
    text: bool = Field(False, description="Searchable by text (a served VLM's student made "
                                          "these embeddings).")


@dataclass
class StoredSearch:
    """What a search id gives access to: the result and every candidate's distance."""

    id: str
    name: str  # the index's name
    index: Any  # SearchIndex
    result: Any  # SearchResult
    bounds: np.ndarray  # (n, 4) candidate footprint bounds
    geoms: np.ndarray  # candidate footprints (shapely)
    level: np.ndarray  # candidate heat 0..1 (1: most alike)


def index_folders(root: Path | None) -> dict[str, Path]:
    """Indexes under ``root`` (itself, or its sub-folders holding a manifest.json)."""
    if root is None or not root.is_dir():
        return {}
    found = {}
    if (root / "manifest.json").is_file():
        found[root.name] = root
    for p in sorted(root.iterdir()):
        if p.is_dir() and (p / "manifest.json").is_file():
            found[p.name] = p
    return found


def heat_colours() -> np.ndarray:
    """256 RGBA colours: transparent dark blue (far) → opaque yellow (alike)."""
    t = np.linspace(0, 1, 256)[:, None]
    far, mid, near = np.array([40, 30, 120]), np.array([220, 60, 60]), np.array([255, 235, 60])
    rgb = np.where(t < 0.5, far + (mid - far) * (t / 0.5), mid + (near - mid) * ((t - 0.5) / 0.5))
    alpha = 60 + 170 * t
    out = np.concatenate([rgb, alpha], axis=1).astype(np.uint8)
    out[0] = 0  # value 0: no patch
    return out


COLOURS = heat_colours()


def render_heat(s: StoredSearch, z: int, x: int, y: int) -> bytes:
    """A 256 px PNG tile: each candidate patch filled with its heat colour."""
    import shapely
    from PIL import Image
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import rasterize

    n = 2.0 ** z
    lon0, lon1 = x / n * 360 - 180, (x + 1) / n * 360 - 180
    lat1 = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))
    lat0 = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (y + 1) / n))))
    b = s.bounds
    hit = np.flatnonzero((b[:, 2] >= lon0) & (b[:, 0] <= lon1) & (b[:, 3] >= lat0)
                         & (b[:, 1] <= lat1))
    img = np.zeros((256, 256), np.uint8)
    if len(hit):
        def to_px(coords: np.ndarray) -> np.ndarray:
            px = ((coords[:, 0] + 180) / 360 * n - x) * 256
            lat = np.radians(np.clip(coords[:, 1], -85.05, 85.05))
            py = ((1 - np.log(np.tan(lat) + 1 / np.cos(lat)) / math.pi) / 2 * n - y) * 256
            return np.stack([px, py], axis=1)

        shapes = shapely.transform(s.geoms[hit], to_px)
        vals = (1 + np.round(s.level[hit] * 254)).astype(np.uint8)
        order = np.argsort(vals)  # the most alike drawn last, on top
        with warnings.catch_warnings():  # pixel coordinates: the identity transform is meant
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            img = rasterize(zip(shapes[order], vals[order], strict=True), out_shape=(256, 256),
                            fill=0, dtype="uint8", all_touched=True)
    buf = io.BytesIO()
    Image.fromarray(COLOURS[img], "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def feature_collection(s: StoredSearch) -> dict[str, Any]:
    """The top-k as GeoJSON (rank, distance and the index's text columns as properties)."""
    from shapely.geometry import mapping

    f = s.result.frame()
    keep = [c for c in ("rank", "distance", "code_distance", "id", "date", "label", "split",
                        "source", "shard", "lon", "lat") if c in f]
    feats = []
    for rec, geom in zip(f[keep].to_dict("records"), f["geometry"], strict=True):
        props = {k: (None if isinstance(v, float) and not math.isfinite(v) else
                     v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
        feats.append({"type": "Feature", "id": props["id"], "geometry": mapping(geom),
                      "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def build_search_router(settings: Settings) -> APIRouter:
    """The /api/indexes and /api/search routes, behind the same token as the job routes."""
    from terrastill.embeddings.index import open_index
    from terrastill.embeddings.search import Query, result_table, run_search
    from terrastill.embeddings.text_search import text_search, vlm_fits_index

    require_token = token_dependency(settings)

    router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], tags=["search"])
    searches: OrderedDict[str, StoredSearch] = OrderedDict()
    lock = threading.Lock()

    def get_index(name: str) -> Any:
        folder = index_folders(settings.indexes_dir).get(name)
        if folder is None:
            raise NotFoundError(f"no index {name!r} (see GET /api/indexes)")
        return open_index(folder)

    def get_search(search_id: str) -> StoredSearch:
        with lock:
            s = searches.get(search_id)
        if s is None:
            raise NotFoundError(f"no search {search_id} (searches are kept in memory: the "
                                f"newest {MAX_SEARCHES})")
        return s

    vlms: list[Any] | None = None
    encoders: dict[str, Any] = {}

    def text_model(idx: Any) -> Any:
        """The first served VLM whose student made this index's embeddings (or None)."""
        nonlocal vlms
        if vlms is None:  # loaded once, on first use
            from terrastill.embeddings.vlm import load_vlm

            vlms = [load_vlm(p) for p in settings.vlm_files]
        return next((v for v in vlms if vlm_fits_index(v, idx)), None)

    def text_encoder(vlm: Any) -> Any:
        from terrastill.embeddings.text import open_text_encoder

        name = vlm.text["encoder"]
        with lock:
            if name not in encoders:
                encoders[name] = open_text_encoder(name)
            return encoders[name]

    @router.get("/indexes", response_model=list[IndexInfo], summary="Search indexes offered")
    def list_indexes() -> list[dict[str, Any]]:
        out = []
        for name, folder in index_folders(settings.indexes_dir).items():
            try:
                idx = open_index(folder)
            except BadInputError:
                continue
            m = idx.manifest
            out.append({"name": name, "rows": int(m["rows"]), "shards": len(idx.shards),
                        "bbox": m.get("bbox"), "method": idx.method,
                        "distance": m["code"]["distance"], "dim": idx.dim,
                        "model": idx.model.get("name"), "rerank": m.get("rerank") is not None,
                        "text": m.get("rerank") is not None and text_model(idx) is not None})
        return out

    @router.post("/search", status_code=201, summary="Search an index by example")
    def search(request: Request, body: SearchBody) -> dict[str, Any]:
        area = unary_union(parse_aois(body.aois, settings))
        idx = get_index(body.index)
        if body.text is not None:
            vlm = text_model(idx)
            if vlm is None:
                raise BadInputError(f"index {body.index!r} cannot be searched by text: no "
                                    "served text-aligned model made its embeddings")
            res = text_search(idx, vlm, body.text, area, body.k, encoder=text_encoder(vlm))
        else:
            res = run_search(idx, Query(near=[(p[0], p[1]) for p in body.near],
                                        negatives=[(p[0], p[1]) for p in body.negatives],
                                        area=area, k=body.k, combine=body.combine,
                                        invert=body.invert, rerank=body.rerank),
                             keep_all=True)
        import shapely

        pool = res.pool
        d = np.asarray(res.all_distance, np.float64)
        lo, hi = float(d.min()), float(d.max())
        level = 1.0 - (d - lo) / (hi - lo) if hi > lo else np.ones_like(d)
        geoms = pool.frame["geometry"].to_numpy()
        sid = secrets.token_hex(16)
        stored = StoredSearch(sid, body.index, idx, res, shapely.bounds(geoms), geoms, level)
        with lock:
            searches[sid] = stored
            while len(searches) > MAX_SEARCHES:
                searches.popitem(last=False)
        base = f"{settings.public_url or str(request.base_url).rstrip('/')}/api/search/{sid}"
        return {"id": sid, "index": body.index, "k": body.k, "candidates": res.candidates,
                "shards_searched": res.shards_searched, "skipped_shards": len(res.skipped),
                "distance": idx.manifest["rerank"]["distance"] if res.reranked
                else idx.manifest["code"]["distance"],
                "heatmap": {"tiles": [f"{base}/tiles/{{z}}/{{x}}/{{y}}.png"],
                            "min_distance": lo, "max_distance": hi},
                "exports": {"geojson": f"{base}/export?format=geojson",
                            "parquet": f"{base}/export?format=parquet"},
                "results": feature_collection(stored)}

    SearchId = Annotated[str, PathParam(pattern=SEARCH_ID, description="32 hex digits.")]

    @router.get("/search/{search_id}", summary="A search's top-k as GeoJSON")
    def search_result(search_id: SearchId) -> dict[str, Any]:
        return feature_collection(get_search(search_id))

    @router.get("/search/{search_id}/tiles/{z}/{x}/{y}.png", response_class=Response,
                summary="Heatmap tile: every candidate patch coloured by its distance")
    def heat_tile(search_id: SearchId, z: Annotated[int, PathParam(ge=0, le=24)],
                  x: Annotated[int, PathParam(ge=0)],
                  y: Annotated[int, PathParam(ge=0)]) -> Response:
        if x >= 2 ** z or y >= 2 ** z:
            raise NotFoundError(f"tile {z}/{x}/{y} is outside the WebMercatorQuad grid")
        png = render_heat(get_search(search_id), z, x, y)
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/search/{search_id}/export", response_class=Response,
                summary="Download a search's top-k (GeoParquet or GeoJSON)")
    def export(search_id: SearchId,
               format: Literal["parquet", "geojson"] = "parquet") -> Response:
        s = get_search(search_id)
        if format == "geojson":
            return Response(json.dumps(feature_collection(s)),
                            media_type="application/geo+json",
                            headers={"Content-Disposition": "attachment; filename="
                                     f"terrastill-search-{search_id}.geojson"})
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(result_table(s.index, s.result, s.name), sink, compression="zstd")
        return Response(sink.getvalue().to_pybytes(), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": "attachment; filename="
                                 f"terrastill-search-{search_id}.parquet"})

    return router
