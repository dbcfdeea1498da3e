"""Score chips against a dense reference raster (e.g. the demo world's truth), not sparse labels."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.transform import Affine

from terrastill.data.grid import GridSpec
from terrastill.errors import BadInputError, NotFoundError, SpecMismatchError


@dataclass
class Reference:
    """Reference rasters by EPSG code, and the dates they hold for (None: any date)."""

    rasters: dict[int, Path] = field(default_factory=dict)
    valid_from: dt.date | None = None
    valid_until: dt.date | None = None  # exclusive

    def holds_on(self, day: dt.date) -> bool:
        return (self.valid_from is None or day >= self.valid_from) and \
            (self.valid_until is None or day < self.valid_until)

    def describe(self) -> dict[str, Any]:
        return {"rasters": {str(k): str(v) for k, v in sorted(self.rasters.items())},
                "valid_from": self.valid_from and self.valid_from.isoformat(),
                "valid_until": self.valid_until and self.valid_until.isoformat()}


def _world_truth(path: Path, class_names: Sequence[str]) -> Reference:
    """The truth rasters of the world task whose class names are the dataset's; an event
    task's truth (the flood) holds from its date until the event ends."""
    manifest = json.loads(path.read_text())
    root = path.parent
    for task in (manifest.get("tasks") or {}).values():
        if list(task.get("classes") or []) == list(class_names) and task.get("truth"):
            rasters = {int(epsg): (root / p if not Path(p).is_absolute() else Path(p))
                       for epsg, p in task["truth"].items()}
            start = dt.date.fromisoformat(task["date"]) if task.get("date") else None
            end = (manifest.get("config") or {}).get("flood_end") if start else None
            return Reference(rasters, start, dt.date.fromisoformat(end) if end else None)
    names = ", ".join(f"{n} ({', '.join(t.get('classes') or [])})"
                      for n, t in (manifest.get("tasks") or {}).items())
    raise BadInputError(f"{path}: no task with the classes {', '.join(class_names)} "
                        f"(tasks: {names})")


def resolve_references(refs: Sequence[str | Path], class_names: Sequence[str]) -> Reference:
    """Rasters by EPSG from reference rasters (one per UTM zone) or a world (world.json or its
    folder: the truth of the task with the dataset's classes, with the dates it holds for)."""
    out: dict[int, Path] = {}
    window: tuple[dt.date | None, dt.date | None] = (None, None)
    for ref in refs:
        p = Path(ref)
        if p.is_dir() and (p / "world.json").is_file():
            p = p / "world.json"
        if not p.exists():
            raise NotFoundError(f"--reference {ref}: no such file")
        if p.suffix == ".json":
            world = _world_truth(p, class_names)
            found, window = world.rasters, (world.valid_from, world.valid_until)
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
    return Reference(out, *window)


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

    def reference(self, chip_id: str) -> np.ndarray:
        """The reference classes on chip ``chip_id``'s grid (-1 where it has none)."""
        from terrastill.data.read import read_asset

        grid = self.grids[str(chip_id)]
        return read_asset(str(self.refs[grid.epsg]), grid, fill=-1).astype(np.int64)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        label = torch.from_numpy(self.reference(str(item["id"])))
        label[~item["valid"]] = -1
        item["label"] = label
        return item


def last_image_dates(index: Any) -> list[dt.date]:
    """Per chip, the date of its latest acquisition (the last of ``step_dates``; the chip's
    own date where an index has no step dates): what its input shows last."""
    days = []
    for row in index.itertuples():
        raw = getattr(row, "step_dates", None)
        steps = [str(d)[:10] for d in ([] if raw is None else list(raw)) if d]
        days.append(dt.date.fromisoformat(max(steps) if steps else str(row.date)[:10]))
    return days


def apply_reference(dataset: Any, ref: Reference) -> int:
    """Make a :class:`ChipDataset` split score against ``ref``: chips whose input does not
    show the reference's state are left out (their count is returned), the rest get the
    reference as labels. A dated reference (an event's truth, such as a flood's extent) holds
    for a chip when the chip's **latest acquisition** falls within its dates: a chip dated
    after the event began but whose last image predates it shows no event, whatever its
    observation date says."""
    if dataset.task != "segmentation":
        raise BadInputError(f"--reference scores segmentation models; this one is for "
                            f"{dataset.task}")
    keep = [ref.holds_on(d) for d in last_image_dates(dataset.index)]
    if not any(keep):
        raise BadInputError(f"--reference holds from {ref.valid_from} until "
                            f"{ref.valid_until or 'the end'}: no chip of split "
                            f"{dataset.split!r} has its last image dated then")
    dataset.index = dataset.index[keep].reset_index(drop=True)
    dataset.ids = [str(i) for i in dataset.index["id"]]
    dataset.transform = ReferenceLabels(dataset.index, ref.rasters)
    return len(keep) - sum(keep)
