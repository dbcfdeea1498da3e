"""CNN baselines trained from scratch: ``unet-r18`` and ``deeplabv3-r50`` (torch only).

- ``unet-r18``: ResNet-18 encoder + U-Net decoder (skips at strides 16, 8, 4, 2; decoder
  widths 256/128/64/32/16, as segmentation-models-pytorch's ``Unet``).
- ``deeplabv3-r50``: ResNet-50 with dilated ``layer3``/``layer4`` (output stride 8) + ASPP
  (rates 12/24/36, 256 channels, image pooling) + 3×3 conv + 1×1 classifier, upsampled
  bilinearly (torchvision's ``deeplabv3_resnet50`` without the auxiliary head).

Input is the same (B, C, T, H, W) normalised tensor the ViTs take: the T steps are stacked
along channels (time-major), so any C and T work; derived index channels are computed by the
encoder's :class:`~terrastill.data.indices.IndexLayer`. Outputs match
:class:`~terrastill.models.model.TerraModel`'s: segmentation (B, K, H, W) logits, regression
(B, 1, H, W), classification (B, K).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from terrastill.errors import BadInputError, SpecMismatchError
from terrastill.models.resnet import ResNet, stage_channels

CNN_TASKS = ("segmentation", "regression", "classification")

CNN_SPECS: dict[str, dict[str, Any]] = {
    "unet-r18": {
        "description": "U-Net with a ResNet-18 encoder, trained from scratch (CNN baseline)",
        "encoder": {"backbone": "resnet18", "dilate": False},
        "head": {"decoder": "unet", "decoder_channels": [256, 128, 64, 32, 16]},
    },
    "deeplabv3-r50": {
        "description": "DeepLabV3, dilated ResNet-50 (output stride 8) + ASPP, from scratch",
        "encoder": {"backbone": "resnet50", "dilate": True},
        "head": {"decoder": "deeplabv3", "channels": 256, "aspp_rates": [12, 24, 36]},
    },
}


def is_cnn(name: str) -> bool:
    return name.lower() in CNN_SPECS


def full_cnn_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with the CNN spec's defaults filled in (what the model file stores)."""
    arch = copy.deepcopy(arch)
    spec = CNN_SPECS.get(str(arch.get("name", "")).lower())
    task = arch.get("task", arch.get("head", {}).get("type", "segmentation"))
    if task not in CNN_TASKS:
        raise BadInputError(f"model {arch.get('name')!r}: a CNN baseline has no {task!r} "
                            f"task; choose one of {', '.join(CNN_TASKS)}")
    enc = {**(spec["encoder"] if spec else {}), **arch["encoder"]}
    enc["in_chans"] = int(enc["in_chans"])
    enc["num_frames"] = int(enc.get("num_frames", 1))
    enc["img_size"] = int(enc.get("img_size", 64))
    head = {**(spec["head"] if spec else {}), **arch.get("head", {}), "type": task}
    if task == "regression":
        head["num_outputs"] = int(head.get("num_outputs", 1))
        head.pop("num_classes", None)
    else:
        head["num_classes"] = int(head.get("num_classes", 2))
    return {**arch, "family": "cnn", "task": task, "encoder": enc, "head": head}


