"""Derived spectral index channels (NDWI, MNDWI, NDVI, NDBI, …) keyed by a profile's band names.

Every index is a normalised difference ``(a − b) / (a + b)`` of two reflectance bands, clipped
to [−1, 1]; a zero denominator (or a missing input) gives NaN, i.e. nodata. The chip folder
keeps the raw bands; ``dataset.json`` names the indices and holds their train-split
statistics, and a model trained with them computes them itself (:class:`IndexLayer`) from the
normalised bands every consumer (train, evaluate, predict, embed, serve, bench) already feeds
it — one code path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from terrastill.errors import BadInputError, SpecMismatchError

# name -> (candidates for band a, candidates for band b, what it shows); the first candidate
# the chosen bands contain is used (S2 has both a 10 m ``nir`` and a 20 m ``nir_narrow``)
_NIR = ("nir", "nir_narrow")
FORMULAS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "ndwi": (("green",), _NIR, "open water (McFeeters): (green − nir) / (green + nir)"),
    "mndwi": (("green",), ("swir1",), "modified NDWI (Xu): (green − swir16) / (green + swir16)"),
    "ndvi": (_NIR, ("red",), "vegetation: (nir − red) / (nir + red)"),
    "ndbi": (("swir1",), _NIR, "built-up: (swir16 − nir) / (swir16 + nir)"),
    "ndmi": (_NIR, ("swir1",), "moisture: (nir − swir16) / (nir + swir16)"),
    "nbr": (_NIR, ("swir2",), "burn ratio: (nir − swir22) / (nir + swir22)"),
}


def parse_indices(value: str | Sequence[str] | None) -> list[str]:
    """``"ndwi,mndwi"`` or a list → lower-case names, in order, without repeats."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if name and name not in out:
            out.append(name)
    return out


def resolve_indices(names: str | Sequence[str] | None, bands: Sequence[str],
                    source: str | None = None) -> list[dict[str, str]]:
    """``[{"name", "a", "b"}]`` for each index, its two bands found among ``bands``.

    An unknown index, or one whose bands the chosen bands lack, is a :class:`BadInputError`
    naming it."""
    bands = list(bands)
    where = f"the {source} bands" if source else "the bands"
    out = []
    for name in parse_indices(names):
        if name not in FORMULAS:
            raise BadInputError(f"--indices {name}: unknown index; choose from "
                                f"{', '.join(FORMULAS)}")
        a_opts, b_opts, _ = FORMULAS[name]
        a = next((b for b in a_opts if b in bands), None)
        b = next((b for b in b_opts if b in bands), None)
        if a is None or b is None:
            missing = "/".join(a_opts if a is None else b_opts)
            raise BadInputError(f"--indices {name}: needs band {missing}, which {where} "
                                f"({', '.join(bands)}) lack")
        out.append({"name": name, "a": a, "b": b})
    return out


def normalized_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a − b) / (a + b) in float32, clipped to [−1, 1] (slightly negative reflectances,
    noise or offsets, would otherwise blow it up near a zero sum); a zero denominator gives
    NaN (nodata)."""
    a, b = a.float(), b.float()
    den = a + b
    out = ((a - b) / torch.where(den != 0, den, torch.ones_like(den))).clamp(-1.0, 1.0)
    return torch.where(den != 0, out, torch.full_like(den, float("nan")))


def compute_indices(x: torch.Tensor, bands: Sequence[str], specs: Sequence[Mapping[str, str]],
                    dim: int = 1) -> torch.Tensor:
    """The index channels of reflectance ``x`` whose band axis is ``dim``: one channel per
    spec, stacked on ``dim`` (NaN where undefined)."""
    bands = list(bands)
    chans = [normalized_difference(x.select(dim, bands.index(s["a"])),
                                   x.select(dim, bands.index(s["b"]))) for s in specs]
    return torch.stack(chans, dim=dim)


def index_stats(chip_paths: Sequence[Path], bands: Sequence[str], num_steps: int,
                specs: Sequence[Mapping[str, str]]) -> tuple[list[float], list[float]]:
    """Per-index mean and std over the finite pixels of ``chip_paths`` (all steps pooled),
    computed with :func:`compute_indices` — the same function the models use."""
    import rasterio

    k = len(specs)
    s, ss, n = np.zeros(k), np.zeros(k), np.zeros(k)
    for p in sorted(chip_paths):
        with rasterio.open(p) as ds:
            arr = ds.read().astype(np.float32)
        arr = arr.reshape(int(num_steps), len(bands), *arr.shape[1:])
        idx = compute_indices(torch.from_numpy(arr), bands, specs, dim=1).double().numpy()
        for j in range(k):
            v = idx[:, j][np.isfinite(idx[:, j])]
            s[j] += v.sum()
            ss[j] += np.square(v).sum()
            n[j] += v.size
    mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    var = np.divide(ss, n, out=np.zeros_like(s), where=n > 0) - mean**2
    std = np.sqrt(np.clip(var, 0, None))
    std[std == 0] = 1.0
    return [round(float(v), 8) for v in mean], [round(float(v), 8) for v in std]


def input_config(bands: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 specs: Sequence[Mapping[str, str]], index_mean: Sequence[float],
                 index_std: Sequence[float]) -> dict[str, Any]:
    """The ``arch["inputs"]`` block a model with index channels stores: the raw bands and
    their normalisation (to undo it), and each index with its own mean/std."""
    if not (len(bands) == len(mean) == len(std)):
        raise BadInputError("inputs: one mean and std per band needed")
    if not (len(specs) == len(index_mean) == len(index_std)):
        raise BadInputError("inputs: one mean and std per index needed")
    return {"bands": list(bands), "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "indices": [{"name": s["name"], "a": s["a"], "b": s["b"], "mean": float(m),
                         "std": float(sd)} for s, m, sd in zip(specs, index_mean, index_std,
                                                                strict=True)]}


def channel_names(inputs: Mapping[str, Any] | None, bands: Sequence[str]) -> list[str]:
    """The model's channel names: the bands, then the index names."""
    if not inputs or not inputs.get("indices"):
        return list(bands)
    return [*inputs["bands"], *(i["name"] for i in inputs["indices"])]


