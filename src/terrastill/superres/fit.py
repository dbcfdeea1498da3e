"""Fit splat weights and per-acquisition shifts to a masked stack: Adam warm-up, then LBFGS."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from terrastill.superres.render import (
    SplatGrid,
    fine_weights,
    memory_bytes,
    observation_weights,
    render,
    render_blocked,
)

log = logging.getLogger(__name__)
SCALE = 100.0  # reflectance -> percent while fitting


@dataclass(frozen=True)
class FitOptions:
    """Forward-model and optimiser settings (metres, steps, weights)."""

    sigma_psf: float = 3.0
    spacing: float = 3.0
    sigma_splat: float | None = None  # default: the splat spacing
    adam_steps: int = 200
    lbfgs_steps: int = 60
    adam_lr: float = 1.0  # percent reflectance per step
    shift_lr: float = 0.005  # per step, on the tanh scale (x max_shift metres)
    tv_weight: float = 0.1  # on the percent-reflectance scale of the data term
    fit_shifts: bool = True
    max_shift: float = 10.0  # metres: shifts are bounded (tanh) so a changed scene cannot
    # pull an acquisition far away
    shift_init: str = "phase"  # "phase" (phase correlation) or "zero"
    device: str = "cpu"
    block: int = 32  # pixels per render block (banded rendering); 0: dense matmuls

    @property
    def splat_sigma(self) -> float:
        return self.sigma_splat if self.sigma_splat is not None else self.spacing

    @property
    def sigma_eff(self) -> float:
        return math.sqrt(self.splat_sigma**2 + self.sigma_psf**2)

    def margin(self, max_shift: float = 10.0) -> float:
        """Splats beyond the crop edge that still reach edge pixels."""
        return math.ceil(3 * self.sigma_eff + max_shift)


@dataclass
class FitResult:
    """The fitted scene (splat weights on ``grid``) and the recovered shifts."""

    weights: torch.Tensor  # (C, Ny, Nx)
    shifts: np.ndarray  # (T, 2) metres east / north, zero-mean
    grid: SplatGrid
    options: FitOptions
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    rmse: float = float("nan")  # of the valid observed pixels at the end
    lbfgs: dict = field(default_factory=dict)  # LBFGS iterations, evaluations, last step, grad

    def render_fine(self, factor: int) -> np.ndarray:
        """(C, H·factor, W·factor) float32: the scene integrated over output pixels of
        ``pixel / factor`` metres, without PSF or shift (the latent surface)."""
        with torch.no_grad():
            by, bx = fine_weights(self.grid, factor, self.options.splat_sigma,
                                  self.weights.device, self.weights.dtype)
            out = render(self.weights, by, bx)[0]
        return out.cpu().numpy()


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    from terrastill.errors import BadInputError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError("--device cuda: no CUDA device is available (use cpu or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise BadInputError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def estimate_bytes(stack_shape: tuple[int, ...], pixel: float, opts: FitOptions,
                   factor: int) -> int:
    t, c, h, w = stack_shape
    return memory_bytes(t, c, h, w, pixel, opts.spacing, opts.margin(), factor)


def _initial_weights(stack: np.ndarray, grid: SplatGrid) -> np.ndarray:
    """The per-pixel mean of the valid observations, sampled at the splat centres."""
    from scipy.ndimage import map_coordinates

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        mean = np.nanmean(stack, axis=0)  # (C, H, W)
    for c in range(mean.shape[0]):
        band = mean[c]
        fill = np.nanmean(band) if np.isfinite(band).any() else 0.0
        band[~np.isfinite(band)] = fill
    ry = (grid.centres(grid.ny).numpy() / grid.pixel) - 0.5
    rx = (grid.centres(grid.nx).numpy() / grid.pixel) - 0.5
    yy, xx = np.meshgrid(ry, rx, indexing="ij")
    return np.stack([map_coordinates(b, [yy, xx], order=1, mode="nearest") for b in mean]
                    ).astype(np.float32)


def _tv(w: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smoothed isotropic total variation per splat (differentiable everywhere, for LBFGS)."""
    dx = w[:, :-1, 1:] - w[:, :-1, :-1]
    dy = w[:, 1:, :-1] - w[:, :-1, :-1]
    return torch.sqrt(dx * dx + dy * dy + eps * eps).mean()


