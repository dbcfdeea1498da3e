#!/usr/bin/env python
"""Change detection from embedding differences on the demo world, against its dense truth.

A demo world is built (``terrastill world``), a tiny encoder pretrained on it
(``terrastill pretrain``) and the world embedded just before and just after the flood
(``terrastill embed --bbox``); ``terrastill change`` makes the PCA-8 int8 product of the zone
with the most newly flooded land. Truth on the embedding grid: a pixel (one encoder patch)
changed when at least half of it is land that the flood covers (flood truth minus permanent
water). Clicks are sampled from that truth, half change and half no change, for 10, 20, 50
and 100 clicks (``--repeats`` draws each); a logistic regression (C by inner 5-fold CV on F1,
as ``change-fit``) is fitted on the clicks and scored on every valid pixel: F1 against the
dense truth, mean ± std over the draws. Features: PCA-3, PCA-8 and the full difference, each
from float embeddings and from int8 ones (the product's int8 codes for PCA; the embed
command's per-band int8 quantisation for the full difference), and as a baseline the
difference of patch-mean reflectance (every band of every step) read through the same chip
path. Finally ``change-fit --report`` runs the nested CV table on 100 clicks.

    python scripts/eval_change.py --out /work/evidence/issue17
    python scripts/eval_change.py --smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CLICKS = (10, 20, 50, 100)
TOL = 5  # ± days around an embedding date (one time step: clouds mask less)


def cli(*args: Any) -> str:
    """Run a terrastill command in-process; its output, or SystemExit on failure."""
    from typer.testing import CliRunner

    from terrastill.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    if res.exit_code != 0:
        raise SystemExit(f"terrastill {args[0]} failed ({res.exit_code}):\n{res.output}")
    return res.output


def world_args(smoke: bool) -> list[str]:
    if smoke:
        return ["--seed", "3", "--tiles-x", "2", "--tiles-y", "1", "--tile-size", "64",
                "--start", "2024-05-01", "--end", "2024-07-15", "--revisit", "3",
                "--flood-date", "2024-06-20", "--observations", "20"]
    return ["--seed", "0", "--tiles-x", "2", "--tiles-y", "2", "--tile-size", "128",
            "--start", "2024-05-01", "--end", "2024-07-31", "--revisit", "3",
            "--flood-date", "2024-07-01", "--observations", "20"]


def prepare(work: Path, smoke: bool) -> dict[str, Any]:
    """World, encoder, before/after embeddings (float and int8); returns their paths."""
    from terrastill.world.build import load_manifest

    world = work / "world"
    if not (world / "world.json").exists():
        cli("world", world, *world_args(smoke))
    m = load_manifest(world)
    model = work / "encoder" / "model.pt"
    if not model.exists():
        minx, miny, maxx, maxy = m["bbox"]
        cli("pretrain", "--catalog", m["catalog"], "--bbox", minx, miny, maxx, maxy,
            "--start", m["start"], "--end", m["end"], "--num-steps", "1", "--temporal-step",
            "0", "--temporal-tolerance", str(TOL), "--max-cloud", "60", "--chip-size", "16",
            "--samples", "8" if smoke else "256", "--batch-size", "8", "--epochs",
            "1" if smoke else "8", "--model", "tiny", "--seed", "0", "--out", model.parent)
    dates = choose_dates(m)
    emb = {}
    for when, day in dates.items():
        for q in ("float", "int8"):
            d = work / f"emb-{when}-{q}"
            if not any(d.glob("embeddings_*.tif")):
                extra = ["--quantize", "int8"] if q == "int8" else []
                cli("embed", model, "--bbox", *m["bbox"], "--date", day.isoformat(),
                    "--catalog", m["catalog"], "--out", d, "--precision", "fp32", "--device",
                    "cpu", *extra)
            emb[(when, q)] = d
    return {"world": m, "model": model, "emb": emb, "dates": dates}


def choose_dates(m: dict[str, Any], tol: int = 0) -> dict[str, dt.date]:
    """Embedding dates whose window (±``tol`` days; one time step) falls wholly before /
    after the flood, picked for the least cloud of the clearest acquisition in reach."""
    tol = tol or TOL
    cloud: dict[dt.date, list[float]] = {}
    for f in json.loads(Path(m["catalog"]).read_text())["features"]:
        day = dt.date.fromisoformat(f["properties"]["datetime"][:10])
        cloud.setdefault(day, []).append(float(f["properties"].get("eo:cloud_cover", 100)))
    mean = {d: float(np.mean(v)) for d, v in cloud.items()}
    flood = dt.date.fromisoformat(m["flood_date"])
    start, end = dt.date.fromisoformat(m["start"]), dt.date.fromisoformat(m["end"])

    def score(d: dt.date) -> float:
        return min((c for day, c in mean.items() if abs((day - d).days) <= tol), default=100.0)

    days = [start + dt.timedelta(days=i) for i in range(tol, (end - start).days + 1)]
    before = [d for d in days if d + dt.timedelta(days=tol) < flood]
    after = [d for d in days if d - dt.timedelta(days=tol) >= flood]
    if not before or not after:
        raise SystemExit("the season leaves no clean before/after window around the flood")
    return {"before": min(before, key=lambda d: (score(d), (flood - d).days)),
            "after": min(after, key=lambda d: (score(d), (d - flood).days))}


def truth_on(grid_src: Any, truth: dict[str, str], epsg: int) -> np.ndarray:
    """Share of each embedding pixel that is newly flooded land (flood − permanent water)."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    with rasterio.open(truth["flood"][str(epsg)]) as f, \
            rasterio.open(truth["landcover"][str(epsg)]) as lc:
        new = ((f.read(1) == 1) & (lc.read(1) != 0)).astype(np.float32)
        dst = np.full((grid_src.height, grid_src.width), np.nan, np.float32)
        reproject(new, dst, src_transform=f.transform, src_crs=f.crs,
                  dst_transform=grid_src.transform, dst_crs=grid_src.crs,
                  resampling=Resampling.average, src_nodata=None, dst_nodata=np.nan)
    return dst


