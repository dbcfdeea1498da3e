"""Change-product routes: registered DeltaBit products, their int8 GeoTIFF tiles, saved models.

Built from the settings like the job routes: the same bearer-token dependency sits on the
router. A product is a folder holding ``change.json`` (``terrastill change --out``) under
``--changes`` (or that folder itself) and is named by its content id only; a tile is found
from the id and three integers, never from a path the client gives. The web map fits the
logistic regression in the browser; ``POST /api/changes/{id}/models`` stores it in the data
folder as a ``change-fit`` model file, so ``terrastill change-map`` can use it.
"""

import json
import secrets
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from terrastill.app.auth import token_dependency
from terrastill.app.settings import Settings
from terrastill.errors import BadInputError, NotFoundError

PRODUCT_ID = r"^[0-9a-f]{16}$"
MODEL_ID = r"^[0-9a-f]{16}$"
MAX_CLICKS = 2000
Finite = Annotated[float, Field(allow_inf_nan=False)]


def change_products(root: Path | None) -> dict[str, tuple[Path, dict[str, Any]]]:
    """id → (folder, change.json) of the products in ``root`` (or ``root`` itself)."""
    from terrastill.embeddings.change import read_change

    if root is None or not root.is_dir():
        return {}
    folders = [root] if (root / "change.json").is_file() else sorted(
        p for p in root.iterdir() if (p / "change.json").is_file())
    out = {}
    for f in folders:
        try:
            meta = read_change(f)
        except BadInputError:
            continue
        if "tiles" in meta:
            out[meta["id"]] = (f, meta)
    return out


class Click(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lon: Finite = Field(ge=-180, le=180)
    lat: Finite = Field(ge=-90, le=90)
    change: int = Field(ge=0, le=1)


class ModelBody(BaseModel):
    """A logistic regression over the product's int8 codes: logit = code_weights·q + b."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"code_weights": [0.1, -0.2, 0.0, 0.3, 0.0, 0.1, 0.0, 0.05], "code_intercept": -1.2,
         "clicks": [{"lon": 11.99, "lat": 45.30, "change": 1}]}]})
    code_weights: list[Finite] = Field(min_length=1, max_length=256)
    code_intercept: Finite
    clicks: list[Click] = Field([], max_length=MAX_CLICKS)
    note: str = Field("", max_length=200)


def build_change_router(settings: Settings) -> APIRouter:
    """The /api/changes routes, behind the same token as the job routes."""
    require_token = token_dependency(settings)

    router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], tags=["change"])
    ProductId = Annotated[str, PathParam(pattern=PRODUCT_ID)]

    def product(pid: str) -> tuple[Path, dict[str, Any]]:
        found = change_products(settings.changes_dir).get(pid)
        if found is None:
            raise NotFoundError(f"no change product {pid} (see GET /api/changes)")
        return found

    def models_dir(pid: str) -> Path:
        return settings.data_dir / "change-models" / pid

    @router.get("/changes", summary="Change products offered")
    def list_changes() -> list[dict[str, Any]]:
        out = []
        for pid, (folder, m) in change_products(settings.changes_dir).items():
            t = m["tiles"]
            out.append({
                "id": pid, "name": folder.name, "dates": m.get("dates"),
                "model": (m.get("model") or {}).get("name"), "bands": m["pca"]["k"],
                "explained_variance": m["pca"]["explained_variance"],
                "bounds": t["bounds"], "min_zoom": t["min_zoom"], "max_zoom": t["max_zoom"],
                "tile_size": t["size"], "scale": m["int8"]["scale"],
                "offset": m["int8"]["offset"], "nodata": m["int8"]["nodata"],
                "preview": {"lo": m["preview"]["lo"], "hi": m["preview"]["hi"]},
                "tiles": f"/api/changes/{pid}/tiles/{{z}}/{{x}}/{{y}}.tif"})
        return out

    @router.get("/changes/{pid}/tiles/{z}/{x}/{y}.tif", response_class=FileResponse,
                summary="One int8 GeoTIFF tile of a change product (204: no data there)",
                responses={204: {"description": "No tile: the product has no data here"}})
    def tile(pid: ProductId, z: Annotated[int, PathParam(ge=0, le=24)],
             x: Annotated[int, PathParam(ge=0)], y: Annotated[int, PathParam(ge=0)]
             ) -> Response:
        folder, _m = product(pid)
        path = folder / "tiles" / str(int(z)) / str(int(x)) / f"{int(y)}.tif"
        if not path.is_file():  # empty tile, as XYZ servers answer: no browser error line
            return Response(status_code=204, headers={"Cache-Control": "public, max-age=3600"})
        return FileResponse(path, media_type="image/tiff",
                            headers={"Cache-Control": "public, max-age=3600"})

    @router.post("/changes/{pid}/models", status_code=201,
                 summary="Save a click-trained change model (usable by change-map)")
    def save_model(pid: ProductId, body: ModelBody) -> dict[str, Any]:
        from terrastill.atomic import write_text_atomic
        from terrastill.embeddings.change_fit import MODEL_KIND

        _folder, m = product(pid)
        k = m["pca"]["k"]
        if len(body.code_weights) != k:
            raise BadInputError(f"code_weights: {len(body.code_weights)} values, the product "
                                f"has {k} bands")
        scale, offset = np.asarray(m["int8"]["scale"]), np.asarray(m["int8"]["offset"])
        cw = np.asarray(body.code_weights, float)
        w = cw / scale
        b = float(body.code_intercept - w @ offset)
        clicks = [c.model_dump() for c in body.clicks]
        n1 = sum(c["change"] for c in clicks)
        mid = secrets.token_hex(8)
        model = {"kind": MODEL_KIND, "version": 1, "product": pid,
                 "features": f"pca:{k} (decoded int8)", "weights": w.tolist(),
                 "intercept": b, "code_weights": cw.tolist(),
                 "code_intercept": float(body.code_intercept), "fitted_by": "web map",
                 "note": body.note, "clicks": clicks,
                 "labels": {"n": len(clicks), "change": n1, "no_change": len(clicks) - n1}}
        write_text_atomic(models_dir(pid) / f"{mid}.json", json.dumps(model, indent=1) + "\n")
        return {"id": mid, "product": pid, "labels": model["labels"],
                "url": f"/api/changes/{pid}/models/{mid}"}

    @router.get("/changes/{pid}/models/{mid}", summary="A saved change model")
    def get_model(pid: ProductId, mid: Annotated[str, PathParam(pattern=MODEL_ID)]
                  ) -> dict[str, Any]:
        product(pid)
        path = models_dir(pid) / f"{mid}.json"
        if not path.is_file():
            raise NotFoundError(f"no model {mid} for change product {pid}")
        return json.loads(path.read_text())

    return router
