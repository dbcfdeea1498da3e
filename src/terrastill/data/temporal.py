"""Acquisition choice: T target dates per observation group, least-cloudy within tolerance."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


class StepPicks:
    """The acquisition choice of many windows that share one candidate list.

    ``index[w, k]`` is the position in ``acquisitions`` of window ``w``'s choice for step
    ``k`` (-1: none), ``best[w, k]`` the position of its least masked candidate (chosen
    unless over the cloud limit; -1 when no candidate was left), ``fraction[w, k]`` that
    candidate's masked share (NaN when none was left) and ``available[w, k]`` how many
    candidates were left for that step.
    """

    def __init__(self, acquisitions: Sequence[Acquisition], targets: list[dt.date],
                 opts: TemporalOptions, source_title: str, n: int):
        self.acquisitions, self.targets, self.opts = acquisitions, targets, opts
        self.name = source_title or "source"
        self.index = np.full((n, len(targets)), -1, dtype=np.int64)
        self.fraction = np.full((n, len(targets)), np.nan)
        self.available = np.zeros((n, len(targets)), dtype=np.int64)
        self.best = np.full((n, len(targets)), -1, dtype=np.int64)

    def chosen(self, w: int) -> list[Acquisition] | None:
        """Window ``w``'s acquisitions, one per step; None when a step has none."""
        row = self.index[w]
        return None if (row < 0).any() else [self.acquisitions[i] for i in row]

    def reason(self, w: int, k: int) -> str:
        """Why window ``w`` has no acquisition at step ``k`` ("" when it has one)."""
        if self.index[w, k] >= 0:
            return ""
        tol, target = self.opts.temporal_tolerance, self.targets[k]
        if not self.available[w, k]:
            return f"no {self.name} item within ±{tol} days of {target} at step {k}"
        best = self.acquisitions[self.best[w, k]]
        return (f"all {self.available[w, k]} {self.name} acquisitions within ±{tol} days of "
                f"{target} at step {k} exceed {self.opts.max_cloud:g}% masked over the chip "
                f"(least: {self.fraction[w, k] * 100:.1f}% on {best.date})")

    def first_reason(self, w: int) -> str:
        """The reason of window ``w``'s first step without an acquisition ("" if none)."""
        missing = np.flatnonzero(self.index[w] < 0)
        return self.reason(w, int(missing[0])) if missing.size else ""

    def step_choices(self, w: int) -> list[StepChoice]:
        """Window ``w``'s choice as one :class:`StepChoice` per step."""
        out = []
        for k, target in enumerate(self.targets):
            i, frac = self.index[w, k], self.fraction[w, k]
            out.append(StepChoice(k, target, self.acquisitions[i] if i >= 0 else None,
                                  None if np.isnan(frac) else float(frac), self.reason(w, k)))
        return out


def pick_steps(
    acquisitions: Sequence[Acquisition],
    last: dt.date,
    opts: TemporalOptions,
    fractions: Callable[[Acquisition], np.ndarray],
    n: int,
    source_title: str = "",
) -> StepPicks:
    """For each of ``n`` windows and each target date, the acquisition with the least masked
    share of the window, all windows at once.

    ``fractions(a)`` gives acquisition ``a``'s masked share of every window (shape (n,)); it
    is called once per acquisition within tolerance of some target, in list order. Ties break
    on closeness to the target, then on the earlier date, then collection id. An acquisition
    serves at most one step of a window. A step whose least masked share exceeds
    ``opts.max_cloud`` percent has no acquisition.
    """
    targets = opts.targets(last)
    picks = StepPicks(acquisitions, targets, opts, source_title, n)
    tol = opts.temporal_tolerance
    shares: dict[int, np.ndarray] = {}
    used = np.zeros((n, len(acquisitions)), dtype=bool)
    rows = np.arange(n)
    for k, target in enumerate(targets):
        near = [i for i, a in enumerate(acquisitions) if abs((a.day - target).days) <= tol]
        for i in near:
            if i not in shares:  # rounded: float noise must not outweigh the tie breaks
                shares[i] = np.round(np.asarray(fractions(acquisitions[i]), float), 9)
        if not near:
            continue
        # candidates in tie-break order, so the first least share wins
        near.sort(key=lambda i: (abs((acquisitions[i].day - target).days),
                                 acquisitions[i].date, acquisitions[i].collection))
        cand = np.array(near)
        score = np.where(used[:, cand], np.inf, np.stack([shares[i] for i in near], axis=1))
        j = np.argmin(score, axis=1)
        frac = score[rows, j]
        left = (~used[:, cand]).sum(axis=1)
        ok = left > 0
        picks.available[:, k] = left
        picks.best[ok, k] = cand[j[ok]]
        picks.fraction[ok, k] = frac[ok]
        take = ok & (frac * 100 <= opts.max_cloud)
        picks.index[take, k] = cand[j[take]]
        used[rows[take], cand[j[take]]] = True
    return picks


def choose_steps(
    acquisitions: Sequence[Acquisition],
    last: dt.date,
    opts: TemporalOptions,
    invalid_fraction: Callable[[Acquisition], float],
    source_title: str = "",
) -> list[StepChoice]:
    """Pick, for each target date, the acquisition with the least masked chip area
    (:func:`pick_steps` for one window).

    ``invalid_fraction`` measures the masked share of the chip window (so a scene that is
    cloudy elsewhere but clear over the chip wins).
    """
    picks = pick_steps(acquisitions, last, opts,
                       lambda a: np.array([invalid_fraction(a)]), 1, source_title)
    return picks.step_choices(0)


CLEAR_PERCENT = 25.0  # a step whose clearest acquisition averages at most this is "clear"


def clear_dates(items: Sequence[Any], opts: TemporalOptions) -> dict[dt.date, float]:
    """For each acquisition date of ``items`` (pystac items or dicts with a datetime and
    ``eo:cloud_cover``), how cloudy its cloudiest step is at best: per step the clearest date
    within the tolerance (a date's cloud is the mean over its scenes), the worst of the steps.
    It ranks dates from the scene metadata alone, before any pixel is read."""
    covers: dict[dt.date, list[float]] = defaultdict(list)
    for it in items:
        props = it["properties"] if isinstance(it, dict) else it.properties
        when = str(props.get("datetime") or "")[:10] if isinstance(it, dict) else (
            it.datetime.date().isoformat() if it.datetime else "")
        if when:
            covers[dt.date.fromisoformat(when)].append(
                float(props.get("eo:cloud_cover", 100.0)))
    mean = {d: sum(v) / len(v) for d, v in covers.items()}
    days = sorted(mean)
    out = {}
    for day in days:
        per_step = [min((c for d, c in mean.items()
                         if abs((d - t).days) <= opts.temporal_tolerance), default=100.0)
                    for t in opts.targets(day)]
        out[day] = max(per_step)
    return out


def clearest_date(items: Sequence[Any], opts: TemporalOptions, first: dt.date | None = None,
                  last: dt.date | None = None) -> dt.date | None:
    """A date in [first, last] to predict on: the latest whose every step is clear (a date
    within the tolerance with at most CLEAR_PERCENT cloud), else the one whose cloudiest step
    is clearest; None without imagery."""
    scores = {d: c for d, c in clear_dates(items, opts).items()
              if (first is None or d >= first) and (last is None or d <= last)}
    if not scores:
        return None
    clear = [d for d, c in scores.items() if c <= CLEAR_PERCENT]
    return max(clear) if clear else min(scores, key=lambda d: (scores[d], -d.toordinal()))
