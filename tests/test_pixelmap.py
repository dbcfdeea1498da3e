"""Pixel maps between grids: interpolated from a lattice, the same pixels as exact transforms."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from terrastill.data import pixelmap
from terrastill.data.grid import GridSpec
from terrastill.data.pixelmap import pixel_map, source_positions


def _exact_map(src_key: tuple, grid: GridSpec, part: tuple[int, int, int, int]):
    """Every centre through PROJ, written out independently of the module."""
    crs_wkt, transform, width, height = src_key
    r0, r1, c0, c1 = part
    cc, rr = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5)
    gt = grid.transform
    x, y = Transformer.from_crs(grid.crs, crs_wkt, always_xy=True).transform(
        gt.c + gt.a * cc, gt.f + gt.e * rr)
    inv = ~Affine(*transform)
    col = np.floor(inv.a * x + inv.b * y + inv.c)
    row = np.floor(inv.d * x + inv.e * y + inv.f)
    ok = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    return np.where(ok, row, -1), np.where(ok, col, -1)


@pytest.mark.parametrize("source", ["utm-32632", "lonlat", "utm-far"])
def test_pixel_map_equals_transforming_every_centre(source):
    # a zone-33 grid at the zone boundary, 30 m pixels with an odd phase
    grid = GridSpec(32633, Affine(30, 0, 264_497.0, 0, -30, 5_028_513.0), 517, 389)
    if source == "utm-32632":  # the neighbouring zone's tile, 30 m, another phase
        key = ("EPSG:32632", (30.0, 0.0, 724_230.0, 0.0, -30.0, 5_028_480.0), 700, 600)
    elif source == "lonlat":  # a geographic raster of about 25 m pixels
        key = ("EPSG:4326", (0.0003, 0.0, 11.9, 0.0, -0.0002, 45.40), 800, 700)
    else:  # far from the source zone's meridian: the strongest distortion
        key = ("EPSG:32631", (30.0, 0.0, 1_200_000.0, 0.0, -30.0, 5_080_000.0), 2000, 2000)
    part = (3, 389, 0, 500)
    r0, c0, rows, cols = pixel_map(key, grid, part)
    want_rows, want_cols = _exact_map(key, grid, part)
    assert (r0, c0) == (3, 0)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(cols, want_cols)
    assert (rows >= 0).sum() > 10_000  # the source really reaches the grid


def _curved(rr: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source columns an integer plus a small quadratic that changes sign, so many centres
    lie closer to a source pixel edge than the interpolation error (about 6e-5 px)."""
    q = 1e-6 * ((cc - 40.0) ** 2 - 300.0) * (1 + 1e-3 * rr)
    return cc - 0.5 + q, rr + 0.25


def _stepped(rr: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A map with a jump (as across a projection's cut): no interpolation can follow it."""
    return cc * 1.0 + np.where(cc > 70.3, 5.5, 0.0), rr + 0.25


@pytest.mark.parametrize("source_of", [_curved, _stepped])
def test_lattice_positions_floor_to_the_exact_pixels(source_of, monkeypatch):
    rows, cols = np.arange(0, 90) + 0.5, np.arange(0, 130) + 0.5
    exact = [np.floor(a) for a in source_of(*np.meshgrid(rows, cols, indexing="ij"))]
    got = [np.floor(a) for a in source_positions(source_of, rows, cols, lattice=16)]
    for g, e in zip(got, exact, strict=True):
        np.testing.assert_array_equal(g, e)
    # the safeguards are what makes it exact: without them some pixels land wrongly
    monkeypatch.setattr(pixelmap, "MARGIN", 0.0)
    monkeypatch.setattr(pixelmap, "MAX_ERROR", np.inf)
    loose = [np.floor(a) for a in source_positions(source_of, rows, cols, lattice=16)]
    assert any((g != e).any() for g, e in zip(loose, exact, strict=True))
