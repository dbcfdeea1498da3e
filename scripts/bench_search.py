"""Search benchmark (TerraBit): scan throughput, recall@10 of the codes, bytes, shard pruning.

Measured in one run, with the same thread count for every contender:

- throughput: N random 1024-bit codes, Q queries, k = 10: terrastill's Hamming scan
  (:func:`terrastill.embeddings.hamming.knn`: the compiled numba kernel, and its NumPy
  fallback) vs faiss-cpu ``IndexBinaryFlat`` vs float32 brute force (NumPy matmul +
  argpartition over N float32 vectors); each timed 3 times, interleaved, medians; the
  kernel's compile (or cache load) happens before timing and is reported apart;
- fidelity: recall@10 against float32 cosine neighbours (the query itself excluded) for
  binary, rot-binary, int4, rot-int4 and int8 codes, alone and with the int8 re-rank of the
  top 100 (plus the rows tied with the 100th, at most 200, as ``search`` does; exactly 100
  is reported too), scored by the search module's own functions over an index built by
  ``build_index``;
  datasets: demo-world patch embeddings (an AOI embedding raster of a briefly trained tiny
  model) and the EuroSAT sample's image embeddings (spectral and random:tiny encoders);
- storage: bytes per vector of the index on disk vs the float32 GeoParquet table, 1024-d;
- pruning: a small-box query in a 16-shard index vs a query over the whole index.

Usage::

    python scripts/bench_search.py --out /work/evidence/issue16 --threads 2
    python scripts/bench_search.py --smoke --out /tmp/bench-search   # seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
CODES = ("binary", "rot-binary", "int4", "rot-int4", "int8")


# ---------------------------------------------------------------- throughput


def _float_knn(fq: np.ndarray, fb: np.ndarray, k: int, block: int = 65536
               ) -> tuple[np.ndarray, np.ndarray]:
    """float32 brute force: inner products by NumPy matmul, per-block argpartition, merge."""
    nq = len(fq)
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_i = np.zeros((nq, k), np.int64)
    for s in range(0, len(fb), block):
        sc = fq @ fb[s:s + block].T
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        cs = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        ci = np.concatenate([best_i, part + s], 1)
        top = np.argsort(-cs, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, top, 1), np.take_along_axis(ci, top, 1)
    return best_s, best_i


def throughput(n: int, nq: int, bits: int, k: int, threads: int, seed: int,
               repeats: int = 3) -> dict[str, Any]:
    """Queries per second of our compiled scan, our NumPy fallback, faiss IndexBinaryFlat and
    float32 matmul: each contender timed ``repeats`` times, interleaved (the order rotates
    every round), the median reported; the numba kernels are compiled (or loaded from the
    cache) before timing, and that warm-up is reported apart."""
    import os

    import faiss
    from threadpoolctl import threadpool_limits

    from terrastill.embeddings import hamming

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
    words = hamming.Words.of(base)
    backend = hamming.choose_backend()
    t0 = time.perf_counter()
    hamming.knn(queries[:8], words, k, threads=threads)  # compile or load the kernels
    warmup_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexBinaryFlat(bits)
    index.add(base)
    fb = np.empty((n, bits), np.float32)
    for s in range(0, n, 65536):
        fb[s:s + 65536] = rng.standard_normal((min(65536, n - s), bits), np.float32)
    fq = rng.standard_normal((nq, bits), np.float32)
    outs: dict[str, Any] = {}

    def ours() -> None:
        outs["ours"] = hamming.knn(queries, words, k, threads=threads)

    def numpy_scan() -> None:
        outs["numpy"] = hamming.knn(queries, words, k, threads=threads, backend="numpy")

    def flat() -> None:
        outs["faiss"] = index.search(queries, k)

    def float32() -> None:
        with threadpool_limits(threads):
            _float_knn(fq, fb, k)

    runs = {"ours": ours, "faiss": flat, "float32": float32}
    if backend != "numpy":
        runs["numpy"] = numpy_scan
    names = list(runs)
    times: dict[str, list[float]] = {m: [] for m in names}
    load: list[float] = [os.getloadavg()[0]]
    for r in range(repeats):
        for m in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            runs[m]()
            times[m].append(time.perf_counter() - t0)
        load.append(os.getloadavg()[0])
    med = {m: float(np.median(v)) for m, v in times.items()}
    q = {m: nq / v for m, v in med.items()}
    od, oi = outs["ours"]
    fd, fi = outs["faiss"]
    res: dict[str, Any] = {
        "vectors": n, "queries": nq, "bits": bits, "k": k, "threads": threads,
        "repeats": repeats, "backend": backend, "warmup_seconds": warmup_s,
        "seconds": med, "seconds_each": times, "queries_per_s": q,
        "load_average_1min": load,
        "ours_vs_faiss": q["ours"] / q["faiss"], "ours_vs_float32": q["ours"] / q["float32"],
        "same_distances_as_faiss": bool((np.sort(fd, 1) == od).all()),
        "same_indices_as_faiss": bool((fi == oi).all())}
    if "numpy" in outs:
        nd, ni = outs["numpy"]
        res["numpy_same_as_ours"] = bool((nd == od).all() and (ni == oi).all())
        res["ours_vs_numpy"] = q["ours"] / q["numpy"]
        res["numpy_vs_faiss"] = q["numpy"] / q["faiss"]
        res["numpy_vs_float32"] = q["numpy"] / q["float32"]
    return res


# ---------------------------------------------------------------- fidelity


def fidelity(table: Path, work: Path, k: int = 10, depth: int = 100, max_queries: int = 500,
             seed: int = 0, tag: str = "data") -> dict[str, Any]:
    """recall@k vs float32 cosine for each code, with and without int8 re-ranking."""
    from terrastill.embeddings.evaluate import cosine_neighbours
    from terrastill.embeddings.index import build_index, open_index, read_source
    from terrastill.embeddings.search import (
        Exemplars,
        code_distances,
        rerank_candidates,
        rerank_distances,
    )

    src = read_source(table)
    x = src.vectors
    n = len(x)
    ids = src.frame["id"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    qi = np.sort(rng.choice(n, size=min(n, max_queries), replace=False))
    truth_idx = cosine_neighbours(x[qi], x, k + 1)
    truth = [set(ids[r[r != q]][:k]) for r, q in zip(truth_idx, qi, strict=True)]
    out: dict[str, Any] = {"rows": n, "dim": int(x.shape[1]), "queries": len(qi), "k": k,
                           "rerank_depth": depth, "model": src.model.get("name"),
                           "recall": {}}
    float_bytes = table.stat().st_size if table.is_file() else None
    for code in CODES:
        folder = work / f"idx-{tag}-{code}"
        if folder.exists():
            shutil.rmtree(folder)
        build_index([table], folder, code="binary" if code == "int8" else code,
                    rerank="int8", precision=3, seed=seed)
        idx = open_index(folder)
        pool = idx.rows()
        pid = pool.frame["id"].astype(str).to_numpy()
        order = {v: i for i, v in enumerate(pid)}
        vec = idx.decode_rerank(pool.rerank)
        plain, rr, cut, sizes = [], [], [], []
        for q, t in zip(qi, truth, strict=True):
            j = order[ids[q]]
            pos = Exemplars(pool.codes[j:j + 1], vec[j:j + 1], [ids[q]])
            neg = Exemplars(np.zeros((0, idx.code_bytes), np.uint8),
                            np.zeros((0, x.shape[1]), np.float32), [])
            if code == "int8":
                d = rerank_distances(idx, pos, neg, pool.rerank, False)
            else:
                d = code_distances(idx, pos, neg, pool.codes, "mean", False)
            d = d.astype(np.float64)
            d[j] = np.inf  # the query itself
            top = np.lexsort((pid, d))[:k]
            plain.append(len(t & set(pid[top])) / k)
            # the search's candidates (depth + rows tied at the cut), and exactly `depth`
            for cand, into in ((rerank_candidates(d, depth, pid), rr),
                               (np.lexsort((pid, d))[:depth], cut)):
                rd = rerank_distances(idx, pos, neg, pool.rerank[cand], False)
                rd[cand == j] = np.inf
                best = cand[np.lexsort((pid[cand], rd))[:k]]
                into.append(len(t & set(pid[best])) / k)
            sizes.append(len(rerank_candidates(d, depth, pid)))
        shard_bytes = sum((folder / s.path).stat().st_size for s in idx.shards)
        out["recall"][code] = {"plain": float(np.mean(plain)), "rerank": float(np.mean(rr)),
                               "rerank_exact_depth": float(np.mean(cut)),
                               "reranked_rows_mean": float(np.mean(sizes)),
                               "reranked_rows_max": int(np.max(sizes)),
                               "code_bytes": idx.code_bytes if code != "int8" else
                               idx.manifest["rerank"]["bytes"],
                               "index_bytes_per_row": shard_bytes / n}
    if float_bytes:
        out["float32_parquet_bytes_per_row"] = float_bytes / n
    return out


# ---------------------------------------------------------------- storage and pruning


def storage_and_pruning(work: Path, side: int, dim: int, seed: int) -> dict[str, Any]:
    """A side × side lattice of patches over 4 × 4 geohash-3 cells, 1024-d correlated vectors:
    bytes/vector on disk, and a small-box query vs the whole index."""
    import pandas as pd
    import shapely

    from terrastill.embeddings.index import build_index, open_index
    from terrastill.embeddings.search import Query, run_search
    from terrastill.embeddings.table import write_table

    rng = np.random.default_rng(seed)
    # geohash-3 cells are 1.40625 x 1.40625 degrees; this box spans 4 x 4 of them
    x0, y0, span = 11.25, 43.59375, 4 * 1.40625
    step = span / side
    gx, gy = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    lon, lat = x0 + gx.ravel() * step, y0 + gy.ravel() * step
    n = len(lon)
    mix = rng.standard_normal((32, dim)).astype(np.float32)
    vec = (rng.standard_normal((n, 32)).astype(np.float32) @ mix
           + 0.3 * rng.standard_normal((n, dim)).astype(np.float32))
    frame = pd.DataFrame({"id": [f"g{i}" for i in range(n)],
                          "geometry": shapely.box(lon, lat, lon + step, lat + step),
                          "date": "2024-06-01"})
    table = write_table(work / "lattice.parquet", frame, vec, {"model": {"name": "lattice"}})
    sizes: dict[str, Any] = {"rows": n, "dim": dim,
                             "float32_parquet_bytes_per_row": table.stat().st_size / n}
    for rr in ("none", "int8"):
        folder = work / f"lattice-{rr}"
        if folder.exists():  # a resumed run rebuilds it (an index there would be appended to)
            shutil.rmtree(folder)
        build_index([table], folder, code="binary", rerank=rr, precision=3, seed=seed)
        idx = open_index(folder)
        per = sum((folder / s.path).stat().st_size for s in idx.shards) / n
        sizes[f"binary{'+int8' if rr == 'int8' else ''}_bytes_per_row"] = per
    sizes["ratio_binary"] = sizes["float32_parquet_bytes_per_row"] / sizes["binary_bytes_per_row"]
    sizes["ratio_binary_int8"] = (sizes["float32_parquet_bytes_per_row"]
                                  / sizes["binary+int8_bytes_per_row"])
    idx = open_index(work / "lattice-none")
    c = (x0 + 1.5 * 1.40625, y0 + 1.5 * 1.40625)
    half = max(0.1, 3 * step)
    small = shapely.box(c[0] - half, c[1] - half, c[0] + half, c[1] + half)
    full = shapely.box(x0, y0, x0 + span, y0 + span)

    def timed(area: Any) -> tuple[float, Any]:
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            r = run_search(idx, Query(near=[c], area=area, k=10))
            best = min(best, time.perf_counter() - t0)
        return best, r

    ts, rs = timed(small)
    tf, rf = timed(full)
    pruning = {"shards": len(idx.shards), "small_box_deg": round(2 * half, 3),
               "small": {"seconds": ts, "shards_opened": rs.shards_searched,
                         "candidates": rs.candidates},
               "full": {"seconds": tf, "shards_opened": rf.shards_searched,
                        "candidates": rf.candidates},
               "speedup": tf / ts}
    return {"storage": sizes, "pruning": pruning}


# ---------------------------------------------------------------- datasets


def terrastill(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "terrastill.cli", *args], capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise RuntimeError(f"terrastill {' '.join(args)} failed:\n{res.stdout}{res.stderr}")


def demo_world_raster(work: Path, smoke: bool) -> Path:
    """An AOI embedding raster of the demo world (tiny model, briefly trained on its flood
    chips): one row per encoder patch."""
    from terrastill.data.build import ChipJob, make_chips
    from terrastill.data.chips import ReadOptions
    from terrastill.data.observations import ObservationOptions
    from terrastill.data.temporal import TemporalOptions
    from terrastill.training.train import TrainOptions, fit
    from terrastill.world.build import build_world, load_manifest
    from terrastill.world.config import WorldConfig

    done = sorted((work / "emb-world").glob("embeddings_*.tif"))
    if done:  # a resumed run: the demo world's raster is already there
        return done[0]
    world = work / "world"
    if world.exists():
        shutil.rmtree(world)
    for stale in ("chips", "model"):
        if (work / stale).exists():
            shutil.rmtree(work / stale)
    cfg = WorldConfig(seed=3, zones=1 if smoke else 2, tiles_x=2, tiles_y=1 if smoke else 2,
                      tile_size=64 if smoke else 128, start="2024-05-01", end="2024-07-15",
                      revisit=3, flood_date="2024-06-20", observations=60 if smoke else 200)
    build_world(world, cfg)
    man = load_manifest(world)
    chips = work / "chips"
    job = ChipJob(read=ReadOptions(temporal=TemporalOptions(2, 9, 4, 60)), chip_size=16,
                  min_valid=0.3, label_window=3, split_block=1000)
    make_chips(man["tasks"]["flood"]["observations"], chips, man["catalog"], job,
               ObservationOptions(classes=["land", "water"]))
    model = fit(chips, work / "model", TrainOptions(model="tiny", epochs=1 if smoke else 3,
                                                    seed=0, progress=False))
    day = dt.date.fromisoformat(man["tasks"]["flood"]["date"]) + dt.timedelta(days=6)
    emb = work / "emb-world"
    terrastill("embed", str(model), "--bbox", *map(str, man["bbox"]), "--date",
               day.isoformat(), "--catalog", str(man["catalog"]), "--out", str(emb))
    rasters = sorted(emb.glob("embeddings_*.tif"))
    return rasters[0]


def eurosat_tables(work: Path, encoders: list[str]) -> dict[str, Path]:
    out = {}
    for enc in encoders:
        folder = work / f"eurosat-{enc.replace(':', '-')}"
        out[enc] = folder / "embeddings.parquet"
        if out[enc].exists():
            continue
        terrastill("embed", "--encoder", enc, "--seed", "7", "--images",
                   str(REAL / "eurosat"), "--image-bands", "eurosat", "--scale", "0.0001",
                   "--out", str(folder))
    return out


def raster_as_table(raster: Path, work: Path) -> Path:
    """The raster's valid patches as an embedding table (so fidelity reads float vectors)."""
    from terrastill.embeddings.index import read_source
    from terrastill.embeddings.table import write_table

    src = read_source(raster)
    f = src.frame[["id", "geometry", "date"]]
    return write_table(work / "world-patches.parquet", f, src.vectors, {"model": src.model})


