"""Field observations sampled from the truth: clustered points on clear dates, plus bad rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
from pyproj import Transformer

from terrastill.world.grid import ZoneGrid
from terrastill.world.truth import FLOOD_CLASSES, LANDCOVER_CLASSES

HISTORY_DAYS = 30  # observations are dated at least this long after the first acquisition


@dataclass
class ZoneState:
    """What the sampler needs of one zone: grid, truth layers and per-pass clear masks."""

    grid: ZoneGrid
    landcover: np.ndarray
    permanent_water: np.ndarray
    flood_zone: np.ndarray
    clear: dict[int, np.ndarray]  # pass index -> clear & valid mask (only passes with items)


def _homogeneous(a: np.ndarray, r: int, c: int) -> bool:
    win = a[r - 1:r + 2, c - 1:c + 2]
    return win.shape == (3, 3) and bool((win == win[1, 1]).all())


def sample(task: str, n: int, zones: list[ZoneState], pass_dates: dict[int, date],
           flood_date: date, flood_end: date | None,
           seed: int) -> list[tuple[float, float, str, str]]:
    """``n`` rows (lon, lat, ISO date, label name) for ``task`` ("landcover" or "flood")."""
    rng = np.random.default_rng([seed, 77, 0 if task == "landcover" else 1])
    rows: list[tuple[float, float, str, str]] = []
    if n == 0 or not zones:
        return rows
    res = zones[0].grid.resolution
    radius = max(1, round(300.0 / res))
    flood_cands = [np.flatnonzero(z.flood_zone) for z in zones]
    pts: list[tuple[int, int, int, int, str]] = []  # zone, row, col, pass, label

    def flooded_on(d: date) -> bool:
        return flood_date <= d and (flood_end is None or d < flood_end)

    # leave some history before each observation so multi-temporal chips can look back
    first = min(pass_dates.values()) + timedelta(days=HISTORY_DAYS) if pass_dates else None
    history = {i for i, d in pass_dates.items() if first is None or d >= first}
    if len(history) < max(2, len(pass_dates) // 3):
        history = set(pass_dates)
    attempts = 0
    while len(pts) < n and attempts < 200 * n:
        attempts += 1
        zi = int(rng.integers(len(zones)))
        z = zones[zi]
        h, w = z.landcover.shape
        if task == "flood" and flood_cands[zi].size and rng.random() < 0.5:
            k = int(flood_cands[zi][rng.integers(flood_cands[zi].size)])
            r0, c0 = divmod(k, w)
        else:
            r0, c0 = int(rng.integers(1, h - 1)), int(rng.integers(1, w - 1))
        size = int(rng.choice([1, 1, 1, 2, 3, 4]))
        cluster_pass = None
        for m in range(size):
            if len(pts) >= n:
                break
            r, c = r0, c0
            if m:
                r = int(np.clip(r0 + rng.integers(-radius, radius + 1), 1, h - 2))
                c = int(np.clip(c0 + rng.integers(-radius, radius + 1), 1, w - 2))
            r, c = int(np.clip(r, 1, h - 2)), int(np.clip(c, 1, w - 2))
            ok = [i for i, cl in z.clear.items() if cl[r, c] and i in history]
            if task == "flood":
                after = [i for i in ok if pass_dates[i] >= flood_date]
                before = [i for i in ok if pass_dates[i] < flood_date]
                ok = after if (after and (rng.random() < 0.75 or not before)) else before
            elif z.flood_zone[r, c]:
                ok = [i for i in ok if not flooded_on(pass_dates[i])]
            if not ok:
                continue
            pi = cluster_pass if cluster_pass in ok else int(ok[rng.integers(len(ok))])
            cluster_pass = pi
            if task == "landcover":
                if not _homogeneous(z.landcover, r, c):
                    continue
                label = LANDCOVER_CLASSES[int(z.landcover[r, c])]
            else:
                water = z.permanent_water[r - 1:r + 2, c - 1:c + 2].copy()
                if flooded_on(pass_dates[pi]):
                    water |= z.flood_zone[r - 1:r + 2, c - 1:c + 2]
                if not (water == water[1, 1]).all():
                    continue
                label = FLOOD_CLASSES[int(water[1, 1])]
            pts.append((zi, r, c, pi, label))
    for zi, z in enumerate(zones):
        mine = [(i, p) for i, p in enumerate(pts) if p[0] == zi]
        if not mine:
            continue
        g = z.grid
        jit = rng.uniform(-0.2, 0.2, size=(len(mine), 2))
        rc = np.array([[p[1], p[2]] for _, p in mine], dtype=np.float64)
        xs = g.x0 + (rc[:, 1] + 0.5 + jit[:, 0]) * g.resolution
        ys = g.y0 - (rc[:, 0] + 0.5 + jit[:, 1]) * g.resolution
        lon, lat = Transformer.from_crs(g.epsg, 4326, always_xy=True).transform(xs, ys)
        for (i, p), lo, la in zip(mine, lon, lat, strict=True):
            pts[i] = (float(lo), float(la), pass_dates[p[3]].isoformat(), p[4])  # type: ignore[assignment]
    return [tuple(p) for p in pts]  # type: ignore[misc]


def to_csv(rows: list[tuple]) -> str:
    lines = ["lon,lat,date,label"]
    for lon, lat, d, label in rows:
        lines.append(f"{lon:.6f},{lat:.6f},{d},{label}")
    return "\n".join(lines) + "\n"


BAD_KINDS = [
    ("missing lon", lambda r: ("", f"{r[1]:.6f}", r[2], r[3])),
    ("lat out of range", lambda r: (f"{r[0]:.6f}", "123.456789", r[2], r[3])),
    ("unparsable date", lambda r: (f"{r[0]:.6f}", f"{r[1]:.6f}", "2024-13-45", r[3])),
    ("unknown label", lambda r: (f"{r[0]:.6f}", f"{r[1]:.6f}", r[2], "wetland")),
    ("NaN coordinate", lambda r: ("NaN", f"{r[1]:.6f}", r[2], r[3])),
]


def with_bad_rows(rows: list[tuple], seed: int) -> tuple[str, list[dict]]:
    """The CSV with one bad row of each kind inserted; returns (text, [{row, line, reason}])."""
    rng = np.random.default_rng([seed, 99])
    good = [(f"{lo:.6f}", f"{la:.6f}", d, lab) for lo, la, d, lab in rows]
    out = list(good)
    bad: list[dict] = []
    template = rows[0] if rows else (12.0, 45.3, "2024-06-01", "cropland")
    positions = sorted(rng.choice(len(good) + len(BAD_KINDS), size=len(BAD_KINDS), replace=False))
    for pos, (_, make) in zip(positions, BAD_KINDS, strict=True):
        out.insert(int(pos), make(template))
    for pos, (reason, _) in zip(positions, BAD_KINDS, strict=True):
        bad.append({"row": int(pos), "line": int(pos) + 2, "reason": reason})
    text = "lon,lat,date,label\n" + "".join(",".join(r) + "\n" for r in out)
    return text, bad
