"""Spectral distillation (SATtxt stage 1): a frozen multispectral teacher → an RGB ViT student.

The teacher is any terrastill model file (its encoder's patch tokens, averaged over the time
steps, are the targets) or ``spectral`` (per-band statistics of every band: one vector per
window). The student is a registry ViT (``tiny`` by default) reading only the RGB bands of the
same windows; a light projector (LayerNorm → Linear → GELU → Linear) maps its patch tokens to
the teacher's feature space, and the feature loss (MSE or cosine) is taken per patch on the
coarser of the two token grids plus on the window mean. Teacher features are computed once
(the teacher is frozen) and standardised per channel; flips and 90° rotations are applied to
the student input and to the teacher's token grid alike. The projector is dropped afterwards:
the student is saved as an encoder-only ``embedding`` model file (like ``pretrain``'s), so
``embed``, ``train --weights`` and ``align`` read it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from terrastill import __version__
from terrastill.atomic import write_text_atomic
from terrastill.embeddings.sampling import Windows, band_stats
from terrastill.errors import BadInputError, SpecMismatchError
from terrastill.progress import progress_bar

LOSSES = ("mse", "cosine")
RGB_DEFAULT = ("red", "green", "blue")


@dataclass
class SpectralDistillOptions:
    """Everything :func:`spectral_distill` can be told (the CLI flags map 1:1)."""

    rgb: tuple[str, ...] = RGB_DEFAULT
    model: str = "tiny"
    loss: str = "mse"
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    projector_hidden: int = 256
    augment: bool = True
    weights: str | None = None
    seed: int = 0
    device: str = "auto"
    name: str | None = None
    command: str | None = None


def parse_rgb(text: str | Sequence[str]) -> tuple[str, ...]:
    """``--rgb red,green,blue`` (or ``B04,B03,B02``) as three canonical band names."""
    from terrastill.embeddings.images import canonical_name

    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    if len(parts) != 3 or any(not p for p in parts):
        raise BadInputError(f"--rgb {text!r}: expected three band names, e.g. red,green,blue")
    names = tuple(canonical_name(p) for p in parts)
    if len(set(names)) != 3:
        raise BadInputError(f"--rgb {text!r}: a band is named twice")
    return names


class Teacher:
    """A frozen teacher: ``kind`` ``tokens`` (a ViT's patch grid) or ``vector`` (one vector)."""

    def __init__(self, encoder: Any, kind: str) -> None:
        self.encoder = encoder
        self.kind = kind
        self.bands: list[str] = list(encoder.bands)
        self.name: str = encoder.name

    def describe(self) -> dict[str, Any]:
        return {**self.encoder.model, "bands": self.bands, "kind": self.kind,
                "dim": int(self.encoder.dim)}

    def features(self, array: np.ndarray, batch_size: int = 32) -> torch.Tensor:
        """(N, D, h, w) token grids or (N, D) vectors for windows (N, T, C_teacher, H, W)."""
        out = []
        with progress_bar("windows") as bar:
            task = bar.add_task("teacher features", total=len(array))
            for s in range(0, len(array), batch_size):
                part = array[s:s + batch_size]
                if self.kind == "tokens":
                    maps = self.encoder.patch_maps_from_tensor(self.encoder.normalise(part))
                    out.append(torch.from_numpy(maps))
                else:
                    out.append(torch.from_numpy(self.encoder.vectors(part)))
                bar.advance(task, len(part))
        return torch.cat(out).float()


def open_teacher(teacher: str | Path, data_bands: Sequence[str], device: str = "cpu"
                 ) -> Teacher:
    """``spectral`` (statistics of every data band) or a model file's encoder."""
    from terrastill.embeddings.encoders import SpectralEncoder, model_file_encoder

    if str(teacher) == "spectral":
        return Teacher(SpectralEncoder(list(data_bands)), "vector")
    path = Path(teacher)
    if path.is_dir() and (path / "model.pt").is_file():
        path = path / "model.pt"
    return Teacher(model_file_encoder(path, device, "fp32"), "tokens")


def chip_windows(chips_dir: str | Path) -> Windows:
    """Every chip of a chip folder as a window (N, T, C, H, W), with its dataset's spec."""
    import rasterio

    from terrastill.data.dataset import read_dataset_meta, read_index
    from terrastill.data.normalize import split_time_bands

    root = Path(chips_dir)
    meta = read_dataset_meta(root)
    index = read_index(root)
    if not len(index):
        raise BadInputError(f"{root}: the chip folder has no chips")
    steps = int(meta["num_steps"])
    arrays = []
    with progress_bar("chips") as bar:
        task = bar.add_task("reading chips", total=len(index))
        for cid in index["id"].astype(str):
            path = root / "chips" / f"{cid}.tif"
            try:
                with rasterio.open(path) as src:
                    arrays.append(split_time_bands(src.read().astype(np.float32), steps))
            except (rasterio.errors.RasterioError, ValueError) as exc:
                raise BadInputError(f"{path}: cannot read chip ({exc})") from exc
            bar.advance(task)
    spec = {k: meta.get(k) for k in ("source", "bands", "num_steps", "chip_size", "resolution")}
    spec["chips"] = str(root)
    return Windows(np.stack(arrays), list(index["id"].astype(str)),
                   [str(d) for d in index.get("date", [""] * len(index))], spec, len(index), {})


class Projector(nn.Module):
    """Student token (D_s) → teacher feature (D_t): LayerNorm, Linear, GELU, Linear."""

    def __init__(self, d_in: int, d_out: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(),
                                 nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def feature_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """MSE, or 1 − cosine similarity along dim 1 (channels), averaged."""
    if kind == "mse":
        return F.mse_loss(pred, target)
    return (1.0 - F.cosine_similarity(pred, target, dim=1)).mean()


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


class DistillStep(nn.Module):
    """Student encoder + projector; returns the loss against precomputed teacher features."""

    def __init__(self, student: nn.Module, projector: Projector, kind: str, loss: str) -> None:
        super().__init__()
        self.student = student
        self.projector = projector
        self.kind = kind
        self.loss = loss

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        enc = self.student.encoder
        tokens = enc(x)
        t, h, w = enc.token_grid(x.shape)
        patches = tokens[:, 1:].reshape(len(x), t, h * w, -1).mean(1)  # time-pooled
        proj = self.projector(patches)  # (N, h*w, D_t)
        pooled = proj.mean(1)
        if self.kind == "vector":
            return feature_loss(pooled, target, self.loss)
        grid = proj.transpose(1, 2).reshape(len(x), -1, h, w)
        size = (min(h, target.shape[-2]), min(w, target.shape[-1]))
        g = F.adaptive_avg_pool2d(grid, size)
        tg = F.adaptive_avg_pool2d(target, size)
        return feature_loss(g, tg, self.loss) + feature_loss(pooled, target.mean((-2, -1)),
                                                             self.loss)


def _standardise(feats: torch.Tensor) -> tuple[torch.Tensor, list[float], list[float]]:
    dims = [0, *range(2, feats.ndim)]
    mean = feats.mean(dims, keepdim=True)
    std = feats.std(dims, keepdim=True).clamp_min(1e-6)
    return (feats - mean) / std, mean.flatten().tolist(), std.flatten().tolist()


def spectral_distill(teacher_ref: str | Path, windows: Windows, out_dir: str | Path,
                     options: SpectralDistillOptions | None = None) -> dict[str, Any]:
    """Distil the teacher into an RGB student on ``windows``; write ``out_dir/model.pt``."""
    from terrastill.embeddings.pretrain import check_model_input
    from terrastill.models.modelfile import ModelCard, fill_card_stats, save_model_file
    from terrastill.models.registry import build_model
    from terrastill.models.weights import load_pretrained
    from terrastill.training.train import plain, resolve_device

    opt = options or SpectralDistillOptions()
    if opt.loss not in LOSSES:
        raise BadInputError(f"--loss {opt.loss!r}: expected one of {', '.join(LOSSES)}")
    if opt.epochs < 1 or opt.batch_size < 1:
        raise BadInputError("--epochs and --batch-size must be at least 1")
    rgb = list(parse_rgb(opt.rgb))
    device = resolve_device(opt.device)
    spec = dict(windows.spec)
    data_bands = [str(b) for b in spec["bands"]]
    teacher = open_teacher(teacher_ref, data_bands, device)
    lacking = [b for b in rgb if b not in teacher.bands]
    if lacking:
        raise BadInputError(f"{teacher_ref}: the teacher reads {', '.join(teacher.bands)}, "
                            f"not the requested RGB band(s) {', '.join(lacking)}")
    if len(teacher.bands) <= 3:
        raise BadInputError(f"{teacher_ref}: the teacher reads only {', '.join(teacher.bands)}"
                            "; spectral distillation needs a multispectral teacher")
    _n, steps, _c, height, width = windows.array.shape
    t_idx = teacher.encoder.check(data_bands, steps, height, width, "the data")
    missing = [b for b in rgb if b not in data_bands]
    if missing:
        raise SpecMismatchError(f"the data lacks RGB band(s) {', '.join(missing)} (it has "
                                f"{', '.join(data_bands)})")
    s_idx = [data_bands.index(b) for b in rgb]
    arch = check_model_input(opt.model, rgb, steps, height, "windows")
    if height != width:
        raise BadInputError(f"windows are {width}×{height} px; the student needs square windows")

    feats = teacher.features(windows.array[:, :, t_idx])
    target, t_mean, t_std = _standardise(feats)
    rgb_arr = np.ascontiguousarray(windows.array[:, :, s_idx])
    mean, std = band_stats(rgb_arr)
    from terrastill.data.normalize import normalize_chip

    x_all = normalize_chip(rgb_arr, mean, std)[0]  # (N, 3, T, H, W), NaN → 0

    torch.manual_seed(opt.seed)
    student = build_model(arch)
    load_info = load_pretrained(student, opt.weights).to_dict() if opt.weights else None
    projector = Projector(student.encoder.embed_dim, int(target.shape[1]),
                          int(opt.projector_hidden))
    step_mod = DistillStep(student, projector, teacher.kind, opt.loss).to(device)
    params = list(step_mod.parameters())
    optim = torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
    n = len(x_all)
    bs = min(opt.batch_size, n)
    per_epoch = max(1, n // bs)
    total = per_epoch * int(opt.epochs)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: (s + 1) / warm if s < warm else
                                              0.01 + 0.99 * 0.5 * (1 + math.cos(
                                                  math.pi * min(1.0, (s - warm) /
                                                                max(1, total - warm)))))
    gen = torch.Generator().manual_seed(opt.seed)
    curve: list[float] = []
    t0 = time.perf_counter()
    step_mod.train()
    with progress_bar("batches") as bar:
        task = bar.add_task("spectral distillation", total=total)
        for epoch in range(int(opt.epochs)):
            order = torch.randperm(n, generator=gen)
            losses = []
            for b in range(per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                x, y = x_all[idx], target[idx]
                if opt.augment:
                    r = torch.randint(0, 8, (1,), generator=gen).item()
                    x = _dihedral(x, r % 4, r >= 4)
                    if teacher.kind == "tokens":
                        y = _dihedral(y, r % 4, r >= 4)
                loss = step_mod(x.to(device), y.to(device))
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                sched.step()
                losses.append(float(loss.detach()))
                bar.update(task, advance=1, description=(
                    f"epoch {epoch + 1}/{opt.epochs} loss {losses[-1]:.4f}"))
            curve.append(round(float(np.mean(losses)), 6))
    seconds = time.perf_counter() - t0

    student = step_mod.student.cpu().eval()
    input_spec = {**spec, "bands": rgb, "mean": mean, "std": std}
    training = plain({
        "objective": "spectral-distillation", "loss": opt.loss, "epochs": int(opt.epochs),
        "loss_curve": curve, "seconds": round(seconds, 2), "samples": n, "device": device,
        "teacher_bands": teacher.bands, "teacher_kind": teacher.kind,
        "teacher_feature_mean": t_mean, "teacher_feature_std": t_std,
        "projector": {"type": "layernorm-linear-gelu-linear", "in": student.encoder.embed_dim,
                      "hidden": int(opt.projector_hidden), "out": int(target.shape[1]),
                      "params": int(sum(p.numel() for p in projector.parameters()))},
        "windows": windows.summary(), "pretrained": load_info,
        "options": dataclasses.asdict(opt)})
    card = ModelCard(name=opt.name or f"{opt.model}-rgb-distilled", task="embedding",
                     arch=student.arch, input_spec=input_spec, training=training,
                     teacher=plain(teacher.describe()),
                     created_with={"terrastill": __version__, "torch": str(torch.__version__),
                                   "command": opt.command or "terrastill spectral-distill"})
    fill_card_stats(card, student)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "loss"])
    w.writerows([i + 1, v] for i, v in enumerate(curve))
    write_text_atomic(out / "losses.csv", buf.getvalue())
    path = save_model_file(out / "model.pt", student, card)
    return {"model": path, "samples": n, "epochs": int(opt.epochs), "loss_curve": curve,
            "seconds": round(seconds, 2), "teacher": teacher.describe(),
            "params": card.encoder_params}
