#!/usr/bin/env python
"""End-to-end embedding throughput vs encoder-only throughput, and peak memory vs AOI size.

``terrastill embed`` over an AOI of a demo world (the centre ``--aoi-fraction`` of its width
and height), after an untimed warm-up over a corner: patches/s end-to-end (read, encode,
write, COG; medians of ``--repeat`` runs) against the encoder alone on random batches of
the same window shape, in the same process (the best of three), and their ratio. Patches
count every patch of every window that had imagery. Peak memory (VmHWM of a fresh process)
is measured for an AOI and one with 4× its area: flat memory means the rows of windows
stream to disk.

Without a model file, a tiny random-weight model with the flood task's input spec is made
(throughput does not depend on the weights). ``--smoke`` builds a two-tile world and runs
everything in seconds.

    python scripts/bench_embed.py --world demo-out/world demo-out/serve-models/flood-teacher.pt
    python scripts/bench_embed.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from terrastill.embeddings.raster import EmbedRequest, embed_aoi
from terrastill.errors import NoImageryError
from terrastill.inference.aoi import area_km2, bbox_aoi
from terrastill.world.build import load_manifest

_CHILD = """
import datetime as dt, json, sys
from pathlib import Path
from terrastill.embeddings.raster import EmbedRequest, embed_aoi
from terrastill.inference.aoi import bbox_aoi
model, catalog, date, out, device, *bbox = sys.argv[1:]
r = embed_aoi(EmbedRequest(model=Path(model), aois=[bbox_aoi([float(v) for v in bbox])],
              date=dt.date.fromisoformat(date), out_dir=Path(out), catalog=catalog,
              precision="fp32", device=device))
hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines()
       if ln.startswith("VmHWM:")]
print(json.dumps({"peak_rss_mb": int(hwm[0].split()[1]) / 1024, "windows": r.windows}))
"""


def _bench_predict():
    spec = importlib.util.spec_from_file_location(
        "bench_predict", Path(__file__).with_name("bench_predict.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def random_model(path: Path, resolution: float = 30.0, seed: int = 0) -> Path:
    """A tiny random-weight model file reading the demo teacher's input (HLS, 3 steps 14 days
    apart, 32 px chips)."""
    import torch

    from terrastill.models.modelfile import ModelCard, save_model_file
    from terrastill.models.registry import HLS_BANDS, build_model, make_arch

    arch = make_arch("tiny", num_classes=2, bands=HLS_BANDS, num_steps=3, chip_size=32)
    torch.manual_seed(seed)
    spec = {"source": "hls", "bands": HLS_BANDS, "num_steps": 3, "chip_size": 32,
            "resolution": resolution, "temporal_step": 14, "temporal_tolerance": 7,
            "max_cloud": 60.0, "mask_classes": None, "resampling": "nearest", "catalog": None,
            "mean": [0.1] * 6, "std": [0.05] * 6}
    card = ModelCard(name="tiny-random", task="segmentation", arch=arch, input_spec=spec,
                     class_names=["land", "water"])
    return save_model_file(path, build_model(arch), card)


def encoder_only(model: Path, batch_size: int, seconds: float, device: str) -> float:
    """Windows/s of the encoder alone on random batches of the model's window shape."""
    import torch

    from terrastill.embeddings.encoders import model_file_encoder

    enc = model_file_encoder(model, device, "fp32")
    size = int(enc.vit.config["img_size"])
    x = torch.randn(batch_size, len(enc.bands), enc.num_steps or 1, size, size)
    best = 0.0
    for _ in range(3):
        enc.patch_maps_from_tensor(x)  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            enc.patch_maps_from_tensor(x)
            n += batch_size
        best = max(best, n / (time.perf_counter() - t0))
    return best


