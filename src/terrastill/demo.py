"""The end-to-end demo on the offline world: world → chips → teacher → student → prediction."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrastill.atomic import write_text_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    """Sizes of each demo stage; ``quick`` shrinks everything for tests."""

    task: str = "flood"
    seed: int = 0
    teacher: str = "tiny"
    epochs: int = 15
    distill_epochs: int = 10
    student_layers: str = "auto"
    # the student's head: "auto" (sized with its depth, fresh weights) or "teacher" (copied)
    student_head: str = "auto"
    chip_size: int = 32
    observations: int = 400
    quick: bool = False
    progress: bool = True  # rich bars for every long stage (drawn on terminals only)
    world: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick_options(cls, **kw: Any) -> DemoOptions:
        world = {"tiles_x": 1, "tiles_y": 1, "tile_size": 96, "start": "2024-06-01",
                 "end": "2024-08-31", "revisit": 4, "flood_date": "2024-07-20"}
        # one distillation epoch cannot train a fresh head: the quick demo keeps the teacher's
        base = {"epochs": 2, "distill_epochs": 1, "chip_size": 16, "observations": 80,
                "student_layers": "1", "student_head": "teacher", "quick": True,
                "world": world}
        base.update(kw)
        return cls(**base)


def run_demo(out: Path, opts: DemoOptions,
             say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run (or resume) every stage under ``out``; returns the summary also written to
    ``out/summary.json``. A finished stage is skipped when the demo is run again."""
    from terrastill.data.build import ChipJob, make_chips
    from terrastill.data.chips import ReadOptions
    from terrastill.data.observations import ObservationOptions
    from terrastill.data.temporal import TemporalOptions
    from terrastill.inference.aoi import bbox_aoi
    from terrastill.inference.predict import PredictRequest, predict
    from terrastill.inference.truth import compare_to_reference
    from terrastill.models.modelfile import read_card
    from terrastill.world.build import build_world, load_manifest
    from terrastill.world.config import WorldConfig

    out = Path(out)
    summary: dict[str, Any] = {"task": opts.task}
    clock = _StageClock()

    # 1. world
    world_dir = out / "world"
    if not (world_dir / "world.json").exists():
        say("[1/5] building the offline demo world")
        build_world(world_dir, WorldConfig(seed=opts.seed, observations=opts.observations,
                                           **opts.world))
    world = load_manifest(world_dir)
    clock.lap("world")
    task = world["tasks"][opts.task]
    summary["world"] = str(world_dir / "world.json")

    # 2. chips
    chips_dir = out / "chips" / opts.task
    if not (chips_dir / "dataset.json").exists():
        say("[2/5] making chips from the field observations")
    t = TemporalOptions(num_steps=3, temporal_step=14 if not opts.quick else 8,
                        temporal_tolerance=7 if not opts.quick else 4, max_cloud=60)
    job = ChipJob(read=ReadOptions(source=world["source"], temporal=t),
                  chip_size=opts.chip_size, min_valid=0.3, label_window=3,
                  split_block=3000 if not opts.quick else 600, seed=opts.seed)
    with _bar(opts, "chips") as tick:
        res = make_chips(task["observations"], chips_dir, world["catalog"], job,
                         ObservationOptions(classes=task["classes"]), command="terrastill demo",
                         progress=lambda done, total: tick("chips", done, total))
    summary["chips"] = {"path": str(chips_dir), **res.dataset["counts"]}
    summary["rejected"] = rejected_summary(chips_dir / "rejected.csv")
    if summary["rejected"]["rows"]:
        top = "; ".join(f"{n} × {r}" for r, n in summary["rejected"]["reasons"][:3])
        say(f"      {summary['rejected']['rows']} observation row(s) not used ({top}) — "
            f"see {chips_dir / 'rejected.csv'}")
    clock.lap("chips")

    # 3. teacher
    from terrastill.training.train import TrainOptions, evaluate, fit

    teacher = out / "models" / "teacher" / "model.pt"
    if not teacher.exists():
        say(f"[3/5] fine-tuning the teacher ({opts.teacher}, {opts.epochs} epochs)")
        fit(chips_dir, teacher.parent, TrainOptions(model=opts.teacher, epochs=opts.epochs,
                                                    seed=opts.seed, name=f"{opts.task}-teacher",
                                                    progress=_show(opts)))
    from terrastill.inference.precision import calibrate_precision

    if not read_card(teacher).precision:
        calibrate_precision(teacher, chips_dir)
    summary["teacher"] = {"path": str(teacher), "test": evaluate(teacher, chips_dir, "test"),
                          "precision": read_card(teacher).precision,
                          "test_truth": dense_truth(teacher, chips_dir, world_dir)}
    clock.lap("teacher")

    # 4. student
    student = out / "models" / "student" / "model.pt"
    try:
        from terrastill.training.distill import DistillOptions, distill
    except ImportError:  # distillation not available in this build
        student = None
    if student is not None:
        if not student.exists():
            say(f"[4/5] distilling a student (layers {opts.student_layers}, head "
                f"{opts.student_head})")
            # the val labels are a few dozen pixels: the world's truth decides the depth
            distill(teacher, chips_dir, student.parent,
                    DistillOptions(layers=opts.student_layers, epochs=opts.distill_epochs,
                                   head=({"channels": "auto"} if opts.student_head == "auto"
                                         else {}),
                                   seed=opts.seed, progress=_show(opts),
                                   reference=[str(world_dir)]))
        if not read_card(student).precision:
            calibrate_precision(student, chips_dir)
        summary["student"] = {"path": str(student), "test": evaluate(student, chips_dir, "test"),
                              "precision": read_card(student).precision,
                              "test_truth": dense_truth(student, chips_dir, world_dir)}
        clock.lap("student")

    # the service lists model files at the top of one folder
    served = out / "serve-models"
    served.mkdir(parents=True, exist_ok=True)
    for key, path in (("teacher", teacher), ("student", student)):
        if path is not None and path.exists():
            target = served / f"{opts.task}-{key}.pt"
            target.unlink(missing_ok=True)
            shutil.copyfile(path, target)
    summary["serve_models"] = str(served)
    summary["catalog"] = world["catalog"]

    # 5. prediction over the whole world on a date after the flood, scored against truth
    model = student or teacher
    after = dt.date.fromisoformat(task.get("date") or world["end"])
    date = clearest_date(world["catalog"], after, min(after + dt.timedelta(days=30),
                                                      dt.date.fromisoformat(world["end"])), t)
    pred_dir = out / "predictions"
    say(f"[5/5] predicting {opts.task} on {date} (the clearest date after the flood) over the "
        f"world with the {'student' if student else 'teacher'}")
    bbox = world["bbox"]
    with _bar(opts, "windows") as tick:
        result = predict(PredictRequest(model=model, aois=[bbox_aoi(bbox)], date=date,
                                        out_dir=pred_dir, catalog=world["catalog"],
                                        name=f"{opts.task}_{date:%Y%m%d}",
                                        write_truecolor=True, composite=True,
                                        tolerance=t.temporal_step),
                         progress=lambda stage, frac: tick(stage, round(frac * 100), 100))
    truth_scores = {}
    if opts.task == "flood" or dt.date.fromisoformat(task.get("date", str(date))) <= date:
        for cog in result.classes:
            epsg = cog.name.split("_")[-2]
            if epsg in task["truth"]:
                truth_scores[epsg] = compare_to_reference(cog, Path(task["truth"][epsg]),
                                                          task["classes"])
    from terrastill.app.products import valid_share

    share = valid_share(result.classes, [dict(box_geojson(bbox))])
    if share is not None:
        say(f"      {share:.0%} of the world got a prediction (cloudy pixels filled from the "
            f"other acquisitions within ±{t.temporal_step} days; the rest had no clear view at "
            "every step)")
    summary["prediction"] = {"date": date.isoformat(), "valid_share": share,
                             "classes": [str(p) for p in result.classes],
                             "truecolor": [str(p) for p in result.truecolor],
                             "sidecar": str(result.sidecar), "timings": result.timings,
                             "vs_truth": truth_scores}
    clock.lap("prediction")
    summary["seconds"] = clock.seconds()
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


