"""Automatic student depth: candidate depths, the (pure) choice rule, and the search report.

:func:`choose_depth` is a pure function of a search table, so the rule is testable without
training anything:

- ``mode="max"`` (mIoU, accuracy: values in [0, 1]): a candidate is within tolerance when
  ``metric >= teacher − tolerance / 100`` (``tolerance`` in percentage points);
- ``mode="min"`` (RMSE): when ``metric <= teacher · (1 + tolerance / 100)`` (percent).

The smallest depth within tolerance wins. When none is, the best-scoring candidate is returned
with ``within_tolerance=False`` (ties: the smaller depth), so the run still produces a student
and says why.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terrastill.errors import BadInputError


@dataclass(frozen=True)
class DepthChoice:
    depth: int
    within_tolerance: bool
    within: tuple[int, ...]  # every candidate depth within tolerance
    threshold: float | None
    reason: str


def candidate_depths(teacher_depth: int, candidates: str | Sequence[int] | None = None
                     ) -> list[int]:
    """Sorted unique candidate depths: ``"1,2,4"`` / ``[1, 2, 4]``, default 1..depth−1."""
    if candidates is None or candidates == "" or candidates == "all":
        out = list(range(1, max(teacher_depth, 2)))
    else:
        if isinstance(candidates, str):
            try:
                out = [int(v) for v in candidates.split(",") if v.strip()]
            except ValueError:
                raise BadInputError(f"--candidates {candidates!r}: comma-separated block counts"
                                    ) from None
        else:
            out = [int(v) for v in candidates]
    bad = [d for d in out if not 1 <= d <= teacher_depth]
    if bad or not out:
        raise BadInputError(f"--candidates: depths must be in 1..{teacher_depth} (the "
                            f"teacher's blocks), got {out}")
    return sorted(set(out))


def _finite(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def within_tolerance(metric: float | None, teacher_metric: float, tolerance: float,
                     mode: str = "max") -> bool:
    if not _finite(metric):
        return False
    if mode == "max":
        return float(metric) >= teacher_metric - tolerance / 100.0 - 1e-12
    return float(metric) <= teacher_metric * (1 + tolerance / 100.0) + 1e-12


def choose_depth(rows: Iterable[tuple[int, float | None]], teacher_metric: float | None,
                 tolerance: float = 1.0, mode: str = "max") -> DepthChoice:
    """Smallest depth whose metric is within ``tolerance`` of ``teacher_metric``.

    ``rows``: (depth, validation metric) pairs in any order; a ``None``/NaN metric never
    qualifies. ``mode``: ``"max"`` (higher is better, tolerance in points of a [0, 1] metric
    ×100) or ``"min"`` (lower is better, tolerance in percent).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    table = sorted((int(d), m) for d, m in rows)
    if not table:
        raise BadInputError("the depth search has no candidates")
    if not _finite(teacher_metric):
        best = table[-1][0]
        return DepthChoice(best, False, (), None,
                           "the teacher has no validation metric; took the deepest candidate")
    t = float(teacher_metric)
    threshold = t - tolerance / 100.0 if mode == "max" else t * (1 + tolerance / 100.0)
    within = tuple(d for d, m in table if within_tolerance(m, t, tolerance, mode))
    if within:
        d = within[0]
        return DepthChoice(d, True, within, threshold,
                           f"smallest depth with metric {'>=' if mode == 'max' else '<='} "
                           f"{threshold:.4f}")
    scored = [(d, float(m)) for d, m in table if _finite(m)]
    if not scored:
        return DepthChoice(table[-1][0], False, (), threshold,
                           "no candidate has a metric; took the deepest")
    sign = -1.0 if mode == "max" else 1.0
    d = min(scored, key=lambda dm: (sign * dm[1], dm[0]))[0]
    return DepthChoice(d, False, (), threshold, "none within tolerance; took the best candidate")


# --- report ---------------------------------------------------------------------------------

COLUMNS = ("role", "depth", "params", "encoder_params", "macs", "encoder_macs", "img_s",
           "metric", "metric_name", "metric_interval", "evidence", "within_tolerance", "chosen",
           "epochs", "train_seconds")