def _lbfgs_report(opt: torch.optim.LBFGS, params: list[torch.Tensor]) -> dict:
    """Iterations and loss evaluations of an LBFGS run and the size of its last step."""
    st = opt.state[params[0]]
    d, t = st.get("d"), st.get("t")
    step = float((d * t).abs().max().item()) if d is not None and t is not None else 0.0
    grad = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
    return {"iterations": int(st.get("n_iter", 0)), "evaluations": int(st.get("func_evals", 0)),
            "last_step_max": step, "grad_max": float(grad.abs().max().item())}


def fit(stack: np.ndarray, pixel: float, opts: FitOptions,
        init_shifts: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None) -> FitResult:
    """Fit the splat field and shifts to ``stack`` (T, C, H, W) float32 reflectance with NaN
    where masked (masked pixels do not enter the loss). ``init_shifts`` (T, 2) metres east /
    north seeds the shifts (else zero, or phase correlation with ``shift_init='phase'``)."""
    from terrastill.superres.shifts import phase_shifts

    t0 = time.perf_counter()
    dev = torch.device(opts.device)
    t, _c, h, w = stack.shape
    grid = SplatGrid(h, w, pixel, opts.spacing, opts.margin())
    if init_shifts is None:
        init_shifts = (phase_shifts(stack, pixel) if opts.shift_init == "phase" and t > 1
                       else np.zeros((t, 2)))
    valid = np.isfinite(stack).all(axis=1, keepdims=True)  # (T, 1, H, W)
    # optimise in percent reflectance: a data term near 1, not 1e-5, keeps LBFGS's line
    # search above float32 round-off
    obs = torch.from_numpy(np.where(valid, stack * SCALE, 0.0).astype(np.float32)).to(dev)
    mask = torch.from_numpy(np.broadcast_to(valid, stack.shape).astype(np.float32)).to(dev)
    n_valid = float(mask.sum().item()) or 1.0
    weights = torch.tensor(_initial_weights(stack, grid) * SCALE, device=dev,
                           requires_grad=True)
    lim = opts.max_shift
    init = np.clip(np.asarray(init_shifts, dtype=np.float64), -0.95 * lim, 0.95 * lim)
    raw = torch.tensor(np.arctanh(init / lim).astype(np.float32), device=dev,
                       requires_grad=opts.fit_shifts and t > 1)

    def current() -> torch.Tensor:
        d = lim * torch.tanh(raw)
        return d - d.mean(dim=0, keepdim=True)

    sig = opts.sigma_eff
    params = [weights] + ([raw] if raw.requires_grad else [])

    def loss_fn() -> tuple[torch.Tensor, torch.Tensor]:
        shifts = current()
        ay, ax = observation_weights(grid, shifts, sig)
        pred = (render_blocked(weights, ay, ax, grid, opts.block) if opts.block
                else render(weights, ay, ax))
        data = (((pred - obs) * mask) ** 2).sum() / n_valid
        return data + opts.tv_weight * _tv(weights), data

    losses: list[float] = []
    lbfgs_info: dict = {}
    total = opts.adam_steps + opts.lbfgs_steps
    groups = [{"params": [weights], "lr": opts.adam_lr}]
    if raw.requires_grad:
        groups.append({"params": [raw], "lr": opts.shift_lr})
    adam = torch.optim.Adam(groups)
    for step in range(opts.adam_steps):
        adam.zero_grad()
        loss, _ = loss_fn()
        loss.backward()
        adam.step()
        # Adam's lr decays towards the end of the warm-up
        for g, base in zip(adam.param_groups, [opts.adam_lr, opts.shift_lr], strict=False):
            g["lr"] = base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / opts.adam_steps)))
        losses.append(float(loss.item()))
        if progress is not None:
            progress(step + 1, total)
    if opts.lbfgs_steps:
        lbfgs = torch.optim.LBFGS(params, lr=1.0, max_iter=opts.lbfgs_steps, history_size=10,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                                  tolerance_change=1e-14)
        evals = 0

        def closure() -> torch.Tensor:
            nonlocal evals
            lbfgs.zero_grad()
            loss, _ = loss_fn()
            loss.backward()
            evals += 1
            losses.append(float(loss.item()))
            if progress is not None:
                progress(opts.adam_steps + min(evals, opts.lbfgs_steps), total)
            return loss

        lbfgs.step(closure)
        lbfgs_info = _lbfgs_report(lbfgs, params)
    with torch.no_grad():
        _, data = loss_fn()
        shifts = current().cpu().numpy()
    if progress is not None:
        progress(total, total)
    return FitResult(weights.detach() / SCALE, shifts, grid, opts, losses,
                     time.perf_counter() - t0, math.sqrt(float(data.item())) / SCALE, lbfgs_info)