# ---------------------------------------------------------------- report


def machine() -> str:
    """CPU model, visible CPUs and NumPy's SIMD extensions (e.g. AVX512_ICL)."""
    import os

    from terrastill.bench.hardware import cpu_model

    name = cpu_model()
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats

        simd = ", ".join(f for f in ("AVX512_ICL", "AVX512_SPR", "AVX2") if feats.get(f))
    except ImportError:
        simd = "?"
    try:  # what the numba kernels are compiled for
        import llvmlite.binding as ll
        import numba

        feats_llvm = ll.get_host_cpu_features()
        pop = "VPOPCNTQ" if feats_llvm.get("avx512vpopcntdq") else "no AVX-512 VPOPCNTQ"
        jit = f", numba {numba.__version__} (LLVM target {ll.get_host_cpu_name()}, {pop})"
    except ImportError:
        jit = ", numba not installed"
    try:
        import faiss

        jit += f", faiss-cpu {faiss.__version__}"
    except ImportError:
        pass
    return (f"{name}, {os.cpu_count()} CPUs visible (shared with other jobs), SIMD {simd}, "
            f"NumPy {np.__version__}, Python {platform.python_version()}{jit}")


def markdown(res: dict[str, Any]) -> str:
    t = res["throughput"]
    q = t["queries_per_s"]
    la = t.get("load_average_1min", [])
    lines = [f"Machine: {res['machine']}. Run {res['date']}.", "",
             f"**Throughput** ({t['vectors']:,} random {t['bits']}-bit codes, "
             f"{t['queries']:,} queries, k = {t['k']}, {t['threads']} thread(s) each; median of "
             f"{t.get('repeats', 1)} interleaved repeats"
             + (f", 1-min load average {min(la):.1f}–{max(la):.1f}" if la else "") + "):", "",
             "| scan | queries/s | seconds (median) | seconds (each) |", "|---|---:|---:|---|"]
    labels = {"ours": f"terrastill Hamming scan ({t.get('backend', 'numpy')})",
              "numpy": "terrastill NumPy fallback", "faiss": "faiss IndexBinaryFlat",
              "float32": "float32 NumPy matmul"}
    for name, label in labels.items():
        if name in q:
            each = ", ".join(f"{v:.2f}" for v in t.get("seconds_each", {}).get(name, []))
            lines.append(f"| {label} | {q[name]:.1f} | {t['seconds'][name]:.2f} | {each} |")
    lines += ["", f"ours / faiss = **{t['ours_vs_faiss']:.2f}×**, ours / float32 = "
              f"**{t['ours_vs_float32']:.1f}×**; identical distances to faiss: "
              f"{t['same_distances_as_faiss']}"
              + (f"; NumPy fallback / faiss = {t['numpy_vs_faiss']:.2f}×, identical results to "
                 f"the compiled scan: {t['numpy_same_as_ours']}" if "numpy_vs_faiss" in t
                 else "")
              + (f"; kernel warm-up (compile or cache load) {t['warmup_seconds']:.1f} s, "
                 "not timed" if "warmup_seconds" in t else ""), ""]
    lines += ["**Recall@10 vs float32 cosine** (query excluded; +rr: int8 cosine re-rank of the "
              "top 100 by code distance plus the rows tied with the 100th, at most 200):", "",
              "| data | rows × dim | queries | binary | binary+rr | rot-binary | rot-binary+rr | "
              "int4 | int4+rr | rot-int4 | rot-int4+rr | int8 |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, f in res["fidelity"].items():
        r = f["recall"]
        cells = " | ".join(f"{r[c]['plain']:.3f} | {r[c]['rerank']:.3f}"
                           for c in ("binary", "rot-binary", "int4", "rot-int4"))
        lines.append(f"| {name} | {f['rows']} × {f['dim']} | {f['queries']} | {cells} | "
                     f"{r['int8']['plain']:.3f} |")
    lines += ["", "Re-ranking exactly the top 100 (ties at the cut by id) instead, and the rows "
              "re-ranked with ties (mean / max):", "",
              "| data | binary+rr@100 | rows | rot-binary+rr@100 | rows | int4+rr@100 | "
              "rot-int4+rr@100 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, f in res["fidelity"].items():
        r = f["recall"]
        rows = {c: f"{r[c].get('reranked_rows_mean', 0):.0f} / {r[c].get('reranked_rows_max', 0)}"
                for c in ("binary", "rot-binary")}
        lines.append(f"| {name} | {r['binary'].get('rerank_exact_depth', 0):.3f} | "
                     f"{rows['binary']} | {r['rot-binary'].get('rerank_exact_depth', 0):.3f} | "
                     f"{rows['rot-binary']} | {r['int4'].get('rerank_exact_depth', 0):.3f} | "
                     f"{r['rot-int4'].get('rerank_exact_depth', 0):.3f} |")
    s = res["storage"]
    lines += ["", f"**Bytes per vector on disk** ({s['rows']:,} rows × {s['dim']} dims, ZSTD "
              "Parquet incl. id, geometry, date, lon/lat):", "",
              "| product | bytes/row | vs float32 table |", "|---|---:|---:|",
              f"| float32 embedding table | {s['float32_parquet_bytes_per_row']:.0f} | 1× |",
              f"| index, binary codes | {s['binary_bytes_per_row']:.0f} | "
              f"{s['ratio_binary']:.1f}× smaller |",
              f"| index, binary + int8 re-rank | {s['binary+int8_bytes_per_row']:.0f} | "
              f"{s['ratio_binary_int8']:.1f}× smaller |"]
    p = res["pruning"]
    lines += ["", f"**Pruning** ({p['shards']}-shard index): a {p['small_box_deg']}° box opens "
              f"{p['small']['shards_opened']} shard(s), {p['small']['candidates']} candidates, "
              f"{1000 * p['small']['seconds']:.1f} ms; the whole index opens "
              f"{p['full']['shards_opened']} shards, {p['full']['candidates']} candidates, "
              f"{1000 * p['full']['seconds']:.1f} ms (**{p['speedup']:.1f}×**)."]
    return "\n".join(lines) + "\n"


def run(out: Path, smoke: bool = False, threads: int = 2, seed: int = 0) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    n, nq = (20_000, 20) if smoke else (1_000_000, 1_000)
    res: dict[str, Any] = {"machine": machine(), "date": dt.datetime.now(dt.UTC).isoformat(
        timespec="seconds"), "smoke": smoke}
    def stage(name: str, fn: Any) -> Any:
        """A stage's result, kept in work/ so an interrupted full run resumes."""
        f = work / f"{name}.json"
        if f.exists() and not smoke:
            return json.loads(f.read_text())
        value = fn()
        f.write_text(json.dumps(value, indent=1, default=float))
        return value

    res["throughput"] = stage("throughput", lambda: throughput(n, nq, 1024, 10, threads, seed))
    datasets: dict[str, Path] = {}
    datasets["demo world patches (tiny model)"] = raster_as_table(
        demo_world_raster(work, smoke), work)
    if REAL.exists():
        encs = ["spectral"] if smoke else ["spectral", "random:tiny"]
        for enc, path in eurosat_tables(work, encs).items():
            datasets[f"EuroSAT sample ({enc})"] = path
    res["fidelity"] = {}
    for name, path in datasets.items():
        tag = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        res["fidelity"][name] = stage(f"fidelity-{tag}", lambda p=path, t=tag: fidelity(
            p, work, max_queries=50 if smoke else 500, seed=seed, tag=t))
    res.update(stage("storage", lambda: storage_and_pruning(work, 40 if smoke else 200, 1024,
                                                            seed)))
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    (out / "results.md").write_text(markdown(res))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = ap.parse_args(argv)
    res = run(args.out, smoke=args.smoke, threads=args.threads, seed=args.seed)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