class _StageClock:
    """Wall-clock seconds per demo stage (a resumed stage counts the time it took to reuse)."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self._laps: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self._laps[stage] = round(now - self._last, 1)
        self._last = now

    def seconds(self) -> dict[str, float]:
        return {**self._laps, "total": round(time.perf_counter() - self._start, 1)}


def dense_truth(model: Path, chips_dir: Path, world_dir: Path) -> dict[str, Any]:
    """The model's test chips scored against the world's dense truth (every valid pixel, not
    the few labelled ones), with 95 % bootstrap intervals; recorded in the model card too, so
    the web map's model card shows it."""
    from terrastill.errors import BadInputError
    from terrastill.models.modelfile import load_model_file, save_model_file
    from terrastill.training.train import evaluate

    try:
        r = evaluate(model, chips_dir, "test", reference=[world_dir])
    except BadInputError as exc:  # e.g. no test chip dated while the truth holds
        return {"error": str(exc)}
    keep = ("miou", "accuracy", "iou_per_class", "n_pixels", "n_chips", "intervals",
            "reference")
    out = {k: r[k] for k in keep if k in r}
    loaded = load_model_file(model)
    loaded.card.metrics = {**(loaded.card.metrics or {}), "test_truth": out}
    save_model_file(model, loaded.model, loaded.card)
    return out


