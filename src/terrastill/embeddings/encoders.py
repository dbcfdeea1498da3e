"""Encoders behind one interface: a model file's ViT, a seeded random ViT, spectral statistics.

Every encoder takes reflectance stacks (N, T, C, H, W) with NaN nodata and returns either one
vector per input (:meth:`Encoder.vectors`) or, for ViTs, one vector per patch
(:meth:`ViTEncoder.patch_maps`). ViT patch vectors are the encoder's final, normalised patch
tokens averaged over the T' token steps (time pooling). A table's ``mean`` pooling averages
the patch tokens of every step whose patch has at least :data:`MIN_VALID` of its pixels valid
(every band finite at each of the token's steps): nodata-filled patches (outside the scene,
masked clouds) stay out of the mean; ``centre`` does the same over the patches touching the
input's centre (a point label at the centre of a chip); ``cls`` takes the class token. An
input with no such token falls back to the tokens with any valid pixel, then to all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.errors import BadInputError, SpecMismatchError

POOLINGS = ("mean", "centre", "cls")
MIN_VALID = 0.5  # a patch token counts as valid with this share of valid pixels
SPECTRAL_STATS = ("mean", "std", "p10", "p50", "p90")
Coords = tuple[list[tuple[float, float]], tuple[float, float]]  # (year, doy) per step, lat/lon


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces (once per path, size and mtime)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256(path: str, _size: int, _mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Encoder:
    """What every encoder says about itself; subclasses implement :meth:`vectors`."""

    name: str
    bands: list[str]
    num_steps: int | None
    dim: int
    model: dict[str, Any] = field(default_factory=dict)  # name, sha256, kind (product metadata)
    normalisation: dict[str, Any] | None = None

    def check(self, bands: Sequence[str], num_steps: int, height: int, width: int,
              where: str) -> list[int]:
        """Refuse data the encoder cannot read; return the indices of its bands in ``bands``."""
        missing = [b for b in self.bands if b not in bands]
        if missing:
            raise SpecMismatchError(f"{where}: the encoder {self.name!r} reads band(s) "
                                    f"{', '.join(missing)} that the data lacks (it has "
                                    f"{', '.join(bands)})")
        if self.num_steps is not None and int(num_steps) != self.num_steps:
            raise SpecMismatchError(f"{where}: {num_steps} time step(s) but the encoder "
                                    f"{self.name!r} expects T={self.num_steps}")
        return [list(bands).index(b) for b in self.bands]

    def vectors(self, arr: np.ndarray, pooling: str = "mean",
                coords: Sequence[Coords] | None = None) -> np.ndarray:
        raise NotImplementedError

    @property
    def pooling_note(self) -> str:
        return "per-band statistics"


class SpectralEncoder(Encoder):
    """Model-free baseline: per band, NaN-aware mean, std and 10/50/90th percentiles over the
    pixels of every step (a band with no valid value gives zeros)."""

    def __init__(self, bands: Sequence[str]):
        super().__init__("spectral", list(bands), None, len(SPECTRAL_STATS) * len(bands),
                         {"name": "spectral", "kind": "spectral", "sha256": None,
                          "features": [f"{b}:{s}" for b in bands for s in SPECTRAL_STATS]})

    def vectors(self, arr: np.ndarray, pooling: str = "mean",
                coords: Sequence[Coords] | None = None) -> np.ndarray:
        import warnings

        a = np.asarray(arr, np.float32)
        n, _t, c = a.shape[:3]
        flat = np.moveaxis(a, 2, 1).reshape(n, c, -1)
        with warnings.catch_warnings():  # all-NaN bands: filled below
            warnings.simplefilter("ignore", RuntimeWarning)
            stats = [np.nanmean(flat, -1), np.nanstd(flat, -1),
                     *np.nanpercentile(flat, [10, 50, 90], axis=-1)]
        out = np.stack(stats, axis=-1).reshape(n, -1)
        return np.nan_to_num(out, nan=0.0).astype(np.float32)


class ViTEncoder(Encoder):
    """A Prithvi-layout ViT (:class:`~terrastill.models.encoder.PrithviViT`) with the
    normalisation its inputs need."""

    def __init__(self, name: str, vit: Any, bands: Sequence[str], num_steps: int,
                 mean: Sequence[float], std: Sequence[float], model: dict[str, Any],
                 bf16: bool = False, uses_coords: bool = False):
        super().__init__(name, list(bands), int(num_steps), int(vit.embed_dim), model,
                         {"mean": [float(v) for v in mean], "std": [float(v) for v in std]})
        self.vit = vit.eval()
        self.patch = int(vit.patch_embed.patch_size[1])
        self.tubelet = int(vit.patch_embed.patch_size[0])
        self.bf16 = bf16
        self.uses_coords = uses_coords

    @property
    def pooling_note(self) -> str:
        return "patch tokens averaged over the T' token steps"

    def check(self, bands: Sequence[str], num_steps: int, height: int, width: int,
              where: str) -> list[int]:
        idx = super().check(bands, num_steps, height, width, where)
        if height % self.patch or width % self.patch:
            raise SpecMismatchError(f"{where}: size {height}×{width} px is not a multiple of "
                                    f"the encoder's patch size {self.patch}")
        return idx

    def tokens(self, x: Any, coords: Sequence[Coords] | None = None) -> Any:
        """Final normalised tokens (N, 1+L, D) for a normalised (N, C, T, H, W) tensor."""
        import torch

        device = self.vit.pos_embed.device
        kw: dict[str, Any] = {}
        if self.uses_coords and coords is not None:
            kw = {"temporal_coords": torch.tensor([c[0] for c in coords], dtype=torch.float32,
                                                  device=device),
                  "location_coords": torch.tensor([c[1] for c in coords], dtype=torch.float32,
                                                  device=device)}
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=self.bf16):
            tokens, _ = self.vit.forward_features(x.to(device), **kw)
        return tokens.float()

    def patch_maps_from_tensor(self, x: Any, coords: Sequence[Coords] | None = None
                               ) -> np.ndarray:
        """(N, D, H/p, W/p) float32: patch tokens averaged over the token steps."""
        tokens = self.tokens(x, coords)
        t, h, w = self.vit.token_grid(x.shape)
        grid = tokens[:, 1:].reshape(len(tokens), t, h, w, self.dim).mean(1)
        return grid.permute(0, 3, 1, 2).contiguous().cpu().numpy()

    def normalise(self, arr: np.ndarray) -> Any:
        from terrastill.data.normalize import normalize_chip

        assert self.normalisation is not None
        return normalize_chip(arr, self.normalisation["mean"], self.normalisation["std"])[0]

    def token_weights(self, arr: np.ndarray, pooling: str = "mean") -> np.ndarray:
        """(N, L) pooling weights of the patch tokens of (N, T, C, H, W) inputs: 1 for a
        token whose patch has >= :data:`MIN_VALID` valid pixels (and, for ``centre``, that
        touches the centre), else 0; see the module docstring for the fallbacks."""
        a = np.asarray(arr)
        n, t, _c, h, w = a.shape
        p, tub = self.patch, self.tubelet
        ok = np.isfinite(a).all(axis=2).astype(np.float32)  # (N, T, H, W)
        share = ok.reshape(n, t // tub, tub, h // p, p, w // p, p).mean(axis=(2, 4, 6))
        keep = np.ones(share.shape[1:], bool)
        if pooling == "centre":
            keep = np.zeros_like(keep)
            gh, gw = h // p, w // p
            keep[:, (gh - 1) // 2:gh // 2 + 1, (gw - 1) // 2:gw // 2 + 1] = True
        share = np.where(keep[None], share, 0.0).reshape(n, -1)
        weights = (share >= MIN_VALID).astype(np.float32)
        empty = weights.sum(1) == 0
        weights[empty] = (share[empty] > 0).astype(np.float32)
        empty = weights.sum(1) == 0
        weights[empty] = keep.reshape(-1).astype(np.float32)
        return weights

    def vectors(self, arr: np.ndarray, pooling: str = "mean",
                coords: Sequence[Coords] | None = None) -> np.ndarray:
        import torch

        tokens = self.tokens(self.normalise(arr), coords)
        if pooling == "cls":
            return tokens[:, 0].cpu().numpy().astype(np.float32)
        w = torch.from_numpy(self.token_weights(arr, pooling)).to(tokens.device)
        out = (tokens[:, 1:] * w[..., None]).sum(1) / w.sum(1, keepdim=True)
        return out.cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class EncoderChoice:
    """Which encoder the user asked for: a model file, ``spectral`` or ``random:<name>``."""

    model: Path | None = None
    encoder: str | None = None
    seed: int | None = None
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if (self.model is None) == (self.encoder is None):
            raise BadInputError("give either a MODEL file or --encoder (spectral or "
                                "random:<registry name>), not both or neither")
        if self.encoder is not None:
            kind = self.encoder.split(":", 1)
            if self.encoder == "spectral":
                return
            if kind[0] != "random" or len(kind) != 2 or not kind[1]:
                raise BadInputError(f"--encoder {self.encoder!r}: unknown encoder; expected "
                                    "spectral or random:<registry name> (e.g. random:tiny)")
            from terrastill.models.registry import get_spec

            get_spec(kind[1])  # an unknown registry name is refused here
            if self.seed is None:
                raise BadInputError(f"--encoder {self.encoder}: a random encoder needs --seed")

    @property
    def needs_stats(self) -> bool:
        return bool(self.encoder and self.encoder.startswith("random:"))


def model_file_encoder(path: Path, device: str = "auto", precision: str = "auto"
                       ) -> ViTEncoder:
    """The encoder of any terrastill model file, with its card's input spec."""
    from terrastill.inference.predict import _load, resolve_device, use_bf16
    from terrastill.models.registry import uses_coords

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: model file not found")
    device = resolve_device(device)
    loaded = _load(str(path.resolve()), device)
    card, spec = loaded.card, loaded.card.input_spec
    if card.arch.get("family") == "cnn":
        raise BadInputError(f"{path}: a CNN baseline ({card.arch.get('name', 'cnn')}) has no "
                            "patch tokens to embed; use a ViT model or a pretrained encoder")
    model = {"name": card.name, "kind": "model", "file": path.name,
             "sha256": file_sha256(path), "task": card.task, "source": spec.get("source")}
    return ViTEncoder(card.name, loaded.model.encoder, spec["bands"], spec["num_steps"],
                      spec["mean"], spec["std"], model,
                      use_bf16(precision, card, device, loaded.model),
                      uses_coords(card.arch))


