"""Source pixel under each target pixel's centre between two grids, exact but mostly interpolated.

Nearest-neighbour reprojection needs, for every pixel of the target grid, the source pixel
holding its centre. Transforming every centre with PROJ is exact but costs about 0.4 µs a
point (UTM zone to UTM zone), the largest share of a cross-zone read. Here only a lattice
of centres (every :data:`LATTICE` pixels) is transformed; the rest are interpolated
bilinearly between them, which for the smooth maps between projections is off by far less
than a pixel. To stay exact, the interpolation error is measured at the centre of every
lattice cell, the map falls back to transforming every centre when it exceeds
:data:`MAX_ERROR`, and every pixel whose interpolated source position lies within
:data:`MARGIN` (ten times more) of a source pixel edge is transformed exactly, so no pixel
can land on the wrong side of an edge.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from affine import Affine
from pyproj import Transformer

from terrastill.data.grid import GridSpec

LATTICE = 16  # pixels between exactly transformed centres
MAX_ERROR = 1e-4  # source pixels: the largest interpolation error accepted at cell centres
MARGIN = 1e-3  # source pixels: centres this close to a source pixel edge are transformed

# (row centres, column centres), broadcast to one shape -> (source column, source row),
# both as fractional pixel positions
SourceOf = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@lru_cache(maxsize=32)
def pixel_map(src_key: tuple, grid: GridSpec, part: tuple[int, int, int, int]
              ) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(row0, col0, rows, cols): the row and column of the source raster ``src_key`` =
    (CRS WKT, affine transform, width, height) holding the centre of each pixel of ``part``
    (rows [r0, r1), columns [c0, c1)) of ``grid``; -1 where the source does not reach."""
    crs_wkt, transform, width, height = src_key
    r0, r1, c0, c1 = part
    gt, inv = grid.transform, ~Affine(*transform)
    to_source = _to_source(grid.epsg, crs_wkt)

    def source_of(rr: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = to_source.transform(gt.c + gt.a * cc + gt.b * rr, gt.f + gt.d * cc + gt.e * rr)
        return inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f

    col, row = source_positions(source_of, np.arange(r0, r1) + 0.5, np.arange(c0, c1) + 0.5)
    col, row = np.floor(col), np.floor(row)
    ok = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < width) & (row >= 0) \
        & (row < height)
    return (r0, c0, np.where(ok, row, -1).astype(np.int32),
            np.where(ok, col, -1).astype(np.int32))


def source_positions(source_of: SourceOf, rows: np.ndarray, cols: np.ndarray,
                     lattice: int = LATTICE) -> tuple[np.ndarray, np.ndarray]:
    """(column, row) source positions of the centres ``rows`` × ``cols`` (1-D, evenly
    spaced), each of shape (len(rows), len(cols)): interpolated from a lattice, transformed
    exactly near source pixel edges, or everywhere when the interpolation is not accurate."""
    h, w = len(rows), len(cols)
    if h < 2 * lattice or w < 2 * lattice:
        return source_of(*np.meshgrid(rows, cols, indexing="ij"))
    li, lj = _nodes(h, lattice), _nodes(w, lattice)
    node_col, node_row = source_of(*np.meshgrid(rows[li], cols[lj], indexing="ij"))
    col, row = _bilinear(node_col, li, lj, h, w), _bilinear(node_row, li, lj, h, w)
    # the interpolation error where it is largest for a smooth map: the cells' centres
    ci, cj = (li[:-1] + li[1:]) // 2, (lj[:-1] + lj[1:]) // 2
    exact_col, exact_row = source_of(*np.meshgrid(rows[ci], cols[cj], indexing="ij"))
    error = max(np.max(np.abs(col[np.ix_(ci, cj)] - exact_col), initial=0.0),
                np.max(np.abs(row[np.ix_(ci, cj)] - exact_row), initial=0.0))
    if not (np.isfinite(node_col).all() and np.isfinite(node_row).all()
            and error <= MAX_ERROR):
        return source_of(*np.meshgrid(rows, cols, indexing="ij"))
    near = (np.abs(col - np.round(col)) < MARGIN) | (np.abs(row - np.round(row)) < MARGIN)
    ni, nj = np.nonzero(near)
    if ni.size:
        col[ni, nj], row[ni, nj] = source_of(rows[ni], cols[nj])
    return col, row


def _nodes(n: int, step: int) -> np.ndarray:
    """Lattice indices 0, step, 2·step, ... and the last index n - 1."""
    nodes = np.arange(0, n, step)
    return nodes if nodes[-1] == n - 1 else np.append(nodes, n - 1)


def _bilinear(values: np.ndarray, li: np.ndarray, lj: np.ndarray, h: int,
              w: int) -> np.ndarray:
    """``values`` given at lattice rows ``li`` × columns ``lj``, interpolated to (h, w)."""
    def weights(nodes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        seg = np.clip(np.searchsorted(nodes, np.arange(n), side="right") - 1, 0, len(nodes) - 2)
        return seg, (np.arange(n) - nodes[seg]) / (nodes[seg + 1] - nodes[seg])

    sj, tj = weights(lj, w)
    along = values[:, sj] * (1 - tj) + values[:, sj + 1] * tj  # (lattice rows, w)
    si, ti = weights(li, h)
    return along[si] * (1 - ti)[:, None] + along[si + 1] * ti[:, None]


@lru_cache(maxsize=16)
def _to_source(epsg: int, crs_wkt: str) -> Transformer:
    return Transformer.from_crs(f"EPSG:{epsg}", crs_wkt, always_xy=True)
