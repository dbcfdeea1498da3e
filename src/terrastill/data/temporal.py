"""Acquisition choice: T target dates per observation group, least-cloudy within tolerance."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from terrastill.data.read import Acquisition


@dataclass(frozen=True)
class TemporalOptions:
    """How many steps, how far apart, how much slack, and the cloud limit over the chip."""

    num_steps: int = 3
    temporal_step: int = 30  # days between target dates
    temporal_tolerance: int = 5  # ± days around each target date
    max_cloud: float = 50.0  # percent of the chip window masked (cloud, shadow, nodata)

    def targets(self, last: dt.date) -> list[dt.date]:
        """Target dates, oldest first; the last one is the observation date."""
        return [last - dt.timedelta(days=self.temporal_step * (self.num_steps - 1 - k))
                for k in range(self.num_steps)]

    def search_window(self, last: dt.date) -> tuple[dt.date, dt.date]:
        """The date interval any step may draw from."""
        t = self.targets(last)
        tol = dt.timedelta(days=self.temporal_tolerance)
        return t[0] - tol, t[-1] + tol


def group_acquisitions(items: Iterable[dict]) -> list[Acquisition]:
    """Group STAC item dicts by (collection, UTC day): one acquisition per pass and sensor."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for it in items:
        day = str(it["properties"]["datetime"])[:10]
        groups[(it.get("collection") or "", day)].append(it)
    return [
        Acquisition(coll, day, tuple(sorted(its, key=lambda i: i["id"])))
        for (coll, day), its in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


@dataclass(frozen=True)
class StepChoice:
    """The acquisition chosen for one step, or why none could be."""

    step: int
    target: dt.date
    acquisition: Acquisition | None
    invalid_fraction: float | None
    reason: str = ""


def choose_steps(
    acquisitions: Sequence[Acquisition],
    last: dt.date,
    opts: TemporalOptions,
    invalid_fraction: Callable[[Acquisition], float],
    source_title: str = "",
) -> list[StepChoice]:
    """Pick, for each target date, the acquisition with the least masked chip area.

    Ties break on closeness to the target, then on the earlier date, then collection id.
    An acquisition serves at most one step. ``invalid_fraction`` measures the masked share of
    the chip window (so a scene that is cloudy elsewhere but clear over the chip wins).
    """
    tol = opts.temporal_tolerance
    used: set[str] = set()
    cache: dict[str, float] = {}
    out: list[StepChoice] = []
    name = source_title or "source"
    for k, target in enumerate(opts.targets(last)):
        cands = [a for a in acquisitions
                 if abs((a.day - target).days) <= tol and a.key not in used]
        if not cands:
            out.append(StepChoice(k, target, None, None,
                                  f"no {name} item within ±{tol} days of {target} at step {k}"))
            continue
        scored = []
        for a in cands:
            if a.key not in cache:
                cache[a.key] = invalid_fraction(a)
            scored.append((round(cache[a.key], 9), abs((a.day - target).days), a.date,
                           a.collection, a))
        scored.sort(key=lambda s: s[:4])
        best_frac, *_rest, best = scored[0]
        if best_frac * 100 > opts.max_cloud:
            out.append(StepChoice(
                k, target, None, best_frac,
                f"all {len(cands)} {name} acquisitions within ±{tol} days of {target} at step "
                f"{k} exceed {opts.max_cloud:g}% masked over the chip (least: "
                f"{best_frac * 100:.1f}% on {best.date})"))
            continue
        used.add(best.key)
        out.append(StepChoice(k, target, best, best_frac))
    return out