class IndexLayer(nn.Module):
    """(B, C, T, H, W) normalised bands → (B, C+K, T, H, W) with K normalised index channels.

    The bands are de-normalised exactly as :func:`terrastill.data.normalize.normalize_chip`
    normalised them (its fill value, exactly 0, counts as missing), the indices computed by
    :func:`compute_indices` in float32 (outside any autocast), standardised with their
    train-split stats, and NaN (a zero denominator or a missing band) set to 0, as every
    missing input. An input that already has C+K channels passes unchanged (the
    ViT's patch-embedding hook sees the model's own expanded input); any other channel count
    is a :class:`SpecMismatchError`.
    """

    def __init__(self, inputs: Mapping[str, Any]) -> None:
        super().__init__()
        self.bands = list(inputs["bands"])
        self.specs = [{"name": i["name"], "a": i["a"], "b": i["b"]} for i in inputs["indices"]]
        std = np.asarray(inputs["std"], dtype=np.float32)
        std = np.where(std > 0, std, np.float32(1.0))
        self.register_buffer("mean", torch.tensor(inputs["mean"], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("std", torch.from_numpy(std), persistent=False)
        istd = np.asarray([i["std"] for i in inputs["indices"]], dtype=np.float32)
        self.register_buffer("index_mean", torch.tensor([i["mean"] for i in inputs["indices"]],
                                                        dtype=torch.float32), persistent=False)
        self.register_buffer("index_std", torch.from_numpy(np.where(istd > 0, istd, 1.0)
                                                           .astype(np.float32)),
                             persistent=False)
        self.n_in = len(self.bands)
        self.n_out = self.n_in + len(self.specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.n_out:
            return x
        if c != self.n_in:
            raise SpecMismatchError(f"the model takes {self.n_in} input bands "
                                    f"({', '.join(self.bands)}) and computes "
                                    f"{', '.join(s['name'] for s in self.specs)} itself; "
                                    f"got {c} channels")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            # normalize_chip fills a missing input with exactly 0 (the band mean): undo it
            raw = torch.where(xf != 0, xf * self.std.view(shape) + self.mean.view(shape),
                              torch.full_like(xf, float("nan")))
            idx = compute_indices(raw, self.bands, self.specs, dim=1)
            idx = (idx - self.index_mean.view(shape)) / self.index_std.view(shape)
            idx = torch.nan_to_num(idx, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.cat([x, idx.to(x.dtype)], dim=1)

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """A forward pre-hook: expands the first positional input of ``module``."""
        return (self(args[0]), *args[1:])


def input_channels(arch: Mapping[str, Any]) -> int:
    """How many channels per step a model built from ``arch`` takes from its caller."""
    inputs = arch.get("inputs") or {}
    if inputs.get("indices"):
        return len(inputs["bands"])
    return int(arch["encoder"]["in_chans"])


def inputs_from_meta(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """``arch["inputs"]`` for a chip folder's ``dataset.json`` (None without indices)."""
    specs = meta.get("indices") or []
    if not specs:
        return None
    stats = meta.get("index_stats") or {}
    if len(stats.get("mean", [])) != len(specs) or len(stats.get("std", [])) != len(specs):
        raise BadInputError("dataset.json: index_stats.mean/std must have one value per index")
    specs = resolve_indices([s["name"] for s in specs], meta["bands"], meta.get("source"))
    return input_config(meta["bands"], meta["stats"]["mean"], meta["stats"]["std"], specs,
                        stats["mean"], stats["std"])
