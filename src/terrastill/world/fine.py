"""A finer truth for Sentinel-2 worlds: metre-scale surfaces seen through a known PSF and known
per-acquisition sub-pixel shifts, so super-resolution can be scored against the truth.

With ``fine_factor`` f > 1 each pass's surface is drawn on a grid f times finer than 10 m (the
same continuous world plus small structures: 6 m field tracks, 30 m town blocks with streets
and roofs), shifted by the pass's ``(dx, dy)`` metres, blurred by a Gaussian of ``fine_psf``
metres and averaged over each 10 m pixel (the pixel integral); noise and clouds follow as usual.
The unshifted, unblurred fine surface of the 10 m bands is saved per pass and zone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from scipy.ndimage import correlate1d
from scipy.special import erf

from terrastill.world import scenes, spectra
from terrastill.world.config import WorldConfig
from terrastill.world.noise import hash01
from terrastill.world.schedule import Pass
from terrastill.world.truth import CROPLAND, PARCEL_KM, URBAN, WATER

if TYPE_CHECKING:
    from terrastill.world.build import World, ZoneData

FINE_BANDS = ("blue", "green", "red", "nir")
FINE_FIELDS = {"fine_factor", "fine_psf", "fine_shift"}
TRUTH_SCALE = 0.0001
TRACK_M = 6.0  # width of the tracks between cropland parcels
BLOCK_M = 30.0  # town block (one building and its streets)
STREET_M = 5.0


def config_exclude(config: WorldConfig) -> set[str]:
    """Config fields left out of ``world.json`` (the fine fields of an ordinary world)."""
    return set() if config.fine_factor > 1 else set(FINE_FIELDS)


def pass_shift(seed: int, index: int, std: float) -> tuple[float, float]:
    """The known (dx east, dy north) metres of a pass: N(0, std²) per axis, clipped at 3 std."""
    rng = np.random.default_rng([seed, index, 1919])
    d = np.clip(rng.normal(0.0, std, size=2), -3 * std, 3 * std)
    return round(float(d[0]), 4), round(float(d[1]), 4)


def psf_kernel(shift_px: float, sigma_px: float, radius: int) -> np.ndarray:
    """1-D weights ``w[k]``, k = -radius..radius, of ``out[i] = Σ w[k] in[i+k]``: a Gaussian of
    ``sigma_px`` integrated over each (fine) pixel, centred at ``-shift_px`` so that content
    moves by ``+shift_px``; normalised to sum 1."""
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    if sigma_px <= 0:
        raise ValueError("sigma must be positive")
    s = 1.0 / (sigma_px * math.sqrt(2.0))
    w = 0.5 * (erf((k + 0.5 + shift_px) * s) - erf((k - 0.5 + shift_px) * s))
    return w / w.sum()


def degrade(fine: np.ndarray, factor: int, pad: int, sigma_px: float,
            shift_px: tuple[float, float]) -> np.ndarray:
    """Coarse pixels of a padded fine array (C, H·f + 2·pad, W·f + 2·pad): shift by
    ``shift_px`` = (columns east, rows south) fine pixels, blur (Gaussian, ``sigma_px``),
    crop the pad and average each f × f block."""
    radius = pad
    kx = psf_kernel(shift_px[0], sigma_px, radius)
    ky = psf_kernel(shift_px[1], sigma_px, radius)
    out = correlate1d(fine.astype(np.float64), kx, axis=-1, mode="nearest")
    out = correlate1d(out, ky, axis=-2, mode="nearest")
    if pad:
        out = out[..., pad:-pad, pad:-pad]
    c, h, w = out.shape
    return out.reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4)).astype(
        np.float32)


def pad_px(config: WorldConfig) -> int:
    """Fine pixels of margin that every shift and the PSF tail can reach."""
    res = config.resolution / config.fine_factor
    return math.ceil((3 * config.fine_shift + 4 * config.fine_psf) / res) + 1


@dataclass
class FineZone:
    """The static world of one zone on its padded fine grid."""

    x: np.ndarray
    y: np.ndarray
    landcover: np.ndarray
    permanent_water: np.ndarray
    flood_zone: np.ndarray
    texture: np.ndarray
    tracks: np.ndarray  # cropland parcel edges
    streets: np.ndarray  # town streets
    roofs: np.ndarray  # roof brightness factor (0 where no roof)


_CACHE: dict[tuple[int, int], FineZone] = {}


def fine_zone(world: World, zone: ZoneData) -> FineZone:
    """The padded fine grid of ``zone`` (computed once per process)."""
    key = (id(world), zone.grid.epsg)
    got = _CACHE.get(key)
    if got is not None:
        return got
    from terrastill.world.build import _texture

    cfg = world.config
    res = cfg.resolution / cfg.fine_factor
    lon, lat = zone.grid.lonlat_of(res, pad=pad_px(cfg))
    x, y = world.frame.to_km(lon, lat)
    truth = world.truth
    pw = truth.permanent_water(x, y)
    lc = truth.landcover(x, y, water=pw)
    xm, ym = x * 1000.0, y * 1000.0
    # tracks along the parcel edges (parcels are PARCEL_KM by 0.7 PARCEL_KM)
    px, py = PARCEL_KM * 1000.0, PARCEL_KM * 700.0
    ex = np.minimum(np.mod(xm, px), px - np.mod(xm, px))
    ey = np.minimum(np.mod(ym, py), py - np.mod(ym, py))
    tracks = ((ex < TRACK_M / 2) | (ey < TRACK_M / 2)) & (lc == CROPLAND)
    # town blocks: streets along two sides, one building of 10-22 m per block
    bx, by = np.floor(xm / BLOCK_M), np.floor(ym / BLOCK_M)
    u, v = xm - bx * BLOCK_M, ym - by * BLOCK_M
    town = lc == URBAN
    streets = town & ((u < STREET_M) | (v < STREET_M))
    size = 10.0 + 12.0 * hash01(bx, by, cfg.seed + 1919)
    inside = (u >= STREET_M + 1) & (u < STREET_M + 1 + size) & (v >= STREET_M + 1) & (
        v < STREET_M + 1 + size)
    roofs = np.where(town & inside & ~streets,
                     1.25 + 0.5 * hash01(bx, by, cfg.seed + 1920), 0.0).astype(np.float32)
    fz = FineZone(x, y, lc, pw, truth.flood_zone(x, y, water=pw), _texture(x, y, cfg.seed),
                  tracks, streets, roofs)
    _CACHE[key] = fz
    return fz


def fine_surface(world: World, fz: FineZone, p: Pass, bands: tuple[str, ...]) -> np.ndarray:
    """(len(bands), Hf, Wf) float32 noise-free surface on the padded fine grid on pass ``p``."""
    truth = world.truth
    when = p.date
    water = fz.permanent_water.copy()
    if truth.flood_date <= when and (truth.flood_end is None or when < truth.flood_end):
        water |= fz.flood_zone
    veg = truth.vegetation(fz.landcover, fz.x, fz.y, when)
    out = spectra.surface(fz.landcover, veg, water, fz.texture, bands)
    dry = ~water & (fz.landcover != WATER)
    idx = [spectra.BANDS.index(b) for b in bands]
    track = fz.tracks & dry
    out[:, track] = spectra.SPECTRA["bare"][idx][:, None] * fz.texture[track][None]
    out[:, fz.streets & dry] *= np.float32(0.55)
    roof = (fz.roofs > 0) & dry
    out[:, roof] *= fz.roofs[roof][None]
    return out


def render_pass(world: World, zone: ZoneData, p: Pass, bands: tuple[str, ...],
                out: Path) -> np.ndarray:
    """The 10 m surface of pass ``p`` over ``zone`` seen through the shift and PSF (C, H, W);
    writes the pass's fine truth (the 10 m bands, unshifted) as a side effect."""
    cfg = world.config
    f = cfg.fine_factor
    res = cfg.resolution / f
    fz = fine_zone(world, zone)
    surf = fine_surface(world, fz, p, bands)
    pad = pad_px(cfg)
    dx, dy = pass_shift(cfg.seed, p.index, cfg.fine_shift)
    coarse = degrade(surf, f, pad, cfg.fine_psf / res, (dx / res, -dy / res))
    keep = [bands.index(b) for b in FINE_BANDS if b in bands]
    truth = surf[keep][:, pad:-pad, pad:-pad]
    dn = np.clip(np.rint(truth / TRUTH_SCALE), 1, 65535).astype(np.uint16)
    g = zone.grid
    tr = Affine(res, 0.0, g.x0, 0.0, -res, g.y0)
    scenes.write_cog(out / truth_path(g.epsg, p), dn, tr, g.epsg, 0, "average",
                     descriptions=[bands[i] for i in keep],
                     tags={"scale": str(TRUTH_SCALE), "date": p.date.isoformat(),
                           "shift_m": f"{dx} {dy}", "psf_sigma_m": str(cfg.fine_psf)})
    return coarse


def truth_path(epsg: int, p: Pass) -> str:
    return f"truth/fine/{epsg}/{p.date.isoformat()}.tif"


def manifest_section(world: World) -> dict[str, Any]:
    """``world.json``'s ``fine`` entry: factor, PSF, shifts per date and the truth files."""
    cfg = world.config
    return {
        "factor": cfg.fine_factor,
        "resolution": cfg.resolution / cfg.fine_factor,
        "psf_sigma": cfg.fine_psf,
        "shift_std": cfg.fine_shift,
        "bands": list(FINE_BANDS),
        "scale": TRUTH_SCALE,
        "shift_convention": "dx east, dy north, metres; content at u appears at u + (dx, dy)",
        "shifts": {p.date.isoformat(): list(pass_shift(cfg.seed, p.index, cfg.fine_shift))
                   for p in world.passes},
        "truth": {str(z.grid.epsg): {p.date.isoformat(): truth_path(z.grid.epsg, p)
                                     for p in world.passes} for z in world.zones},
    }
