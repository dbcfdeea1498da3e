"""Measure once whether bf16 autocast changes a model's metric, and record it in the model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOLERANCE_PP = 0.5


def calibrate_precision(model_path: str | Path, chips_dir: str | Path, split: str = "val",
                        tolerance_pp: float = TOLERANCE_PP, device: str = "cpu") -> dict[str, Any]:
    """Evaluate ``split`` in fp32 and under bf16 autocast; store the verdict in the card.

    ``bf16_ok`` is true when the metric (mIoU, or RMSE for regression, in percentage points of
    the fp32 value) moves by at most ``tolerance_pp``. ``predict --precision auto`` reads it.
    """
    import torch

    from terrastill.data.dataset import ChipDataset, read_dataset_meta
    from terrastill.models.modelfile import load_model_file, save_model_file
    from terrastill.models.registry import uses_coords
    from terrastill.training.train import evaluate_model

    loaded = load_model_file(model_path)
    card = loaded.card
    meta = read_dataset_meta(chips_dir)
    meta["stats"] = {"mean": card.input_spec["mean"], "std": card.input_spec["std"]}
    coords = uses_coords(card.arch)
    ds = ChipDataset(chips_dir, split, meta=meta, coords=coords)
    if len(ds) == 0:
        split = "all"
        ds = ChipDataset(chips_dir, split, meta=meta, coords=coords)
    runs = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        runs[name] = evaluate_model(loaded.model, ds, card.task, card.class_names,
                                    device=device, use_coords=coords, autocast_dtype=dtype)
    if card.task == "regression":
        metric, scale = "rmse", 100.0 / max(abs(runs["fp32"]["rmse"]), 1e-9)
    else:
        metric, scale = "miou", 100.0
    delta = (runs["bf16"][metric] - runs["fp32"][metric]) * scale
    verdict = {"bf16_ok": bool(abs(delta) <= tolerance_pp), "metric": metric,
               "fp32": runs["fp32"][metric], "bf16": runs["bf16"][metric],
               "bf16_delta_pp": round(float(delta), 4), "tolerance_pp": tolerance_pp,
               "split": split, "chips": len(ds), "device": device,
               "seconds": {k: v["seconds"] for k, v in runs.items()}}
    card.precision = verdict
    save_model_file(model_path, loaded.model, card)
    return verdict


# --- speed, per model and machine -----------------------------------------------------------

SPEEDUP_MARGIN = 1.05  # bf16 must be at least this much faster to be worth a rounding change


def cache_path() -> Path:
    """Where measured fp32/bf16 speeds are kept (``TERRASTILL_CACHE_DIR`` or ~/.cache)."""
    import os

    base = os.environ.get("TERRASTILL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "terrastill")
    return Path(base) / "precision-speed.json"


def _model_key(card: Any, device: str) -> str:
    """Model (architecture, weights' summary, input spec) x machine x thread count."""
    import hashlib
    import json

    import torch

    from terrastill.bench.hardware import hardware_id, hardware_info

    ident = {"name": getattr(card, "name", ""), "arch": getattr(card, "arch", None),
             "params": getattr(card, "params", None), "macs": getattr(card, "macs", None),
             "spec": getattr(card, "input_spec", None), "metrics": getattr(card, "metrics", None),
             "device": device, "threads": torch.get_num_threads(),
             "hardware": hardware_id(hardware_info())}
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def measure_speed(model: Any, device: str = "cpu", batch_size: int = 4,
                  seconds: float = 0.4) -> dict[str, float]:
    """img/s of ``model`` on a synthetic batch in fp32 and under bf16 autocast (median batch
    latency, so another process stealing the CPU now and then does not decide)."""
    from terrastill.bench.throughput import BenchModel, measure

    cfg = model.encoder.config
    bm = BenchModel(key="", name="", model=model, task="", in_chans=int(cfg["in_chans"]),
                    num_frames=int(cfg["num_frames"]), chip_size=int(cfg["img_size"]),
                    gsd_m=30.0, params=0, macs=0, encoder_macs=0, depth=0)
    out: dict[str, float] = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # interleaved: best of two rounds
        t = measure(bm, device=device, precision=precision, compile=False,
                    batch_size=batch_size, seconds=seconds, warmup=1)
        ips = batch_size / (t.percentile_ms(50) / 1000.0)
        out[precision] = round(max(out.get(precision, 0.0), ips), 2)
    return out


def bf16_faster(model: Any, card: Any, device: str = "cpu") -> bool:
    """Whether bf16 autocast runs ``model`` faster than fp32 here: timed once per model and
    machine, then read from the cache."""
    import json
    import logging

    from terrastill.atomic import write_text_atomic

    key = _model_key(card, device)
    path = cache_path()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if entry is None:
        try:
            speed = measure_speed(model, device)
        except Exception as exc:  # a model the synthetic batch does not fit: stay exact
            logging.getLogger(__name__).warning("bf16 timing failed (%s): using fp32", exc)
            return False
        entry = {**speed, "faster": speed["bf16"] >= SPEEDUP_MARGIN * speed["fp32"],
                 "model": getattr(card, "name", "")}
        cache[key] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(cache, indent=1))
        except OSError:  # a read-only home: measure again next time
            pass
        logging.getLogger(__name__).info(
            "bf16 %.1f vs fp32 %.1f img/s on this machine: %s", entry["bf16"], entry["fp32"],
            "bf16" if entry["faster"] else "fp32")
    return bool(entry["faster"])