def make_cnn_arch(name: str, task: str, num_classes: int, bands: Sequence[str] | None,
                  num_steps: int | None, chip_size: int | None,
                  head: dict[str, Any] | None = None,
                  inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``arch`` of CNN baseline ``name`` for a dataset's bands, T, chip size and task."""
    from terrastill.data.indices import channel_names

    key = name.lower()
    if key not in CNN_SPECS:
        raise BadInputError(f"unknown CNN baseline {name!r}; choose one of "
                            f"{', '.join(CNN_SPECS)}")
    bands = list(bands) if bands is not None else ["blue", "green", "red", "nir_narrow",
                                                   "swir1", "swir2"]
    channels = channel_names(inputs, bands)
    arch: dict[str, Any] = {
        "family": "cnn", "name": key, "task": task,
        "encoder": {"in_chans": len(channels), "num_frames": int(num_steps or 1),
                    "img_size": int(chip_size or 64)},
        "head": {**(head or {}), "type": task},
        "bands": channels, "pretrained_bands": None, "hub": None,
    }
    if task != "regression":
        arch["head"]["num_classes"] = int(num_classes)
    if inputs and inputs.get("indices"):
        arch["inputs"] = copy.deepcopy(inputs)
    return full_cnn_arch(arch)


def _conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CNNEncoder(nn.Module):
    """(B, C, T, H, W) → ResNet feature maps; T steps stacked on channels (time-major)."""

    def __init__(self, cfg: dict[str, Any], inputs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = dict(cfg)
        self.in_chans = int(cfg["in_chans"])
        self.num_frames = int(cfg["num_frames"])
        self.inputs: nn.Module | None = None
        if inputs and inputs.get("indices"):
            from terrastill.data.indices import IndexLayer

            self.inputs = IndexLayer(inputs)
        self.backbone = ResNet(cfg["backbone"], self.in_chans * self.num_frames,
                               bool(cfg.get("dilate")))
        self.channels = stage_channels(cfg["backbone"])

    @property
    def depth(self) -> int:
        return 4  # residual stages

    def stack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) or (B, C, H, W) → (B, T·C, H, W), indices appended first."""
        if self.inputs is not None:
            x = self.inputs(x)
        if x.ndim == 4:
            x = x.unsqueeze(2)
        b, c, t, h, w = x.shape
        if c != self.in_chans or t != self.num_frames:
            raise SpecMismatchError(f"this CNN was trained on {self.in_chans} channels × "
                                    f"T={self.num_frames}; got {c} channels × T={t}")
        return x.transpose(1, 2).reshape(b, t * c, h, w)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(self.stack(x))


class UNetDecoder(nn.Module):
    """Upsample ×2, concatenate the skip, two 3×3 conv-BN-ReLU; a last block without skip
    brings stride 2 to full resolution."""

    def __init__(self, enc_channels: Sequence[int], widths: Sequence[int], out: int) -> None:
        super().__init__()
        skips = list(enc_channels[-2::-1])  # layer3, layer2, layer1, stem
        if len(widths) != len(skips) + 1:
            raise BadInputError(f"unet decoder_channels needs {len(skips) + 1} widths")
        blocks, cin = [], enc_channels[-1]
        for w, sk in zip(widths, [*skips, 0], strict=True):
            blocks.append(nn.Sequential(_conv_bn_relu(cin + sk, w), _conv_bn_relu(w, w)))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(cin, out, 3, padding=1)

    def forward(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        h = feats[-1]
        skips = list(feats[-2::-1])
        for i, block in enumerate(self.blocks):
            target = skips[i].shape[-2:] if i < len(skips) else size
            h = F.interpolate(h, size=target, mode="nearest")
            if i < len(skips):
                h = torch.cat([h, skips[i]], dim=1)
            h = block(h)
        return self.out(h)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1, three dilated 3×3 and an image-pooling branch.

    The pooling branch has no BatchNorm (it sees one value per channel and image)."""

    def __init__(self, cin: int, ch: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList([_conv_bn_relu(cin, ch, 1),
                                    *(_conv_bn_relu(cin, ch, 3, int(r)) for r in rates)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, ch, 1),
                                  nn.ReLU(inplace=True))
        self.project = nn.Sequential(_conv_bn_relu(ch * (len(rates) + 2), ch, 1),
                                     nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(x) for conv in self.convs]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Head(nn.Module):
    def __init__(self, cin: int, ch: int, rates: Sequence[int], out: int) -> None:
        super().__init__()
        self.aspp = ASPP(cin, ch, rates)
        self.conv = _conv_bn_relu(ch, ch)
        self.classifier = nn.Conv2d(ch, out, 1)

    def forward(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        y = self.classifier(self.conv(self.aspp(feats[-1])))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class PoolClassifier(nn.Module):
    def __init__(self, cin: int, out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, out)

    def forward(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return self.fc(self.drop(feats[-1].mean(dim=(-2, -1))))


class CNNModel(nn.Module):
    """A CNN baseline with :class:`~terrastill.models.model.TerraModel`'s interface."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        self.arch = full_cnn_arch(arch)
        self.task: str = self.arch["task"]
        self.encoder = CNNEncoder(self.arch["encoder"], self.arch.get("inputs"))
        hc = self.arch["head"]
        out = int(hc["num_outputs"]) if self.task == "regression" else int(hc["num_classes"])
        chans = self.encoder.channels
        if self.task == "classification":
            self.head: nn.Module = PoolClassifier(chans[-1], out, float(hc.get("dropout", 0)))
        elif hc["decoder"] == "unet":
            self.head = UNetDecoder(chans, hc["decoder_channels"], out)
        elif hc["decoder"] == "deeplabv3":
            self.head = DeepLabV3Head(chans[-1], int(hc["channels"]), hc["aspp_rates"], out)
        else:
            raise BadInputError(f"unknown CNN decoder {hc['decoder']!r}")

    def forward(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(x), tuple(x.shape[-2:]))

    def forward_with_features(self, x: torch.Tensor, return_blocks: Sequence[int] | None = None,
                              temporal_coords: torch.Tensor | None = None,
                              location_coords: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and (no) block features: feature matching needs a ViT student."""
        if return_blocks:
            raise BadInputError(f"{self.arch['name']}: feature distillation (--feature-pairs) "
                                "needs a ViT student; a CNN student learns from the logits")
        return self(x), []

    def forward_features(self, x: torch.Tensor, return_blocks: Sequence[int] | None = None,
                         **coords: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise BadInputError(f"{self.arch['name']}: a CNN baseline has no encoder tokens to "
                            "embed; use a ViT model")

    @property
    def depth(self) -> int:
        return self.encoder.depth

    def truncate(self, n_blocks: int) -> CNNModel:
        raise BadInputError(f"{self.arch['name']}: a CNN cannot be cut to {n_blocks} blocks; "
                            "distil it into a student with --student")


def check_student_fits(student_arch: dict[str, Any], teacher_arch: dict[str, Any],
                       where: str) -> None:
    """Refuse a student whose output classes or input channels differ from the teacher's."""
    s_head, t_head = student_arch["head"], teacher_arch["head"]
    if student_arch["task"] != teacher_arch["task"]:
        raise SpecMismatchError(f"{where}: a {student_arch['task']} model cannot learn from a "
                                f"{teacher_arch['task']} teacher")
    key = "num_outputs" if student_arch["task"] == "regression" else "num_classes"
    if int(s_head.get(key, 1)) != int(t_head.get(key, 1)):
        raise SpecMismatchError(f"{where}: the student has {s_head.get(key)} output classes, "
                                f"the teacher {t_head.get(key)}; they must match")
    s_in, t_in = _channels(student_arch), _channels(teacher_arch)
    if s_in != t_in:
        raise SpecMismatchError(f"{where}: the student was trained on {len(s_in)} input "
                                f"channels ({', '.join(s_in)}), the teacher takes {len(t_in)} "
                                f"({', '.join(t_in)})")


def _channels(arch: dict[str, Any]) -> list[str]:
    return [str(b) for b in arch.get("bands") or []]


def load_cnn_weights(model: CNNModel, source: str) -> dict[str, Any]:
    """Initialise ``model`` from a CNN model file (same backbone): every tensor whose name and
    shape match is copied (a head for another number of classes stays fresh). A file trained
    on fewer input channels (or other channels) than ``model`` takes is refused."""
    from pathlib import Path

    from terrastill.models.modelfile import load_model_file

    path = Path(source)
    if not path.is_file():
        raise BadInputError(f"--weights {source}: a CNN baseline starts from scratch or from "
                            "a CNN model file (.pt); no such file")
    loaded = load_model_file(path)
    src = loaded.card.arch
    if src.get("family") != "cnn" or src["encoder"]["backbone"] != \
            model.arch["encoder"]["backbone"]:
        raise BadInputError(f"{path}: not a {model.arch['encoder']['backbone']} CNN model file")
    want, got = _channels(model.arch), _channels(src)
    enc_src, enc_dst = src["encoder"], model.arch["encoder"]
    if want != got or int(enc_src["num_frames"]) != int(enc_dst["num_frames"]):
        raise SpecMismatchError(
            f"{path}: trained on {len(got)} input channels × T={enc_src['num_frames']} "
            f"({', '.join(got)}); asked for {len(want)} × T={enc_dst['num_frames']} "
            f"({', '.join(want)})")
    state = model.state_dict()
    copied = [k for k, v in loaded.model.state_dict().items()
              if k in state and state[k].shape == v.shape]
    state.update({k: loaded.model.state_dict()[k] for k in copied})
    model.load_state_dict(state)
    return {"source": str(path), "copied": len(copied), "fresh": len(state) - len(copied)}
