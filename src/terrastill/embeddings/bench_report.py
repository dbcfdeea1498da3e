"""Readable reports of an embed-bench run: a Markdown table and a bytes-vs-accuracy Pareto plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def pct(v: Any, signed: bool = False, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{100 * v:+.{digits}f}" if signed else f"{100 * v:.{digits}f}"


def num(v: Any, fmt: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, fmt)


def interval(r: dict[str, Any], name: str) -> str:
    return f"{pct(r.get(f'{name}_diff'), True)} [{pct(r.get(f'{name}_ci_lo'), True)}, " \
           f"{pct(r.get(f'{name}_ci_hi'), True)}]"


def cells(r: dict[str, Any]) -> list[str]:
    """One result row as display strings (shared by the Markdown and console tables)."""
    if r.get("status") != "ok":
        return [r["method"], "—", "—", "—", "—", "—", "—", "—", "—", "—", "—", "—",
                str(r.get("status"))]
    worst = "—" if r.get("worst_class_knn") is None else \
        f"{r['worst_class_knn']} ({r['worst_f1_drop_knn']:+.3f})"
    return [r["method"], str(r["bytes_per_embedding"]), f"{r['ratio']:.3g}×",
            pct(r["knn_acc"]), interval(r, "knn"), num(r["knn_mcnemar_p"]),
            pct(r["linear_acc"]), interval(r, "linear"), num(r["linear_mcnemar_p"]),
            num(r["recall_at_10"]), pct(r.get("pca_explained_variance"), digits=2), worst, ""]


CONSOLE = (0, 1, 2, 3, 4, 6, 7, 9, 12)  # the columns a terminal shows (p values: Markdown)
HEADERS = ["method", "B/emb", "ratio", "kNN %", "Δ kNN pp [95% CI]", "p (McNemar)",
           "linear %", "Δ linear pp [95% CI]", "p (McNemar)", "recall@10", "PCA var %",
           "worst class kNN (ΔF1)", "note"]


def markdown(summary: dict[str, Any]) -> str:
    """The results as a Markdown document: context line, table, protocol."""
    c = summary["counts"]
    lines = [f"# embed-bench: {summary['input']}", "",
             f"{summary['rows']} rows, {summary['dim']} dims, {len(summary['classes'])} "
             f"classes; split: {summary['split']} ({c['train']} train, {c['db'] - c['train']} "
             f"val, {c['test']} test); k = {summary['k']}, {summary['bootstrap']} bootstrap "
             f"resamples, seed {summary['seed']}.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in summary["methods"]]
    lines += ["", f"Protocol: {summary['protocol']}. Δ = method − float32 on the same test "
                  "rows; the interval resamples test rows. Bytes exclude the stored parameters.",
              ""]
    return "\n".join(lines)


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    best, out = -1.0, []
    for x, y in sorted(points):
        if y > best:
            out.append((x, y))
            best = y
    return out


def pareto_png(summary: dict[str, Any], path: Path) -> Path:
    """Bytes per embedding (log) vs kNN and linear accuracy, front marked; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from terrastill.atomic import atomic_path

    rows = [r for r in summary["methods"] if r.get("status") == "ok"]
    fig = Figure(figsize=(11, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    for i, (key, title) in enumerate((("knn_acc", f"kNN (k={summary['k']})"),
                                      ("linear_acc", "linear probe"))):
        ax = fig.add_subplot(1, 2, i + 1)
        pts = [(float(r["bytes_per_embedding"]), 100 * float(r[key])) for r in rows]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, zorder=3)
        names: dict[tuple[float, float], list[str]] = {}
        for r, p in zip(rows, pts, strict=True):  # one label per point, however many share it
            names.setdefault((p[0], round(p[1], 6)), []).append(r["method"])
        for (x, y), ns in names.items():
            ax.annotate("\n".join(ns), (x, y), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        front = _front(pts)
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:red",
                lw=1, label="Pareto front")
        if rows:
            ax.axhline(100 * float(rows[0][key]), color="grey", ls="--", lw=0.8,
                       label="float32")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per embedding")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{Path(summary['input']).name}: {summary['dim']} dims, "
                 f"{summary['counts']['test']} test rows", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