def _fmt_int(v: Any) -> str:
    return "—" if v is None else f"{int(v):,}"


def _fmt_m(v: Any) -> str:
    return "—" if v is None else f"{float(v) / 1e6:.1f}"


def _fmt_f(v: Any, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{float(v):.{nd}f}"


def rich_table(rows: Sequence[dict[str, Any]], title: str = "depth search") -> Any:
    """A rich Table of the search (teacher first, candidates, the final student)."""
    from rich.table import Table

    metric = next((r.get("metric_name") for r in rows if r.get("metric_name")), "metric")
    table = Table(title=title, header_style="bold")
    for col, just in (("role", "left"), ("depth", "right"), ("params", "right"),
                      ("enc. MMACs", "right"), ("MMACs", "right"), ("img/s", "right"),
                      (metric, "right"), ("within tol.", "center")):
        table.add_column(col, justify=just, no_wrap=col == "role")
    for r in rows:
        role = r.get("role", "")
        if r.get("chosen"):
            role += " ✓"
        wt = r.get("within_tolerance")
        table.add_row(role, str(r.get("depth")), _fmt_int(r.get("params")),
                      _fmt_m(r.get("encoder_macs")), _fmt_m(r.get("macs")),
                      _fmt_f(r.get("img_s"), 1), _fmt_f(r.get("metric")),
                      "" if wt is None else ("yes" if wt else "no"))
    return table


def plot_search(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str],
                title: str = "accuracy vs cost", tolerance: float | None = None,
                mode: str = "max") -> Path:
    """PNG: validation metric against encoder MACs (log x), one point per depth."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt


    metric = next((r.get("metric_name") for r in rows if r.get("metric_name")), "metric")
    fig, ax = plt.subplots(figsize=(6, 4))
    cands = sorted((r for r in rows if r.get("role") == "candidate"
                    and _finite(r.get("metric"))), key=lambda r: r["encoder_macs"])
    if cands:
        ax.plot([r["encoder_macs"] / 1e6 for r in cands], [r["metric"] for r in cands], "-o",
                color="#1f77b4", label="students (short schedule)")
        for r in cands:
            ax.annotate(str(r["depth"]), (r["encoder_macs"] / 1e6, r["metric"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    teacher = next((r for r in rows if r.get("role") == "teacher"), None)
    if teacher and _finite(teacher.get("metric")):
        ax.scatter([teacher["encoder_macs"] / 1e6], [teacher["metric"]], marker="*", s=160,
                   color="#d62728", label=f"teacher ({teacher['depth']} blocks)", zorder=3)
        ax.axhline(teacher["metric"], color="#d62728", lw=0.6, ls=":")
        if tolerance is not None:
            t = float(teacher["metric"])
            thr = t - tolerance / 100.0 if mode == "max" else t * (1 + tolerance / 100.0)
            ax.axhline(thr, color="#7f7f7f", lw=0.8, ls="--",
                       label=f"tolerance ({tolerance:g} {'pp' if mode == 'max' else '%'})")
    final = next((r for r in rows if r.get("role") == "student"), None)
    if final and _finite(final.get("metric")):
        ax.scatter([final["encoder_macs"] / 1e6], [final["metric"]], marker="D", s=60,
                   color="#2ca02c", label=f"chosen student ({final['depth']} blocks, full)",
                   zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("encoder MMACs per chip (log)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    from terrastill.training.plots import save_figure

    return save_figure(fig, path)


def write_search_report(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str],
                        title: str = "depth search", tolerance: float | None = None,
                        mode: str = "max") -> dict[str, Path]:
    """``search.csv``, ``search.json`` and ``search.png`` in ``out_dir``."""
    from terrastill.atomic import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = [{k: r.get(k) for k in COLUMNS} for r in rows]
    with open(out / "search.csv.tmp", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in clean:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
    os.replace(out / "search.csv.tmp", out / "search.csv")
    write_text_atomic(out / "search.json", json.dumps(clean, indent=2))
    png = plot_search(rows, out / "search.png", title=title, tolerance=tolerance, mode=mode)
    return {"csv": out / "search.csv", "json": out / "search.json", "png": png}