def random_encoder(name: str, seed: int, bands: Sequence[str], num_steps: int, size: int,
                   mean: Sequence[float], std: Sequence[float], device: str = "auto"
                   ) -> ViTEncoder:
    """A registry architecture with seeded random weights, adapted to the data."""
    import torch

    from terrastill.inference.predict import resolve_device
    from terrastill.models.encoder import PrithviViT
    from terrastill.models.registry import make_arch

    arch = make_arch(name, task="classification", num_classes=2, bands=bands,
                     num_steps=num_steps, chip_size=size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        vit = PrithviViT(**arch["encoder"])
    vit.to(resolve_device(device))
    model = {"name": f"random:{name}", "kind": "random", "seed": int(seed), "sha256": None,
             "arch": arch["encoder"]}
    return ViTEncoder(f"random:{name}", vit, bands, num_steps, mean, std, model)


def open_encoder(choice: EncoderChoice, bands: Sequence[str], num_steps: int, size: int,
                 stats: Callable[[], tuple[list[float], list[float]]]) -> Encoder:
    """The chosen encoder for data with ``bands`` × ``num_steps`` of ``size`` px; ``stats``
    gives the data's per-band mean and std (asked only by a random encoder)."""
    if choice.model is not None:
        return model_file_encoder(choice.model, choice.device, choice.precision)
    assert choice.encoder is not None
    if choice.encoder == "spectral":
        return SpectralEncoder(bands)
    name = choice.encoder.split(":", 1)[1]
    from terrastill.models.registry import get_spec

    patch = int(get_spec(name)["encoder"]["patch_size"][1])
    if size % patch:
        raise SpecMismatchError(f"--encoder {choice.encoder}: size {size} px is not a multiple "
                                f"of the patch size {patch}")
    mean, std = stats()
    assert choice.seed is not None
    return random_encoder(name, choice.seed, bands, num_steps, size, mean, std, choice.device)


class BandStats:
    """Running NaN-aware per-band mean and std over (T, C, H, W) arrays."""

    def __init__(self) -> None:
        self.n: np.ndarray | None = None
        self.s = self.ss = np.zeros(0)

    def add(self, arr: np.ndarray) -> None:
        a = np.moveaxis(np.asarray(arr, np.float64), -3, 0).reshape(arr.shape[-3], -1)
        ok = np.isfinite(a)
        v = np.where(ok, a, 0.0)
        if self.n is None:
            self.n, self.s, self.ss = ok.sum(1), v.sum(1), (v * v).sum(1)
        else:
            self.n, self.s, self.ss = self.n + ok.sum(1), self.s + v.sum(1), \
                self.ss + (v * v).sum(1)

    def result(self) -> tuple[list[float], list[float]]:
        assert self.n is not None
        n = np.maximum(self.n, 1)
        mean = self.s / n
        std = np.sqrt(np.maximum(self.ss / n - mean * mean, 0.0))
        return [float(v) for v in mean], [float(v) if v > 0 else 1.0 for v in std]