def peak_memory(model: Path, catalog: str, date: dt.date, bbox: list[float],
                device: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run([sys.executable, "-c", _CHILD, str(model), catalog,
                              date.isoformat(), out, device, *map(str, bbox)],
                             capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(world: Path, model: Path | None = None, batch_size: int = 8, seconds: float = 3.0,
        frac: float = 0.5, memory: bool = True, device: str = "cpu", repeat: int = 1) -> dict:
    from terrastill.models.modelfile import read_card

    bp = _bench_predict()
    m = load_manifest(world)
    tmp = tempfile.TemporaryDirectory()
    if model is None:
        model = random_model(Path(tmp.name) / "tiny-random.pt")
    spec = read_card(model).input_spec
    date = bp.clear_date(m["catalog"], dt.date.fromisoformat(m["tasks"]["flood"]["date"]),
                         int(spec["num_steps"]), int(spec.get("temporal_step") or 0),
                         int(spec.get("temporal_tolerance") or 5))
    corner = bp.sub_bbox(m["bbox"], 0.1)
    corner = [m["bbox"][0], m["bbox"][1], m["bbox"][0] + corner[2] - corner[0],
              m["bbox"][1] + corner[3] - corner[1]]
    bbox = bp.sub_bbox(m["bbox"], frac)

    def once(box: list[float]):
        with tempfile.TemporaryDirectory() as out:
            return embed_aoi(EmbedRequest(model=model, aois=[bbox_aoi(box)], date=date,
                                          out_dir=Path(out), catalog=m["catalog"],
                                          precision="fp32", device=device,
                                          batch_size=batch_size))

    with contextlib.suppress(NoImageryError):  # a cloudy corner still warms up
        once(corner)
    runs = [once(bbox) for _ in range(repeat)]
    r = runs[0]
    r.timings = {k: statistics.median(x.timings[k] for x in runs) for k in r.timings}
    cells = (int(spec["chip_size"]) // int(read_card(model).arch["encoder"]["patch_size"][1]))
    patches = (r.windows - r.skipped) * cells * cells
    e2e = patches / r.timings["total"]
    only = encoder_only(model, batch_size, seconds, device) * cells * cells
    res = {"model": Path(model).name, "device": device, "date": date.isoformat(), "repeat": repeat,
           "aoi_km2": round(area_km2(bbox_aoi(bbox)), 1), "windows": r.windows,
           "skipped_windows": r.skipped, "patches": patches, **r.timings,
           "e2e_patches_per_s": round(e2e, 1), "model_only_patches_per_s": round(only, 1),
           "e2e_over_model_only": round(e2e / only, 3)}
    if memory:
        res["memory"] = [peak_memory(model, m["catalog"], date, bp.sub_bbox(m["bbox"], f),
                                     device) for f in (frac / 2, frac)]
    tmp.cleanup()
    return res


def smoke_world(folder: Path) -> Path:
    """The two-zone, two-tile world of the tests (64 px tiles, ten weeks)."""
    from terrastill.world.build import build_world
    from terrastill.world.config import WorldConfig

    build_world(folder, WorldConfig(seed=3, zones=2, tiles_x=2, tiles_y=1, tile_size=64,
                                    start="2024-05-01", end="2024-07-15", revisit=3,
                                    flood_date="2024-06-20", observations=80))
    return folder


def main() -> None:
    from terrastill.inference.predict import resolve_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path, help="model file (default: random tiny)")
    ap.add_argument("--world", type=Path, help="demo world folder (or --smoke)")
    ap.add_argument("--smoke", action="store_true", help="a tiny world, seconds in all")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--aoi-fraction", type=float, default=0.5)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (medians are reported)")
    args = ap.parse_args()
    if not args.smoke and args.world is None:
        ap.error("give --world or --smoke")
    with tempfile.TemporaryDirectory() as tmp:
        world = smoke_world(Path(tmp) / "world") if args.smoke else args.world
        res = run(world, args.model, args.batch_size, 0.3 if args.smoke else args.seconds,
                  args.aoi_fraction, not args.no_memory, resolve_device(args.device),
                  1 if args.smoke else args.repeat)
    table = Table(title=f"embedding throughput on {res['device']} ({res['date']})")
    table.add_column("measure")
    table.add_column(res["model"])
    for k, v in res.items():
        if k != "memory":
            table.add_row(k, str(v))
    for label, mem in zip(("small AOI", "4x AOI"), res.get("memory", []), strict=False):
        table.add_row(f"peak RSS MB, {label} ({mem['windows']} windows)",
                      str(round(mem["peak_rss_mb"])))
    Console().print(table)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
