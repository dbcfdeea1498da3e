"""ResNet-18/34/50 backbones in plain PyTorch (torchvision's layout and parameter names).

``conv1``/``bn1``/``layer1..4`` with ``BasicBlock`` or ``Bottleneck`` blocks; any number of
input channels; ``dilate`` turns the strides of ``layer3``/``layer4`` into dilation
(output stride 8, as DeepLabV3 uses). :meth:`ResNet.forward` returns the feature maps of the
stem (stride 2) and of every stage, shallow to deep, for U-Net skips or an ASPP head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                     bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride, dilation)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, 1, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet(nn.Module):
    """A ResNet trunk (no pooling/fc head); ``channels`` lists the widths of its outputs."""

    def __init__(self, name: str, in_chans: int, dilate: bool = False) -> None:
        super().__init__()
        if name not in LAYOUTS:
            raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(LAYOUTS)}")
        kind, blocks = LAYOUTS[name]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" \
            else Bottleneck
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin, self._dilation = 64, 1
        strides_dil = [(1, False), (2, False), (2, dilate), (2, dilate)]
        layers = []
        for i, (n, (stride, dil)) in enumerate(zip(blocks, strides_dil, strict=True)):
            layers.append(self._make_layer(block, 64 * 2**i, n, stride, dil))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.channels = [64, *(64 * 2**i * block.expansion for i in range(4))]
        self._init_weights()

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], width: int, n: int,
                    stride: int, dilate: bool) -> nn.Sequential:
        prev_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._cin != width * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._cin, width * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(width * block.expansion))
        layers = [block(self._cin, width, stride, prev_dilation, downsample)]
        self._cin = width * block.expansion
        layers += [block(self._cin, width, 1, self._dilation) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps: stem (stride 2), layer1 (4), layer2 (8), layer3, layer4."""
        stem = self.relu(self.bn1(self.conv1(x)))
        feats: list[torch.Tensor] = [stem]
        h = self.maxpool(stem)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            h = layer(h)
            feats.append(h)
        return feats


def stage_channels(name: str) -> Sequence[int]:
    """Widths of :meth:`ResNet.forward`'s outputs for backbone ``name``."""
    kind, _ = LAYOUTS[name]
    exp = 1 if kind == "basic" else 4
    return [64, *(64 * 2**i * exp for i in range(4))]
