#!/usr/bin/env python
"""SATtxt on real EuroSAT: multispectral teacher vs RGB baseline vs spectrally distilled RGB.

On a folder of labelled 13-band Sentinel-2 images (../shared/data/real/eurosat), with a seeded
stratified 50/50 train/test split, this script

1. picks the teacher: the better of a ``tiny`` MAE pretrained (``terrastill pretrain``'s code)
   on the train images' 13 bands and the model-free ``spectral`` encoder, by 5-fold linear
   probe accuracy *inside the train split* (the test split is never looked at);
2. (b) pretrains the same ``tiny`` ViT on the train images' RGB bands with the same MAE recipe;
3. (c) distils the teacher into an RGB ``tiny`` student (``terrastill spectral-distill``'s
   code) on the same train images, from scratch; and (c+) the same distillation started from
   (b)'s weights;
4. aligns each RGB encoder with the frozen MiniLM text encoder (``terrastill align``'s code)
   and measures, with 95 % bootstrap intervals over test images:
   zero-shot accuracy on 3 classes held out of alignment (aligned on the other 7; several
   distinct seeded triples, predictions pooled) and on all 10 (aligned on the train split),
   text→image mAP@k (k = min(100, test images)), image→text top-1 (nearest single caption),
   linear-probe accuracy (standardise + logistic regression, C by inner CV), and the paired
   difference (c) − (b) for each.

With ``--chips`` (e.g. the demo world's landcover chips) the same runs on a chip folder: the
labels are the chips' majority classes, the split the dataset's own (val counts as test), and
30 % of the classes (at least 2) are held out of alignment.

    python scripts/eval_sattxt.py --images ../shared/data/real/eurosat \\
        --out /work/evidence/issue18/eurosat
    python scripts/eval_sattxt.py --chips demo-out/chips/landcover --out /tmp/sattxt-lc
    python scripts/eval_sattxt.py --smoke --out /tmp/sattxt   # seconds: a few crops
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "eurosat"
RGB = ["red", "green", "blue"]
METRICS = ("zeroshot_heldout", "zeroshot_all", "t2i_map", "i2t_top1", "linear_probe")
LABELS = {"zeroshot_heldout": "zero-shot, 3 held-out classes",
          "zeroshot_all": "zero-shot, all 10 classes", "t2i_map": "text→image mAP@k",
          "i2t_top1": "image→text top-1", "linear_probe": "linear probe"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def subset(windows: Any, mask: np.ndarray, bands: list[str] | None = None) -> Any:
    """Windows restricted to rows ``mask`` (and ``bands``, by name)."""
    from terrastill.embeddings.sampling import Windows

    arr = windows.array[mask]
    spec = dict(windows.spec)
    if bands is not None:
        idx = [list(spec["bands"]).index(b) for b in bands]
        arr = arr[:, :, idx]
        spec["bands"] = list(bands)
    ids = [i for i, m in zip(windows.ids, mask, strict=True) if m]
    return Windows(np.ascontiguousarray(arr), ids, [""] * len(ids), spec, len(ids), {})


def vectors(encoder: Any, array: np.ndarray, bands: list[str], batch: int = 32) -> np.ndarray:
    idx = [bands.index(b) for b in encoder.bands]
    return np.concatenate([encoder.vectors(array[s:s + batch][:, :, idx])
                           for s in range(0, len(array), batch)])


def cv_probe(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """5-fold (or fewer) linear-probe accuracy inside the given rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(5, np.bincount(y).min()))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    return float(cross_val_score(model, x, y, cv=StratifiedKFold(
        folds, shuffle=True, random_state=seed)).mean())


def boot(values_fn: Any, n: int, rounds: int, seed: int) -> tuple[float, list[float], Any]:
    """Point value, 95 % percentile interval and the resample indices of a row metric."""
    idx = np.random.default_rng(seed).integers(0, n, size=(rounds, n))
    point = float(values_fn(np.arange(n)))
    samples = np.array([values_fn(i) for i in idx])
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return point, [float(lo), float(hi)], samples


