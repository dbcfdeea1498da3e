"""Clouds, their shadows, the adjacency ring, thin cirrus and swath edges of one pass.

The cloud field of a pass is a continuous function of location (the pass seed), so every tile
of the pass, in either zone, sees the same clouds; the threshold comes from a fixed reference
sample over the region, not from the grid being drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from terrastill.world.grid import LocalFrame, ZoneGrid
from terrastill.world.noise import fbm
from terrastill.world.schedule import Pass

CLOUD_SCALE_KM = 2.0
ADJACENT_MARGIN = 0.07  # field units below the cloud threshold that count as "adjacent"


@dataclass
class PassMasks:
    """Boolean layers of one pass on one zone grid (native resolution)."""

    cloud: np.ndarray
    shadow: np.ndarray
    adjacent: np.ndarray
    cirrus: np.ndarray
    nodata: np.ndarray
    opacity: np.ndarray  # 0..1 where cloud

    @property
    def clear(self) -> np.ndarray:
        return ~(self.cloud | self.shadow | self.adjacent | self.cirrus | self.nodata)


def _field(x: np.ndarray, y: np.ndarray, p: Pass) -> np.ndarray:
    return fbm(x, y, CLOUD_SCALE_KM, p.seed, octaves=4) + 0.35 * fbm(
        x, y, 9.0, p.seed + 1, octaves=2)


def threshold(p: Pass, bbox_km: tuple[float, float, float, float]) -> float:
    """Field value above which a pixel is cloud, for the pass's target cloud fraction."""
    if p.cloud_frac <= 0:
        return math.inf
    x0, y0, x1, y1 = bbox_km
    gx, gy = np.meshgrid(np.linspace(x0, x1, 97), np.linspace(y0, y1, 97))
    return float(np.quantile(_field(gx, gy, p), 1.0 - p.cloud_frac))


def _upsample(a: np.ndarray, f: int, h: int, w: int, off: int) -> np.ndarray:
    """Bilinear resample of a coarse array (cell = f native pixels, origin shifted by ``off``
    coarse cells) to the native h x w grid."""
    if f == 1:
        return a[off:off + h, off:off + w]
    pos_r = (np.arange(h) + 0.5) / f - 0.5 + off
    pos_c = (np.arange(w) + 0.5) / f - 0.5 + off
    r0 = np.floor(pos_r).astype(int)
    c0 = np.floor(pos_c).astype(int)
    fr = (pos_r - r0)[:, None]
    fc = (pos_c - c0)[None, :]
    a00 = a[np.ix_(r0, c0)]
    a01 = a[np.ix_(r0, c0 + 1)]
    a10 = a[np.ix_(r0 + 1, c0)]
    a11 = a[np.ix_(r0 + 1, c0 + 1)]
    return (a00 * (1 - fc) + a01 * fc) * (1 - fr) + (a10 * (1 - fc) + a11 * fc) * fr


def pass_masks(p: Pass, grid: ZoneGrid, frame: LocalFrame, x: np.ndarray, y: np.ndarray,
               thr: float) -> PassMasks:
    """The masks of pass ``p`` on ``grid``; ``x, y`` are the grid's km coordinates."""
    h, w = grid.height, grid.width
    zeros = np.zeros((h, w), dtype=bool)
    nodata = zeros.copy()
    if p.edge is not None:
        a, b, c = p.edge
        nodata = (x * a + y * b) > c
    if not math.isfinite(thr) and not p.cirrus:
        return PassMasks(zeros, zeros.copy(), zeros.copy(), zeros.copy(), nodata,
                         np.zeros((h, w), dtype=np.float32))
    res = grid.resolution
    f = max(1, round(60.0 / res))  # evaluate the field on a ~60 m lattice, then interpolate
    cres = res * f
    sx = round(p.shadow_km[0] * 1000 / cres)
    sy = round(p.shadow_km[1] * 1000 / cres)
    pad = max(abs(sx), abs(sy)) + 2
    lon, lat = grid.lonlat_of(cres, pad=pad)
    cx, cy = frame.to_km(lon, lat)
    cloud = zeros.copy()
    shadow = zeros.copy()
    adjacent = zeros.copy()
    opacity = np.zeros((h, w), dtype=np.float32)
    if math.isfinite(thr):
        fld = _field(cx, cy, p)
        cf = _upsample(fld, f, h, w, pad)
        hc, wc = fld.shape
        shifted = np.full_like(fld, -9.0)
        # shifted[r, c] = fld[r + sy, c - sx]: the field at p - s (rows grow southwards)
        r_dst = slice(max(0, -sy), min(hc, hc - sy))
        c_dst = slice(max(0, sx), min(wc, wc + sx))
        r_src = slice(r_dst.start + sy, r_dst.stop + sy)
        c_src = slice(c_dst.start - sx, c_dst.stop - sx)
        shifted[r_dst, c_dst] = fld[r_src, c_src]
        sf = _upsample(shifted, f, h, w, pad)
        cloud = cf > thr
        shadow = (sf > thr) & ~cloud
        adjacent = ((cf > thr - ADJACENT_MARGIN) | (sf > thr - ADJACENT_MARGIN)) & ~cloud & ~shadow
        opacity = np.clip(0.55 + (cf - thr) / 0.2, 0.0, 1.0).astype(np.float32) * cloud
    cirrus = zeros.copy()
    if p.cirrus:
        cfld = fbm(cx, cy, 6.0, p.seed + 17, octaves=2)
        cirrus = _upsample(cfld, f, h, w, pad) > 0.15
    for m in (cloud, shadow, adjacent, cirrus):
        m &= ~nodata
    opacity[nodata] = 0
    return PassMasks(cloud, shadow, adjacent, cirrus, nodata, opacity)
