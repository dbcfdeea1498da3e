"""``terrastill bench``: how fast can a model map the Earth? (ThroughputBench protocol)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from terrastill.commands.common import ConfigOption, console, handle_errors, setup_logging


def _split(value: str, what: str) -> list[str]:
    from terrastill.errors import BadInputError

    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise BadInputError(f"{what}: give at least one value")
    return items


def _num(v: Any, nd: int = 1) -> str:
    if v in (None, ""):
        return "—"
    f = float(v)
    if math.isnan(f):
        return "—"
    return f"{f:,.{nd}f}"


def _label(r: dict[str, Any]) -> str:
    """A model file's folder name (teacher/, student/...) or the registry name."""
    p = Path(str(r["model"]))
    return p.parent.name if p.suffix in (".pt", ".pth") and p.parent.name else str(r["model"])


def _hours(v: Any) -> str:
    if v in (None, ""):
        return "—"
    h = float(v)
    if h < 1:
        return f"{h * 60:.0f} min"
    return f"{h:,.0f} h" if h < 48 * 30 else f"{h / 24:,.0f} d"


@handle_errors
def bench(
    models: list[str] = typer.Argument(..., help="Model files (.pt) and/or registry names."),
    precision: str = typer.Option("fp32", "--precision",
                                  help="Comma-separated: fp32, bf16, fp16 (fp16: CUDA only)."),
    compile: str = typer.Option("off", "--compile", help="torch.compile: off, on or off,on."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated."),
    seconds: float = typer.Option(5.0, "--seconds", help="Timed window per configuration."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed iterations first."),
    out: Path = typer.Option(Path("bench-results/results.csv"), "--out", "-o",
                             help="CSV to append to (done configurations are skipped)."),
    gsd: float | None = typer.Option(None, "--gsd",
                                     help="Metres per pixel (default: the model's, else 30)."),
    price_per_hour: float = typer.Option(3.0, "--price-per-hour",
                                         help="Machine price for the cost column ($/h)."),
    dataloader: Path | None = typer.Option(
        None, "--dataloader", help="Chip folder: also time reading chips from disk (read) and "
                                   "read + model (pipeline)."),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader workers (--dataloader)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Path | None = ConfigOption,
) -> None:
    """Throughput, latency and memory per model × precision × compile × batch size, and what
    it means: km²/s and the hours and cost to map the Earth's land (150 M km²) once.

    Example:

        terrastill bench demo-out/models/teacher/model.pt demo-out/models/student/model.pt
        --precision fp32,bf16 --batch-sizes 1,8,32 --seconds 5 --out demo-out/bench/cpu.csv
    """
    setup_logging(verbose)
    from rich.table import Table

    from terrastill.bench.earth import LAND_AREA_KM2
    from terrastill.bench.throughput import BenchOptions, pipeline_shares, run_bench
    from terrastill.errors import BadInputError

    comps = []
    for c in _split(compile, "--compile"):
        if c.lower() not in ("on", "off", "true", "false", "1", "0"):
            raise BadInputError(f"--compile {c!r}: use off, on or off,on")
        comps.append(c.lower() in ("on", "true", "1"))
    try:
        sizes = [int(b) for b in _split(batch_sizes, "--batch-sizes")]
    except ValueError:
        raise BadInputError(f"--batch-sizes {batch_sizes!r}: comma-separated integers") from None
    opt = BenchOptions(models=models, precisions=[p.lower() for p in _split(precision,
                                                                             "--precision")],
                       compiles=comps, batch_sizes=sizes, seconds=seconds, warmup=warmup,
                       out=out, gsd=gsd, price_per_hour=price_per_hour, dataloader=dataloader,
                       num_workers=num_workers, device=device, threads=threads)

    def on_row(r: dict[str, Any]) -> None:
        tag = "skip (in CSV)" if r.get("skipped") else r.get("status")
        console.print(f"  {_label(r)} {r['precision']} compile={r['compile']} "
                      f"bs={r['batch_size_requested']} {r['mode']}: {_num(r.get('img_s'))} img/s"
                      f"  [{tag}]", highlight=False)

    rows = run_bench(opt, on_row=on_row)
    table = Table(title=f"throughput on {rows[0]['device'] if rows else device} "
                        f"(Earth = {LAND_AREA_KM2 / 1e6:.0f} M km² of land, once)",
                  header_style="bold")
    for col in ("model", "prec", "comp", "mode", "bs", "img/s", "p50/p95 ms", "peak MB",
                "km²/s", "Earth", f"at ${price_per_hour:g}/h", "50% ovl."):
        table.add_column(col, justify="left" if col in ("model", "mode") else "right")
    skipped = []
    for r in rows:
        if r.get("status") != "ok":
            skipped.append(r)
            continue
        bs = str(r.get("batch_size") or r["batch_size_requested"])
        if str(r.get("batch_size")) not in ("", str(r["batch_size_requested"])):
            bs += f" (of {r['batch_size_requested']}, OOM)"
        cost = r.get("earth_cost")
        table.add_row(_label(r), str(r["precision"]), str(r["compile"]),
                      str(r["mode"]) + ("*" if r.get("skipped") else ""), bs,
                      _num(r.get("img_s")),
                      f"{_num(r.get('latency_p50_ms'))}/{_num(r.get('latency_p95_ms'))}",
                      _num(r.get("peak_mem_mb"), 0), _num(r.get("km2_per_s")),
                      _hours(r.get("earth_hours")),
                      "—" if cost in (None, "") else f"${float(cost):,.0f}",
                      _hours(r.get("earth_hours_overlap50")))
    console.print(table)
    if any(r.get("skipped") for r in rows):
        console.print("* already in the CSV (not measured again; delete rows to re-measure)")
    for r in skipped:
        console.print(f"{_label(r)} {r['precision']} compile={r['compile']} "
                      f"bs={r['batch_size_requested']} {r['mode']}: {r.get('status')} "
                      f"{r.get('note') or ''}", highlight=False)
    for s in pipeline_shares(rows):
        console.print(f"input pipeline share ({_label(s)}, {s['precision']}, "
                      f"compile {s['compile']}, bs {s['batch_size']}): "
                      f"{s['input_share'] * 100:.0f}% of wall time "
                      f"(model alone {s['model_img_s']:.1f} img/s, with reading "
                      f"{s['pipeline_img_s']:.1f} img/s)", highlight=False)
    console.print(f"[green]results[/] {out}  (hardware: "
                  f"{out.with_name(out.stem + '.hardware.json')})")