def reflectance_patches(m: dict[str, Any], model: Path, cog: Path, day: dt.date) -> np.ndarray:
    """(T·C, h, w) patch-mean reflectance on the embedding grid (NaN: < half valid)."""
    import rasterio
    from affine import Affine

    from terrastill.catalog import Search, open_catalog
    from terrastill.data.chips import read_chips
    from terrastill.data.grid import GridSpec
    from terrastill.inference.predict import read_options
    from terrastill.models.modelfile import read_card

    spec = read_card(model).input_spec
    read = read_options(spec, None, None)
    cat = open_catalog(m["catalog"])
    far = dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    items = [it.to_dict(transform_hrefs=False) for it in cat.search(
        Search(tuple(cat.collection_ids()), tuple(m["bbox"]), *far))]
    with rasterio.open(cog) as src:
        t, h, w, epsg = src.transform, src.height, src.width, src.crs.to_epsg()
    res = float(spec["resolution"])
    patch = int(round(t.a / res))
    block = 16  # patches per read window side
    feats = None
    for r0 in range(0, h, block):
        for c0 in range(0, w, block):
            g = GridSpec(epsg, Affine(res, 0, t.c + c0 * t.a, 0, -res, t.f + r0 * t.e),
                         block * patch, block * patch)
            chip = read_chips([g], day, items, read)[0]
            if isinstance(chip, Exception):
                continue
            a = chip.array  # (T, C, H, W)
            tc = a.shape[0] * a.shape[1]
            if feats is None:
                feats = np.full((tc, h, w), np.nan, np.float32)
            x = a.reshape(tc, block, patch, block, patch)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN patches
                mean = np.nanmean(x, axis=(2, 4))
                share = np.isfinite(x).mean(axis=(2, 4)).min(axis=0)
            mean[:, share < 0.5] = np.nan
            hh, ww = min(block, h - r0), min(block, w - c0)
            feats[:, r0:r0 + hh, c0:c0 + ww] = mean[:, :hh, :ww]
    if feats is None:
        raise SystemExit(f"no imagery for {day}")
    return feats


