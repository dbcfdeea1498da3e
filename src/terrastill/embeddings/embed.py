"""Embedding tables from a chip folder or an image folder, one row per chip or image.

Chips: ``label`` is the index's ``label`` column when it has one (classification tasks),
else the chip's majority class (``label_counts``) named by ``dataset.json``; ``split`` comes
from ``index.parquet``. Images: ``label`` is the class folder, ``split`` a seeded stratified
60/20/20 split (train/val/test) when every image has a label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from terrastill import __version__
from terrastill.embeddings.encoders import POOLINGS, BandStats, Encoder, EncoderChoice, open_encoder
from terrastill.errors import BadInputError, SpecMismatchError

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
TABLE_NAME = "embeddings.parquet"


def _check_common(pooling: str, batch_size: int) -> None:
    if pooling not in POOLINGS:
        raise BadInputError(f"--pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise BadInputError(f"--batch-size {batch_size}: expected a positive whole number")


def _meta(enc: Encoder, pooling: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"model": enc.model, "dim": enc.dim,
            "pooling": "spectral statistics" if enc.name == "spectral" else pooling,
            "time_pooling": enc.pooling_note, "bands": enc.bands, "num_steps": enc.num_steps,
            "normalisation": enc.normalisation, "source": source,
            "software": f"terrastill {__version__}"}


def _coords(dates: Sequence[str | None], geom: Any) -> tuple[list[tuple[float, float]],
                                                             tuple[float, float]]:
    from terrastill.data.dataset import doy_year

    c = geom.centroid
    return [doy_year(d) if d else (0.0, 0.0) for d in dates], (float(c.y), float(c.x))


def _chip_label(row: Any, class_names: Sequence[str]) -> str | None:
    if "label" in row.index and row["label"] is not None:
        v = row["label"]
        return class_names[int(v)] if class_names and str(v).lstrip("-").isdigit() \
            and 0 <= int(v) < len(class_names) else str(v)
    counts = row.get("label_counts")
    if counts is None or not len(counts) or int(np.max(counts)) <= 0:
        return None
    k = int(np.argmax(counts))
    return class_names[k] if k < len(class_names) else str(k)


def embed_chips(choice: EncoderChoice, chips_dir: Path, out_dir: Path, pooling: str = "mean",
                batch_size: int = 32, progress: Progress | None = None) -> Path:
    """Embed every chip of a chip folder into ``out_dir/embeddings.parquet``."""
    import pandas as pd
    import rasterio
    import shapely

    from terrastill.data.dataset import read_dataset_meta, read_index
    from terrastill.data.normalize import split_time_bands
    from terrastill.embeddings.table import write_table

    _check_common(pooling, batch_size)
    chips_dir = Path(chips_dir)
    meta = read_dataset_meta(chips_dir)
    index = read_index(chips_dir).reset_index(drop=True)
    bands, steps, size = list(meta["bands"]), int(meta["num_steps"]), int(meta["chip_size"])
    enc = open_encoder(choice, bands, steps, size,
                       lambda: ([float(v) for v in meta["stats"]["mean"]],
                                [float(v) for v in meta["stats"]["std"]]))
    want = enc.model.get("source")
    if want and meta.get("source") and str(want).lower() != str(meta["source"]).lower():
        raise SpecMismatchError(f"{chips_dir}: source {meta['source']!r} but the model "
                                f"expects {want!r}")
    idx = enc.check(bands, steps, size, size, str(chips_dir))
    geoms = [shapely.from_wkb(g) if isinstance(g, bytes) else g for g in index["geometry"]]
    class_names = list(meta.get("class_names") or [])
    vectors = []
    for start in range(0, len(index), batch_size):
        part = index.iloc[start:start + batch_size]
        arrs, coords = [], []
        for i, row in part.iterrows():
            path = chips_dir / "chips" / f"{row['id']}.tif"
            try:
                with rasterio.open(path) as src:
                    a = split_time_bands(src.read().astype(np.float32), steps)
            except (rasterio.errors.RasterioError, ValueError) as exc:
                raise BadInputError(f"{path}: cannot read chip ({exc})") from exc
            arrs.append(a[:, idx])
            dates = row["step_dates"] if "step_dates" in row.index else [row.get("date")]
            coords.append(_coords(list(dates), geoms[i]))
        vectors.append(enc.vectors(np.stack(arrs), pooling, coords))
        if progress:
            progress(start + len(part), len(index))
    frame = pd.DataFrame({
        "id": index["id"].astype(str), "geometry": list(geoms),
        "date": index.get("date"),
        "label": [_chip_label(r, class_names) for _, r in index.iterrows()],
        "split": index["split"]})
    vecs = np.concatenate(vectors) if vectors else np.zeros((0, enc.dim), np.float32)
    source = {"kind": "chips", "path": str(chips_dir.resolve()), "sensor": meta.get("source"),
              "chip_size": size, "class_names": class_names,
              "label": "index label column" if "label" in index else "majority class"}
    return write_table(Path(out_dir) / TABLE_NAME, frame, vecs, _meta(enc, pooling, source))


def embed_images(choice: EncoderChoice, images: str, out_dir: Path,
                 image_bands: str | None = None, scale: float = 1.0, offset: float = 0.0,
                 pooling: str = "mean", batch_size: int = 32, split_seed: int = 0,
                 progress: Progress | None = None) -> Path:
    """Embed every image of a folder or glob into ``out_dir/embeddings.parquet``."""
    import pandas as pd
    import rasterio

    from terrastill.embeddings.images import (
        file_band_names,
        list_images,
        parse_band_names,
        read_image,
        stratified_split,
    )
    from terrastill.embeddings.table import write_table

    _check_common(pooling, batch_size)
    records = list_images(images)
    given = parse_band_names(image_bands)
    names = file_band_names(records[0].path, given)
    with rasterio.open(records[0].path) as src:
        size = src.height

    def stats() -> tuple[list[float], list[float]]:
        acc = BandStats()
        for r in records:
            acc.add(read_image(r, names, given, scale, offset).array)
        return acc.result()

    enc = open_encoder(choice, names, 1, size, stats)
    enc.check(names, 1, size, size, str(records[0].path))
    vectors, geoms, dates = [], [], []

    def batches() -> Iterator[list[tuple[Any, Any]]]:
        batch: list[tuple[Any, Any]] = []
        for r in records:
            img = read_image(r, enc.bands, given, scale, offset)
            enc.check(enc.bands, 1, *img.array.shape[-2:], str(r.path))
            if batch and batch[0][1].array.shape != img.array.shape:
                yield batch
                batch = []
            batch.append((r, img))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    done = 0
    for batch in batches():
        arr = np.stack([img.array[None] for _r, img in batch])
        coords = [_coords([img.date], img.footprint) for _r, img in batch]
        vectors.append(enc.vectors(arr, pooling, coords))
        geoms += [img.footprint for _r, img in batch]
        dates += [img.date for _r, img in batch]
        done += len(batch)
        if progress:
            progress(done, len(records))
    labels = [r.label for r in records]
    known = all(lab is not None for lab in labels)
    frame = pd.DataFrame({"id": [r.id for r in records], "geometry": geoms, "date": dates,
                          "label": labels,
                          "split": stratified_split(labels, seed=split_seed) if known
                          else [None] * len(records)})
    source = {"kind": "images", "path": str(images), "image_bands": names, "scale": scale,
              "offset": offset, "size": size,
              "split": {"method": "stratified", "fractions": [0.6, 0.2, 0.2],
                        "seed": split_seed} if known else None}
    log.info("embedded %d images: %s", len(records), json.dumps(enc.model, default=str))
    return write_table(Path(out_dir) / TABLE_NAME, frame, np.concatenate(vectors),
                       _meta(enc, pooling, source))
