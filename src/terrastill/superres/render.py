"""Closed-form rendering of Gaussian splats into pixels: differences of erf, two matmuls.

Coordinates are metres relative to the upper-left corner of the low-resolution crop: ``x``
grows east (columns), ``r`` grows south (rows). A shift ``(dx, dy)`` is east / north in
metres; content at ``μ`` appears at ``μ + δ`` in the shifted acquisition, so along rows the
shift is ``-dy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SplatGrid:
    """Fixed splat centres (``spacing`` m apart, ``margin`` m beyond the crop) over a crop of
    ``height`` × ``width`` pixels of ``pixel`` metres."""

    height: int
    width: int
    pixel: float
    spacing: float
    margin: float

    @property
    def nx(self) -> int:
        return math.ceil((self.width * self.pixel + 2 * self.margin) / self.spacing)

    @property
    def ny(self) -> int:
        return math.ceil((self.height * self.pixel + 2 * self.margin) / self.spacing)

    @property
    def splats(self) -> int:
        return self.nx * self.ny

    def centres(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Centres (metres from the crop corner) of ``n`` splats along one axis."""
        j = torch.arange(n, dtype=torch.float64, device=device)
        return (j + 0.5) * self.spacing - self.margin


def axis_weights(lo: torch.Tensor, width: float, centres: torch.Tensor, shift: torch.Tensor,
                 sigma: float, spacing: float) -> torch.Tensor:
    """(T, P, N): how much splat ``n`` (unit weight = reflectance density) adds to pixel ``p``
    along one axis, for each of the ``T`` shifts: ``spacing/width · ½[erf((b-μ-δ)/σ√2) -
    erf((a-μ-δ)/σ√2)]`` with the pixel spanning ``[a, b] = [lo, lo + width]``."""
    s = 1.0 / (sigma * math.sqrt(2.0))
    mu = centres[None, None, :] + shift[:, None, None]  # (T, 1, N)
    a = lo[None, :, None]
    hi = torch.erf((a + width - mu) * s)
    low = torch.erf((a - mu) * s)
    return (0.5 * spacing / width) * (hi - low)


def render(weights: torch.Tensor, ay: torch.Tensor, ax: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) pixels from splat weights (C, Ny, Nx) and per-acquisition axis weights
    ``ay`` (T, H, Ny), ``ax`` (T, W, Nx): ``Ay · W · Axᵀ`` per band and acquisition."""
    rows = torch.matmul(ay[:, None], weights[None])  # (T, C, H, Nx)
    return torch.matmul(rows, ax[:, None].transpose(-1, -2))


def _support(lo: float, hi: float, grid: SplatGrid, n: int) -> tuple[int, int]:
    """Splat indices along one axis whose centres lie within ``margin`` of [lo, hi] metres."""
    j0 = max(0, math.floor(lo / grid.spacing - 0.5))
    j1 = min(n, math.ceil((hi + 2 * grid.margin) / grid.spacing - 0.5) + 1)
    return j0, j1


def render_blocked(weights: torch.Tensor, ay: torch.Tensor, ax: torch.Tensor, grid: SplatGrid,
                   block: int = 32) -> torch.Tensor:
    """:func:`render` by blocks of ``block`` pixels, each using only the splats within the
    margin (the axis weights are banded): the same pixels for a fraction of the work on large
    crops (beyond the margin a splat's weight is below erf's 3σ tail)."""
    h, w = ay.shape[1], ax.shape[1]
    if h <= block and w <= block:
        return render(weights, ay, ax)
    out = []
    for r0 in range(0, h, block):
        r1 = min(h, r0 + block)
        j0, j1 = _support(r0 * grid.pixel, r1 * grid.pixel, grid, grid.ny)
        rows = torch.matmul(ay[:, None, r0:r1, j0:j1], weights[None, :, j0:j1, :])
        cols = []
        for c0 in range(0, w, block):
            c1 = min(w, c0 + block)
            k0, k1 = _support(c0 * grid.pixel, c1 * grid.pixel, grid, grid.nx)
            cols.append(torch.matmul(rows[..., k0:k1], ax[:, None, c0:c1, k0:k1].transpose(-1, -2)))
        out.append(torch.cat(cols, dim=-1))
    return torch.cat(out, dim=-2)


def observation_weights(grid: SplatGrid, shifts: torch.Tensor, sigma_eff: float,
                        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ay, Ax) of the low-resolution pixels for shifts (T, 2) = (dx east, dy north) metres."""
    dev = shifts.device
    sh = shifts.to(torch.float64)
    lo_y = torch.arange(grid.height, dtype=torch.float64, device=dev) * grid.pixel
    lo_x = torch.arange(grid.width, dtype=torch.float64, device=dev) * grid.pixel
    ay = axis_weights(lo_y, grid.pixel, grid.centres(grid.ny, dev), -sh[:, 1], sigma_eff,
                      grid.spacing)
    ax = axis_weights(lo_x, grid.pixel, grid.centres(grid.nx, dev), sh[:, 0], sigma_eff,
                      grid.spacing)
    return ay.to(dtype), ax.to(dtype)


def fine_weights(grid: SplatGrid, factor: int, sigma: float, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(By, Bx) of the output pixels (``pixel / factor`` metres, no shift) for one render."""
    px = grid.pixel / factor
    zero = torch.zeros(1, dtype=torch.float64, device=device)
    lo_y = torch.arange(grid.height * factor, dtype=torch.float64, device=device) * px
    lo_x = torch.arange(grid.width * factor, dtype=torch.float64, device=device) * px
    by = axis_weights(lo_y, px, grid.centres(grid.ny, device), zero, sigma, grid.spacing)
    bx = axis_weights(lo_x, px, grid.centres(grid.nx, device), zero, sigma, grid.spacing)
    return by.to(dtype), bx.to(dtype)


def memory_bytes(acquisitions: int, bands: int, height: int, width: int, pixel: float,
                 spacing: float, margin: float, factor: int, history: int = 10) -> int:
    """A generous estimate of the peak bytes one fit of a crop needs (float32): the axis
    weights, the stacked intermediate ``Ay·W`` and its gradient, the splat weights with Adam
    and LBFGS state, and the fine render."""
    g = SplatGrid(height, width, pixel, spacing, margin)
    t, c = acquisitions, bands
    axes = 2 * t * (height * g.ny + width * g.nx)  # Ay, Ax (+ gradients)
    inter = 3 * t * c * height * g.nx  # Ay·W, its gradient, a copy in autograd
    pixels = 4 * t * c * height * width  # render, residual, mask, observations
    params = c * g.splats * (4 + 2 * history)  # weights, grad, Adam moments, LBFGS history
    tv = 4 * c * g.splats
    out = c * height * width * factor * factor + height * factor * g.ny + width * factor * g.nx
    return 4 * (2 * axes + inter + pixels + params + tv + out)