def read_real(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        a = src.read().astype(np.float64)
        bad = ~np.isfinite(a) | ((a == src.nodata) if src.nodata is not None
                                 and np.isfinite(src.nodata) else False)
        a = a * np.asarray(src.scales)[:, None, None] + np.asarray(src.offsets)[:, None, None]
    a[bad] = np.nan
    return a


def truth_paths(m: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {"landcover": m["tasks"]["landcover"]["truth"], "flood": m["tasks"]["flood"]["truth"]}


def pick_zone(prep: dict[str, Any]) -> int:
    """The UTM zone whose embedding raster holds the most newly flooded pixels."""
    import rasterio

    best, arg = -1.0, None
    for cog in sorted(prep["emb"][("before", "float")].glob("embeddings_*.tif")):
        epsg = int(cog.stem.split("_")[1])
        with rasterio.open(cog) as src:
            share = truth_on(src, truth_paths(prep["world"]), epsg)
        ok = np.ones(share.shape, bool)
        for key in (("before", "float"), ("after", "float")):
            ok &= np.isfinite(read_real(prep["emb"][key] / cog.name)).all(axis=0)
        n = float(np.nansum((share >= 0.5) & ok))
        if n > best:
            best, arg = n, epsg
    assert arg is not None
    return arg


def f1_on_clicks(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator,
                 seed: int) -> float:
    """Fit on n balanced clicks (C by inner CV on F1), F1 on every pixel."""
    from sklearn.metrics import f1_score

    from terrastill.embeddings.change_fit import _search

    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.concatenate([rng.choice(pos, n // 2, replace=False),
                          rng.choice(neg, n - n // 2, replace=False)])
    model = _search(y[idx], seed).fit(x[idx], y[idx])
    return float(f1_score(y, model.predict(x)))


def evaluate(work: Path, out: Path, smoke: bool, repeats: int) -> dict[str, Any]:
    import rasterio

    t0 = time.perf_counter()
    prep = prepare(work, smoke)
    t_prep = time.perf_counter() - t0
    epsg = pick_zone(prep)
    name = f"embeddings_{epsg}.tif"
    paths = {k: d / name for k, d in prep["emb"].items()}
    change_dir = work / "change"
    summary = cli("change", paths[("before", "float")], paths[("after", "float")], "--out",
                  change_dir, "--pca", "8", "--sample-every", "10" if smoke else "100")
    meta = json.loads((change_dir / "change.json").read_text())
    truth = truth_paths(prep["world"])
    with rasterio.open(paths[("before", "float")]) as src:
        share = truth_on(src, truth, epsg)
    before, after = read_real(paths[("before", "float")]), read_real(paths[("after", "float")])
    b8, a8 = read_real(paths[("before", "int8")]), read_real(paths[("after", "int8")])
    codes = read_real(change_dir / "change.tif")
    rb = reflectance_patches(prep["world"], prep["model"], paths[("before", "float")],
                             prep["dates"]["before"])
    ra = reflectance_patches(prep["world"], prep["model"], paths[("after", "float")],
                             prep["dates"]["after"])
    d = (after - before).reshape(after.shape[0], -1).T
    d8 = (a8 - b8).reshape(after.shape[0], -1).T
    z = (d - np.asarray(meta["pca"]["mean"])) @ np.asarray(meta["pca"]["components"]).T
    sets = {"PCA-3 float": z[:, :3], "PCA-8 float": z[:, :8],
            f"full ({d.shape[1]}-d) float": d,
            "PCA-3 int8": codes.reshape(8, -1).T[:, :3], "PCA-8 int8": codes.reshape(8, -1).T,
            f"full ({d.shape[1]}-d) int8": d8,
            f"reflectance diff ({rb.shape[0]}-d)": (ra - rb).reshape(rb.shape[0], -1).T}
    valid = np.isfinite(share.reshape(-1))
    for x in sets.values():
        valid &= np.isfinite(x).all(axis=1)
    y = (share.reshape(-1) >= 0.5).astype(int)[valid]
    sets = {k: v[valid] for k, v in sets.items()}
    sizes = [n for n in ((10,) if smoke else CLICKS) if n // 2 <= min(y.sum(), (1 - y).sum())]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for k, x in sets.items():
        table[k] = {}
        for n in sizes:
            rng = np.random.default_rng(n)
            f1 = [f1_on_clicks(x, y, n, rng, r) for r in range(repeats)]
            table[k][str(n)] = {"mean": float(np.mean(f1)), "std": float(np.std(f1))}
    # change-fit --report on 100 (smoke: 20) truth clicks, through the CLI
    n_rep = 20 if smoke else 100
    rng = np.random.default_rng(7)
    rows, cols = np.unravel_index(np.flatnonzero(valid), share.shape)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pick = np.concatenate([rng.choice(pos, n_rep // 2, replace=False),
                           rng.choice(neg, n_rep // 2, replace=False)])
    clicks = out / "clicks.geojson"
    _write_clicks(clicks, paths[("before", "float")], rows[pick], cols[pick], y[pick])
    model_path = out / "change-model.json"
    cli("change-fit", change_dir, "--labels", clicks, "--out", model_path, "--report",
        "--folds", "3" if smoke else "10")
    cli("change-map", change_dir, model_path, "--out", work / "change-prob.tif")
    report = json.loads(model_path.read_text())["report"]
    res = {"machine": "2-core AMD EPYC Zen 4 (shared with other jobs), CPU only",
           "smoke": smoke, "world": world_args(smoke), "zone_epsg": epsg,
           "dates": {k: v.isoformat() for k, v in prep["dates"].items()},
           "pixels": int(valid.sum()), "changed_pixels": int(y.sum()),
           "pixel_m": abs(meta["grid"]["transform"][0]), "embedding_dim": meta["dim"],
           "pca": {"explained_variance_8": meta["pca"]["explained_variance"],
                   "pc1": meta["pca"]["explained_variance_ratio"][0],
                   "components_for_50pct": meta["pca"]["components_for_50pct"],
                   "components_for_90pct": meta["pca"]["components_for_90pct"]},
           "tiles": meta.get("tiles", {}).get("tiles_per_zoom"),
           "repeats": repeats, "f1_vs_dense_truth": table,
           "nested_cv_report": {"clicks": n_rep, "rows": report},
           "change_summary": " ".join(summary.split()),
           "seconds": {"prepare": round(t_prep, 1),
                       "total": round(time.perf_counter() - t0, 1)}}
    (out / "eval_change.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "eval_change.md").write_text(markdown(res))
    return res


def _write_clicks(path: Path, cog: Path, rows: np.ndarray, cols: np.ndarray,
                  y: np.ndarray) -> None:
    import rasterio
    from pyproj import Transformer

    with rasterio.open(cog) as src:
        t, epsg = src.transform, src.crs.to_epsg()
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    feats = []
    for r, c, v in zip(rows, cols, y, strict=True):
        lon, lat = tr.transform(*(t * (c + 0.5, r + 0.5)))
        feats.append({"type": "Feature", "properties": {"change": int(v)},
                      "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def markdown(res: dict[str, Any]) -> str:
    t = res["f1_vs_dense_truth"]
    sizes = list(next(iter(t.values())))
    lines = [f"F1 against the dense truth ({res['pixels']} pixels of {res['pixel_m']:.0f} m, "
             f"{res['changed_pixels']} changed; zone EPSG:{res['zone_epsg']}; mean ± std over "
             f"{res['repeats']} click draws)", "",
             "| Features | " + " | ".join(f"{n} clicks" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for k, row in t.items():
        lines.append(f"| {k} | " + " | ".join(f"{row[n]['mean']:.2f} ± {row[n]['std']:.2f}"
                                              for n in sizes) + " |")
    rep = res["nested_cv_report"]
    lines += ["", f"change-fit --report (nested CV, {rep['clicks']} truth clicks):", "",
              "| Feature set | Accuracy | F1 | Precision | Recall |", "|---|---|---|---|---|"]
    for k, r in rep["rows"].items():
        lines.append(f"| {k} | " + " | ".join(f"{r[m]['mean']:.2f} ± {r[m]['std']:.2f}" for m in
                                              ("accuracy", "f1", "precision", "recall")) + " |")
    p = res["pca"]
    lines += ["", f"PCA of the difference: PC1 {100 * p['pc1']:.1f} %, 8 components "
              f"{100 * p['explained_variance_8']:.1f} %, 50 % at {p['components_for_50pct']}, "
              f"90 % at {p['components_for_90pct']} components.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="results folder (default: a temporary one)")
    ap.add_argument("--work", type=Path, help="reuse/keep the world, encoder and embeddings")
    ap.add_argument("--smoke", action="store_true", help="a tiny world, seconds to a minute")
    ap.add_argument("--repeats", type=int, default=10, help="click draws per size")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp) / "work"
        out = args.out or Path(tmp) / "out"
        work.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        res = evaluate(work, out, args.smoke, 1 if args.smoke else args.repeats)
        sys.stdout.write(markdown(res))


if __name__ == "__main__":
    main()