def metric(point: float, ci: list[float], n: int) -> dict[str, Any]:
    return {"value": round(point, 4), "ci95": [round(ci[0], 4), round(ci[1], 4)], "n": int(n)}


def evaluate_rgb(name: str, enc_vecs: np.ndarray, labels: np.ndarray, classes: list[str],
                 train: np.ndarray, test: np.ndarray, heldout_sets: list[list[int]],
                 text: Any, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every metric of one RGB encoder; also the per-resample values for paired diffs."""
    import torch

    from terrastill.embeddings.align import AlignOptions, fit_alignment
    from terrastill.embeddings.captions import CaptionSpec
    from terrastill.embeddings.evaluate import linear_probe
    from terrastill.embeddings.vlm import class_prototypes
    from terrastill.embeddings.zeroshot import (
        image_to_text_top1,
        text_to_image_map,
        zero_shot,
    )

    spec = CaptionSpec()
    opts = AlignOptions(epochs=args.align_epochs, seed=args.seed)
    names = [classes[i] for i in labels]
    rows: dict[str, Any] = {"model": name}
    samples: dict[str, Any] = {}
    # zero-shot on held-out classes: align on 7, label the images of the other 3 (pooled)
    correct_h: list[bool] = []
    for held in heldout_sets:
        seen = [c for k, c in enumerate(classes) if k not in held]
        fit_labels = [n if (t and n in seen) else None for n, t in zip(names, train,
                                                                       strict=True)]
        fitted = fit_alignment(enc_vecs, fit_labels, text, spec, opts, seen)
        mask = np.isin(labels, held)
        with torch.no_grad():
            z = fitted.head(torch.as_tensor(enc_vecs[mask])).numpy()
        held_names = [classes[k] for k in held]
        pred, _ = zero_shot(z, held_names, spec, text)
        truth = np.array([held.index(k) for k in labels[mask]])
        correct_h += list(pred == truth)
    ch = np.array(correct_h)
    p, ci, s = boot(lambda i: ch[i].mean(), len(ch), args.rounds, args.seed)
    rows["zeroshot_heldout"], samples["zeroshot_heldout"] = metric(p, ci, len(ch)), None
    # all 10: align on the train split, test on the test split
    fit_labels = [n if t else None for n, t in zip(names, train, strict=True)]
    fitted = fit_alignment(enc_vecs, fit_labels, text, spec, opts, classes)
    with torch.no_grad():
        z = fitted.head(torch.as_tensor(enc_vecs[test])).numpy()
    y = labels[test]
    pred, _ = zero_shot(z, classes, spec, text)
    ok = pred == y
    idx_fn = {"zeroshot_all": lambda i: ok[i].mean()}
    protos = class_prototypes(text, spec.class_captions(classes))
    k = min(100, int(test.sum()))
    idx_fn["t2i_map"] = lambda i: text_to_image_map(z[i], y[i], protos, min(k, len(i)))
    caps = spec.class_captions(classes)
    cap_vecs = text.encode([c for cl in classes for c in caps[cl]])
    cap_cls = np.array([j for j, cl in enumerate(classes) for _ in caps[cl]])
    top1 = image_to_text_top1(z, y, cap_vecs, cap_cls)
    idx_fn["i2t_top1"] = lambda i: top1[i].mean()
    lp_pred, _c = linear_probe(enc_vecs[train], labels[train], enc_vecs[test], args.seed)
    lp_ok = lp_pred == y
    idx_fn["linear_probe"] = lambda i: lp_ok[i].mean()
    for key, fn in idx_fn.items():
        p, ci, s = boot(fn, len(y), args.rounds, args.seed)
        rows[key] = metric(p, ci, len(y))
        samples[key] = s
    rows["t2i_map"]["k"] = k
    rows["temperature"] = fitted.training["temperature"]
    # held-out zero-shot has its own rows: pair it by the pooled image order
    samples["zeroshot_heldout_rows"] = ch
    return rows, samples


def paired(a: dict[str, Any], b: dict[str, Any], row_a: dict[str, Any],
           row_b: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """(a) − (b) per metric: point and 95 % interval over shared (paired) resamples."""
    out = {}
    for key in METRICS:
        if key == "zeroshot_heldout":
            ra, rb = a["zeroshot_heldout_rows"], b["zeroshot_heldout_rows"]
            _p, ci, _ = boot(lambda i, ra=ra, rb=rb: ra[i].mean() - rb[i].mean(), len(ra),
                             args.rounds, args.seed)
        else:
            lo, hi = np.nanpercentile(a[key] - b[key], [2.5, 97.5])
            ci = [float(lo), float(hi)]
        out[key] = {"value": round(row_a[key]["value"] - row_b[key]["value"], 4),
                    "ci95": [round(ci[0], 4), round(ci[1], 4)]}
    return out


def image_data(args: argparse.Namespace) -> tuple[Any, list[str | None], np.ndarray]:
    """EuroSAT-layout images: windows, class-folder labels, a stratified 50/50 split."""
    from terrastill.embeddings.images import list_images, stratified_split
    from terrastill.embeddings.sampling import image_windows

    windows = image_windows(args.images, None, "eurosat", 0.0001)
    records = list_images(args.images)
    labels_txt = [r.label for r in records]
    assert [r.id for r in records] == windows.ids
    if args.smoke:  # a few images per class, 16 px crops
        keep = np.zeros(len(records), bool)
        for c in sorted(set(labels_txt)):
            keep[[i for i, v in enumerate(labels_txt) if v == c][:args.per_class]] = True
        windows = subset(windows, keep)
        windows.array = np.ascontiguousarray(windows.array[..., 24:40, 24:40])
        windows.spec["chip_size"] = 16
        labels_txt = [v for v, k in zip(labels_txt, keep, strict=True) if k]
    split = np.array(stratified_split(labels_txt, (0.5, 0.0, 0.5), seed=args.seed))
    return windows, list(labels_txt), split


def chip_data(chips: Path) -> tuple[Any, list[str | None], np.ndarray]:
    """A chip folder: windows, each chip's label (index column or majority class) and the
    dataset's own split (val and test both count as test here)."""
    from terrastill.data.dataset import read_dataset_meta, read_index
    from terrastill.embeddings.embed import _chip_label
    from terrastill.embeddings.spectral_distill import chip_windows

    meta = read_dataset_meta(chips)
    index = read_index(chips).reset_index(drop=True)
    names = list(meta.get("class_names") or [])
    labels = [_chip_label(r, names) for _, r in index.iterrows()]
    return chip_windows(chips), labels, np.array([str(v) for v in index["split"]])


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from terrastill.embeddings.encoders import SpectralEncoder, model_file_encoder
    from terrastill.embeddings.evaluate import linear_probe
    from terrastill.embeddings.pretrain import PretrainOptions, pretrain
    from terrastill.embeddings.spectral_distill import SpectralDistillOptions, spectral_distill
    from terrastill.embeddings.text import open_text_encoder
    from terrastill.embeddings.vlm import read_student

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out: Path = args.out
    work = out / "models"
    work.mkdir(parents=True, exist_ok=True)
    if args.chips:
        windows, labels_txt, split = chip_data(args.chips)
    else:
        windows, labels_txt, split = image_data(args)
    classes = sorted({v for v in labels_txt if v is not None})
    bands = list(windows.spec["bands"])
    train_w = subset(windows, split == "train")
    lab = np.array([v is not None for v in labels_txt])
    arr = windows.array[lab]  # the labelled rows: every evaluation
    labels = np.array([classes.index(v) for v in labels_txt if v is not None])
    train, test = split[lab] == "train", split[lab] != "train"
    log(f"{len(windows.ids)} windows ({lab.sum()} labelled), {len(classes)} classes, "
        f"pretraining on {len(train_w.ids)}; probe/align on {train.sum()}, test {test.sum()}; "
        f"{len(bands)} bands × T={windows.array.shape[1]}, {windows.array.shape[-1]} px")
    def reused(folder: Path) -> dict[str, Any] | None:
        """--reuse: the training record of a model already in ``folder`` (None: train)."""
        from terrastill.models.modelfile import read_card

        if not (args.reuse and (folder / "model.pt").is_file()):
            return None
        log(f"reusing {folder / 'model.pt'}")
        return {"seconds": None, **read_card(folder / "model.pt").training}

    mae_opts = dict(model="tiny", epochs=args.mae_epochs, batch_size=16, seed=args.seed,
                    device="cpu")

    # 1. teacher candidates (all bands), chosen by CV probe inside the train split
    mae_name = f"mae-{len(bands)}"
    log(f"pretraining the {len(bands)}-band MAE teacher")
    if not reused(work / "teacher-mae"):
        pretrain(train_w, work / "teacher-mae",
                 PretrainOptions(**mae_opts, name=f"tiny-{mae_name}"))
    mae_enc = model_file_encoder(work / "teacher-mae" / "model.pt", "cpu", "fp32")
    cands = {mae_name: vectors(mae_enc, arr, bands),
             "spectral": SpectralEncoder(bands).vectors(arr)}
    cv = {k: cv_probe(v[train], labels[train], args.seed) for k, v in cands.items()}
    choice = max(cv, key=cv.get)
    teacher_ref = str(work / "teacher-mae" / "model.pt") if choice == mae_name else "spectral"
    log(f"teacher CV probe on train: {cv} → {choice}")

    # 2. (b) RGB MAE baseline; 3. (c) distilled student(s)
    log("pretraining the RGB MAE baseline")
    if not reused(work / "rgb-mae"):
        pretrain(subset(windows, train, RGB), work / "rgb-mae",
                 PretrainOptions(**mae_opts, name="tiny-mae-rgb"))
    dist = dict(rgb=tuple(RGB), model="tiny", loss=args.loss, epochs=args.distill_epochs,
                batch_size=16, seed=args.seed, device="cpu")
    log(f"spectral distillation from scratch ({args.distill_epochs} epochs)")
    r_c = reused(work / "rgb-distilled") or spectral_distill(
        teacher_ref, train_w, work / "rgb-distilled",
        SpectralDistillOptions(**dist, name="tiny-rgb-distilled"))
    students = {"rgb-baseline": work / "rgb-mae" / "model.pt",
                "rgb-distilled": work / "rgb-distilled" / "model.pt"}
    distill_info = {"rgb-distilled": {"loss_curve": r_c["loss_curve"],
                                      "seconds": r_c["seconds"]}}
    if not args.smoke:
        log("spectral distillation started from the RGB MAE")
        r_c2 = reused(work / "rgb-mae-distilled") or spectral_distill(
            teacher_ref, train_w, work / "rgb-mae-distilled",
            SpectralDistillOptions(**dist, weights=str(students["rgb-baseline"]),
                                   name="tiny-rgb-mae-distilled"))
        students["rgb-mae+distilled"] = work / "rgb-mae-distilled" / "model.pt"
        distill_info["rgb-mae+distilled"] = {"loss_curve": r_c2["loss_curve"],
                                             "seconds": r_c2["seconds"]}

    # 4. evaluation
    text = open_text_encoder(None, args.cache_dir)
    rng = np.random.default_rng(args.seed)
    n_held = max(2, round(0.3 * len(classes)))
    combos = list(itertools.combinations(range(len(classes)), n_held))
    pick = rng.choice(len(combos), min(args.heldout_sets, len(combos)), replace=False)
    heldout = [list(combos[i]) for i in sorted(pick)]  # distinct sets
    t_vecs = cands[choice]
    lp_pred, _c = linear_probe(t_vecs[train], labels[train], t_vecs[test], args.seed)
    lp_ok = lp_pred == labels[test]
    p, ci, _ = boot(lambda i: lp_ok[i].mean(), len(lp_ok), args.rounds, args.seed)
    rows = [{"model": "teacher", "encoder": choice, "bands": len(bands),
             "linear_probe": metric(p, ci, len(lp_ok))}]
    samples = {}
    for name, path in students.items():
        log(f"aligning and evaluating {name}")
        _card, _state, enc = read_student(path)
        v = vectors(enc, arr, bands)
        row, samples[name] = evaluate_rgb(name, v, labels, classes, train, test, heldout,
                                          text, args)
        row["bands"] = 3
        rows.append(row)
    by = {r["model"]: r for r in rows}
    diffs = {f"{c} − rgb-baseline": paired(samples[c], samples["rgb-baseline"], by[c],
                                           by["rgb-baseline"], args)
             for c in students if c != "rgb-baseline"}
    c, b, a = by["rgb-distilled"], by["rgb-baseline"], by["teacher"]
    claims = {
        "c_ge_b_every_metric": all(c[m]["value"] >= b[m]["value"] for m in METRICS),
        "c_ge_b_by_metric": {m: c[m]["value"] >= b[m]["value"] for m in METRICS},
        "c_probe_within_teacher_ci": a["linear_probe"]["ci95"][0]
        <= c["linear_probe"]["value"] <= a["linear_probe"]["ci95"][1],
        "c_minus_a_probe": round(c["linear_probe"]["value"] - a["linear_probe"]["value"], 4),
    }
    summary = {
        "data": str(args.chips or args.images), "windows": len(windows.ids),
        "pretraining_windows": len(train_w.ids), "labelled": int(len(labels)),
        "train": int(train.sum()),
        "test": int(test.sum()), "classes": classes,
        "heldout_sets": [[classes[k] for k in h] for h in heldout],
        "teacher_choice": {"cv_probe_train": {k: round(v, 4) for k, v in cv.items()},
                           "chosen": choice},
        "settings": {"mae_epochs": args.mae_epochs, "distill_epochs": args.distill_epochs,
                     "align_epochs": args.align_epochs, "loss": args.loss,
                     "bootstrap_rounds": args.rounds, "seed": args.seed, "smoke": args.smoke,
                     "reuse": args.reuse,
                     "student": "tiny (96-d, 6 blocks, patch 4)", "text_encoder":
                         "all-MiniLM-L6-v2 (mean-pooled tokens)"},
        "distillation": distill_info, "rows": rows, "paired_differences": diffs,
        "claims": claims, "machine": machine(args.threads),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    summary["table"] = table(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(summary["table"])
    return summary


def machine(threads: int) -> str:
    import os

    from terrastill.bench.hardware import cpu_model

    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores visible, torch threads {threads}"


def _fmt(m: dict[str, Any] | None) -> str:
    if not m:
        return "—"
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def table(s: dict[str, Any]) -> str:
    k = next((r["t2i_map"]["k"] for r in s["rows"] if "t2i_map" in r), "k")
    n_held, n_all = len(s["heldout_sets"][0]), len(s["classes"])
    head = ["model", "bands"] + [LABELS[m].replace("@k", f"@{k}").replace(
        "3 held-out", f"{n_held} held-out").replace("all 10", f"all {n_all}") for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in s["rows"]:
        name = r["model"] + (f" ({r['encoder']})" if "encoder" in r else "")
        lines.append("| " + " | ".join([name, str(r["bands"])] + [_fmt(r.get(m))
                                                                  for m in METRICS]) + " |")
    for name, d in s["paired_differences"].items():
        cells = []
        for m in METRICS:
            v = d[m]
            cells.append(f"{v['value']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]")
        lines.append("| Δ " + name + " | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=REAL)
    ap.add_argument("--chips", type=Path, default=None,
                    help="a labelled chip folder instead (e.g. the demo world's landcover)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mae-epochs", type=int, default=200)
    ap.add_argument("--distill-epochs", type=int, default=40)
    ap.add_argument("--align-epochs", type=int, default=300)
    ap.add_argument("--loss", default="mse")
    ap.add_argument("--heldout-sets", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-class", type=int, default=4, help="--smoke: images per class")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="a few 16 px crops, seconds")
    ap.add_argument("--reuse", action="store_true",
                    help="keep models already in OUT/models (re-run the evaluation only)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.mae_epochs, args.distill_epochs, args.align_epochs = 1, 1, 30
        args.heldout_sets, args.rounds = 1, 50
        args.cache_dir = args.cache_dir or args.out / "text-cache"
    if not args.chips and not args.images.is_dir():
        ap.error(f"{args.images}: no such image folder")
    summary = run(args)
    print(summary["table"])
    print(json.dumps(summary["claims"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
