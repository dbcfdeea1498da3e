"""Physics-like surface reflectance (and C-band backscatter) per class, season and pixel."""

from __future__ import annotations

import numpy as np

from terrastill.world.clouds import PassMasks
from terrastill.world.truth import BARE, CROPLAND, FOREST, URBAN, WATER

# canonical band order used internally
BANDS = ("blue", "green", "red", "nir_narrow", "nir", "swir1", "swir2")

# typical surface reflectance (0..1) per band
_S = {
    "water": (0.055, 0.065, 0.045, 0.020, 0.022, 0.010, 0.006),
    "turbid": (0.080, 0.105, 0.095, 0.045, 0.048, 0.020, 0.012),
    "leaf": (0.030, 0.080, 0.035, 0.460, 0.450, 0.230, 0.105),
    "canopy": (0.025, 0.050, 0.025, 0.330, 0.320, 0.160, 0.070),
    "soil": (0.070, 0.100, 0.130, 0.210, 0.200, 0.300, 0.240),
    "urban": (0.100, 0.110, 0.120, 0.170, 0.170, 0.220, 0.200),
    "bare": (0.120, 0.160, 0.200, 0.260, 0.255, 0.340, 0.290),
    "cloud": (0.460, 0.450, 0.460, 0.480, 0.480, 0.380, 0.270),
}
SPECTRA = {k: np.array(v, dtype=np.float32) for k, v in _S.items()}


def surface(lc: np.ndarray, veg: np.ndarray, water: np.ndarray, texture: np.ndarray,
            bands: tuple[str, ...] = BANDS) -> np.ndarray:
    """Noise-free surface reflectance, shape (len(bands), H, W) float32.

    ``veg`` is the green cover fraction, ``water`` the water extent on that date (a flooded field
    looks like turbid water), ``texture`` a static multiplicative pattern around 1.
    """
    idx = [BANDS.index(b) for b in bands]
    veg = veg.astype(np.float32)[None]
    bg = np.empty((len(idx), *lc.shape), dtype=np.float32)
    for cls, name in ((FOREST, "soil"), (CROPLAND, "soil"), (URBAN, "urban"), (BARE, "bare"),
                      (WATER, "water")):
        bg[:, lc == cls] = SPECTRA[name][idx][:, None]
    green = np.where((lc == FOREST)[None], SPECTRA["canopy"][idx][:, None, None],
                     SPECTRA["leaf"][idx][:, None, None])
    out = bg * (1 - veg) + green * veg
    out *= texture[None].astype(np.float32)
    flooded = water & (lc != WATER)
    out[:, flooded] = SPECTRA["turbid"][idx][:, None]
    out[:, lc == WATER] = SPECTRA["water"][idx][:, None] * texture[lc == WATER][None]
    return out


def observe(refl: np.ndarray, masks: PassMasks, rng: np.random.Generator,
            bands: tuple[str, ...] = BANDS, haze: float = 0.0) -> np.ndarray:
    """Top-of-canopy reflectance seen by the sensor: noise, clouds, shadows, haze, cirrus."""
    idx = [BANDS.index(b) for b in bands]
    # 2 % multiplicative and 0.004 additive Gaussian noise, drawn as one normal
    sigma = np.sqrt((np.float32(0.02) * refl) ** 2 + np.float32(0.004**2))
    out = refl + sigma * rng.standard_normal(size=refl.shape, dtype=np.float32)
    out += np.float32(haze)
    out[:, masks.shadow] *= np.float32(0.35)
    out[:, masks.adjacent] += np.float32(0.015)
    out[:, masks.cirrus] += np.float32(0.03)
    if masks.cloud.any():
        a = masks.opacity[masks.cloud][None]
        cloud = SPECTRA["cloud"][idx][:, None] * (1 + rng.normal(0, 0.03, size=a.shape))
        out[:, masks.cloud] = out[:, masks.cloud] * (1 - a) + cloud * a
    return out


# C-band gamma0 (linear) per class: (vv, vh) for bare ground and for full green cover
_SAR = {
    WATER: ((0.004, 0.0008), (0.004, 0.0008)),
    FOREST: ((0.080, 0.020), (0.100, 0.028)),
    CROPLAND: ((0.040, 0.005), (0.120, 0.035)),
    URBAN: ((0.300, 0.050), (0.300, 0.050)),
    BARE: ((0.050, 0.006), (0.050, 0.006)),
}


def backscatter(lc: np.ndarray, veg: np.ndarray, water: np.ndarray, texture: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """gamma0 VV, VH (linear) with speckle, shape (2, H, W) float32."""
    out = np.empty((2, *lc.shape), dtype=np.float32)
    for cls, (lo, hi) in _SAR.items():
        m = lc == cls
        for b in range(2):
            out[b, m] = lo[b] + (hi[b] - lo[b]) * veg[m]
    out[:, water] = np.array(_SAR[WATER][0], dtype=np.float32)[:, None]
    out *= texture[None].astype(np.float32)
    out *= rng.gamma(4.9, 1 / 4.9, size=out.shape).astype(np.float32)
    return out
