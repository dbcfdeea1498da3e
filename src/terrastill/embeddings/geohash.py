"""Geohash cells of lon/lat points, vectorised (no geohash library is installed)."""

from __future__ import annotations

import numpy as np

BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_ALPHABET = np.array(list(BASE32))


def encode(lon: np.ndarray, lat: np.ndarray, precision: int) -> np.ndarray:
    """Geohash strings of ``precision`` characters for arrays of lon/lat degrees.

    Bits alternate lon, lat (lon first), each halving its interval; 5 bits per character.
    """
    if not 1 <= precision <= 12:
        raise ValueError(f"geohash precision {precision}: expected 1..12")
    lon = np.asarray(lon, np.float64)
    lat = np.asarray(lat, np.float64)
    nbits = 5 * precision
    lon_bits, lat_bits = (nbits + 1) // 2, nbits // 2
    # integer cell index along each axis (the same as repeated interval halving)
    xi = np.clip(np.floor((lon + 180.0) / 360.0 * 2.0 ** lon_bits), 0, 2 ** lon_bits - 1)
    yi = np.clip(np.floor((lat + 90.0) / 180.0 * 2.0 ** lat_bits), 0, 2 ** lat_bits - 1)
    xi, yi = xi.astype(np.int64), yi.astype(np.int64)
    code = np.zeros(lon.shape, np.int64)
    for b in range(nbits):  # most significant first: even bits lon, odd bits lat
        axis, nb = (xi, lon_bits) if b % 2 == 0 else (yi, lat_bits)
        bit = (axis >> (nb - 1 - b // 2)) & 1
        code = (code << 1) | bit
    chars = [(code >> (5 * (precision - 1 - c))) & 31 for c in range(precision)]
    out = _ALPHABET[chars[0]]
    for c in chars[1:]:
        out = np.char.add(out, _ALPHABET[c])
    return out.astype(str)


def bounds(cell: str) -> tuple[float, float, float, float]:
    """(minlon, minlat, maxlon, maxlat) of a geohash cell."""
    lon, lat = [-180.0, 180.0], [-90.0, 90.0]
    even = True
    for ch in cell:
        v = BASE32.index(ch)
        for shift in range(4, -1, -1):
            rng = lon if even else lat
            mid = (rng[0] + rng[1]) / 2
            if (v >> shift) & 1:
                rng[0] = mid
            else:
                rng[1] = mid
            even = not even
    return lon[0], lat[0], lon[1], lat[1]
