"""Effective receptive field: input-gradient mass of each class's pre-softmax logit around the
output pixel, as the diameter that holds 50 / 90 / 99 % of it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

QUANTILES = (0.5, 0.9, 0.99)


def radial_cdf(grad: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               radii: np.ndarray) -> np.ndarray:
    """(S, R): for each of S gradient maps (S, H, W) (non-negative) and its output pixel, the
    share of its mass within each radius (pixels, Euclidean, inclusive)."""
    s, h, w = grad.shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((s, len(radii)))
    for i in range(s):
        d = np.hypot(yy - rows[i], xx - cols[i]).ravel()
        g = grad[i].ravel().astype(np.float64)
        total = g.sum()
        if total <= 0:
            out[i] = np.nan
            continue
        order = np.argsort(d, kind="stable")
        cum = np.cumsum(g[order]) / total
        idx = np.searchsorted(d[order], radii, side="right") - 1
        out[i] = np.where(idx >= 0, cum[np.clip(idx, 0, None)], 0.0)
    return out


def diameters(cdf: np.ndarray, radii: np.ndarray,
              quantiles: Sequence[float] = QUANTILES) -> dict[str, float]:
    """Diameter (2 × radius, pixels) of the smallest circle whose mean mass share ≥ q."""
    out = {}
    for q in quantiles:
        hit = np.flatnonzero(cdf >= q - 1e-9)
        out[f"d{round(q * 100)}"] = float(2 * radii[hit[0]]) if hit.size else float("nan")
    return out


def effective_receptive_field(model: torch.nn.Module, batches: Iterable[dict[str, Any]],
                              num_classes: int, pixels_per_chip: int, device: str,
                              seed: int = 0, use_coords: bool = False) -> dict[str, Any]:
    """Gradients of each class's logit at ``pixels_per_chip`` random output pixels per chip
    (valid ones where there are any) w.r.t. the input, summed over bands and steps; returns
    the mean cumulative mass curve and its 50/90/99 % diameters per class."""
    rng = np.random.default_rng(seed)
    curves: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    radii = None
    chips = 0
    model = model.to(device).eval()
    for batch in batches:
        x = batch["image"].to(device).requires_grad_(True)
        kw = {}
        if use_coords:
            kw = {"temporal_coords": batch["temporal_coords"].to(device),
                  "location_coords": batch["location_coords"].to(device)}
        out = model(x, **kw)  # (B, K, H, W)
        b, _k, h, w = out.shape
        if radii is None:
            radii = np.arange(0.0, float(np.hypot(h, w)) + 1.0, 0.5)
        valid = batch["valid"].numpy()
        chips += b
        for _ in range(pixels_per_chip):
            rows = np.empty(b, dtype=np.int64)
            cols = np.empty(b, dtype=np.int64)
            for i in range(b):
                cand = np.flatnonzero(valid[i].ravel())
                cand = cand if cand.size else np.arange(h * w)
                p = int(rng.choice(cand))
                rows[i], cols[i] = divmod(p, w)
            ri, ci = torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)
            for k in range(num_classes):
                sel = out[torch.arange(b, device=device), k, ri, ci].sum()
                (g,) = torch.autograd.grad(sel, x, retain_graph=True)
                mass = g.abs().sum(dim=tuple(range(1, g.dim() - 2))).detach().cpu().numpy()
                curves[k].append(radial_cdf(mass, rows, cols, radii))
        del out
    if radii is None:
        raise ValueError("no chips")
    result: dict[str, Any] = {"chips": chips, "pixels_per_chip": pixels_per_chip,
                              "radii_px": radii.tolist(), "classes": []}
    for k in range(num_classes):
        c = np.concatenate(curves[k])
        mean = np.nanmean(c, axis=0)
        result["classes"].append({"class": k, "samples": int(np.isfinite(c[:, 0]).sum()),
                                  "cdf": mean.tolist(), **diameters(mean, radii)})
    return result
