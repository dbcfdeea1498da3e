"""Score chips against a dense reference raster (e.g. the demo world's truth), not sparse labels."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.transform import Affine

from terrastill.data.grid import GridSpec
from terrastill.errors import BadInputError, NotFoundError, SpecMismatchError


def _world_truth(path: Path, class_names: Sequence[str]) -> dict[int, Path]:
    """The truth rasters of the world task whose class names are the dataset's."""
    manifest = json.loads(path.read_text())
    root = path.parent
    for task in (manifest.get("tasks") or {}).values():
        if list(task.get("classes") or []) == list(class_names) and task.get("truth"):
            return {int(epsg): (root / p if not Path(p).is_absolute() else Path(p))
                    for epsg, p in task["truth"].items()}
    names = ", ".join(f"{n} ({', '.join(t.get('classes') or [])})"
                      for n, t in (manifest.get("tasks") or {}).items())
    raise BadInputError(f"{path}: no task with the classes {', '.join(class_names)} "
                        f"(tasks: {names})")


def resolve_references(refs: Sequence[str | Path], class_names: Sequence[str]
                       ) -> dict[int, Path]:
    """{EPSG: raster} from reference rasters (one per UTM zone) or a world (world.json or its
    folder: the truth of the task with the dataset's classes)."""
    out: dict[int, Path] = {}
    for ref in refs:
        p = Path(ref)
        if p.is_dir() and (p / "world.json").is_file():
            p = p / "world.json"
        if not p.exists():
            raise NotFoundError(f"--reference {ref}: no such file")
        if p.suffix == ".json":
            found = _world_truth(p, class_names)
        else:
            try:
                with rasterio.open(p) as src:
                    epsg = src.crs.to_epsg() if src.crs else None
            except rasterio.errors.RasterioIOError as exc:
                raise BadInputError(f"--reference {ref}: not a raster ({exc})") from None
            if epsg is None:
                raise BadInputError(f"--reference {ref}: no CRS (expected a projected EPSG "
                                    "CRS like the chips')")
            found = {epsg: p}
        for epsg, path in found.items():
            if epsg in out and out[epsg] != path:
                raise BadInputError(f"--reference: two rasters for EPSG:{epsg} ({out[epsg]}, "
                                    f"{path})")
            out[epsg] = path
    return out


def _check_grid(ref: Path, chip: GridSpec, chip_id: str) -> None:
    with rasterio.open(ref) as src:
        grid = GridSpec(src.crs.to_epsg(), src.transform, src.width, src.height)
    if abs(grid.transform.a - chip.transform.a) > 1e-9 or \
            abs(grid.transform.e - chip.transform.e) > 1e-9:
        raise SpecMismatchError(f"--reference {ref}: {grid.transform.a:g} m pixels, chip "
                                f"{chip_id} has {chip.transform.a:g} m (expected the same grid)")
    col = (chip.transform.c - grid.transform.c) / grid.transform.a
    row = (chip.transform.f - grid.transform.f) / grid.transform.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        raise SpecMismatchError(f"--reference {ref}: pixels offset by ({col % 1:.3f}, "
                                f"{row % 1:.3f}) of a pixel from chip {chip_id}'s (expected "
                                "the same grid)")


class ReferenceLabels:
    """A dataset transform that replaces each chip's labels with the reference on its grid
    (pixels the chip has no valid input for stay ignored, as for sparse labels)."""

    def __init__(self, index: Any, refs: dict[int, Path]) -> None:
        self.grids: dict[str, GridSpec] = {}
        self.refs = refs
        checked: set[int] = set()
        for row in index.itertuples():
            epsg = int(row.epsg)
            grid = GridSpec(epsg, Affine(*list(row.transform)[:6]), int(row.width),
                            int(row.height))
            if epsg not in refs:
                have = ", ".join(f"EPSG:{e}" for e in sorted(refs)) or "none"
                raise SpecMismatchError(f"--reference: chip {row.id} is in EPSG:{epsg}, no "
                                        f"reference raster is (references: {have})")
            if epsg not in checked:
                _check_grid(refs[epsg], grid, str(row.id))
                checked.add(epsg)
            self.grids[str(row.id)] = grid

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from terrastill.data.read import read_asset

        grid = self.grids[str(item["id"])]
        ref = read_asset(str(self.refs[grid.epsg]), grid, fill=-1).astype(np.int64)
        label = torch.from_numpy(ref)
        label[~item["valid"]] = -1
        item["label"] = label
        return item


def reference_transform(dataset: Any, refs: dict[int, Path]
                        ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The transform for a :class:`ChipDataset` split (its index rows name the grids)."""
    if dataset.task != "segmentation":
        raise BadInputError(f"--reference scores segmentation models; this one is for "
                            f"{dataset.task}")
    return ReferenceLabels(dataset.index, refs)