def _show(opts: DemoOptions) -> bool:
    from terrastill.progress import progress_enabled

    return opts.progress and progress_enabled()


@contextlib.contextmanager
def _bar(opts: DemoOptions, unit: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich bar per stage name while the demo works (nothing when not on a terminal)."""
    if not _show(opts):
        yield lambda _stage, _done, _total: None
        return
    from terrastill.progress import progress_bar

    with progress_bar(unit) as bar:
        tasks: dict[str, Any] = {}

        def tick(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield tick


def rejected_summary(path: Path) -> dict[str, Any]:
    """How many observation rows a chip run did not use, and the commonest reasons."""
    import pandas as pd

    if not path.exists():
        return {"rows": 0, "reasons": []}
    rej = pd.read_csv(path, usecols=["reason"])
    # the same reason differs only in counts, dates, steps and chip ids: group without them
    short = (rej["reason"].astype(str)
             .str.replace(r"\s*\([^)]*\)", "", regex=True)
             .str.replace(r"\d{4}-\d{2}-\d{2}", "the date", regex=True)
             .str.replace(r"\b(all|only) \d+ ", r"\1 ", regex=True)
             .str.replace(r"at step \d+", "at a step", regex=True)
             .str.replace(r"(chip|rows?) [\d_, ]+", r"\1 ", regex=True)
             .str.replace(r"\s+", " ", regex=True).str.strip())
    counts = short.value_counts()
    return {"rows": len(rej), "reasons": [[r, int(n)] for r, n in counts.items()]}


def clearest_date(catalog: str, first: dt.date, last: dt.date, temporal: Any) -> dt.date:
    """The date in [first, last] to predict on: the latest whose T steps are clear from the
    scenes' ``eo:cloud_cover`` (see :func:`terrastill.data.temporal.clearest_date`)."""
    from terrastill.catalog.local import LocalCatalog
    from terrastill.data.temporal import clearest_date as pick

    return pick(LocalCatalog(catalog).items, temporal, first, last) or last


def box_geojson(bbox: Any) -> dict[str, Any]:
    from shapely.geometry import box, mapping

    return dict(mapping(box(*bbox)))


def add_demo_job(out: Path, summary: dict[str, Any]) -> str:
    """List the demo's prediction in its server's job store as a finished job (once)."""
    from shapely.geometry import box, mapping

    from terrastill.app.seed import add_finished_job
    from terrastill.app.settings import Settings
    from terrastill.models.modelfile import read_card

    pred = summary["prediction"]
    model = "student" if "student" in summary else "teacher"
    name = f"{summary['task']}-{model}"
    card = read_card(summary[model]["path"])
    world = json.loads((Path(summary["catalog"]).parent / "world.json").read_text())
    aoi = box(*world["bbox"])
    request = {
        "aois": [mapping(aoi)], "bounds": list(aoi.bounds), "date": pred["date"],
        "model": name, "model_file": f"{name}.pt", "max_cloud": None, "tolerance": None,
        "classes": [{"id": i, "name": n, "color": c} for i, (n, c) in
                    enumerate(zip(card.class_names, card.class_colors, strict=True))],
    }
    products = {"classes": [Path(p) for p in pred["classes"]],
                "truecolor": [Path(p) for p in pred.get("truecolor", [])]}
    settings = Settings(models_dir=Path(summary["serve_models"]), data_dir=out / "serve")
    return add_finished_job(settings, request, products, key=str(pred["sidecar"]))
