"""MobileNetV3-style classifiers (Howard et al., "Searching for MobileNetV3", 2019) in plain torch.

Inverted residual blocks with optional squeeze-and-excite and hard-swish, as in the paper's Table 2
for ``mobilenetv3_small``; ``tiny`` keeps the same blocks at a fraction of the width and depth so a
trial on 8x8 digits trains an epoch in well under a second on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _divisible(channels: float, divisor: int = 8) -> int:
    """Rounds to a multiple of ``divisor`` without losing more than 10% (the paper's rule)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


@dataclass(frozen=True)
class Block:
    kernel: int
    expanded: int
    out: int
    se: bool
    hswish: bool
    stride: int


@dataclass(frozen=True)
class Spec:
    stem: int
    stem_stride: int
    blocks: tuple[Block, ...]
    last_conv: int
    hidden: int
    """Width of the classifier's hidden layer; 0 for none."""

    @property
    def total_stride(self) -> int:
        stride = self.stem_stride
        for block in self.blocks:
            stride *= block.stride
        return stride


SPECS: dict[str, Spec] = {
    "mobilenetv3_small": Spec(
        stem=16,
        stem_stride=2,
        blocks=(
            Block(3, 16, 16, True, False, 2),
            Block(3, 72, 24, False, False, 2),
            Block(3, 88, 24, False, False, 1),
            Block(5, 96, 40, True, True, 2),
            Block(5, 240, 40, True, True, 1),
            Block(5, 240, 40, True, True, 1),
            Block(5, 120, 48, True, True, 1),
            Block(5, 144, 48, True, True, 1),
            Block(5, 288, 96, True, True, 2),
            Block(5, 576, 96, True, True, 1),
            Block(5, 576, 96, True, True, 1),
        ),
        last_conv=576,
        hidden=1024,
    ),
    "tiny": Spec(
        stem=16,
        stem_stride=1,  # inputs as small as 8x8 keep some spatial extent
        blocks=(
            Block(3, 32, 16, True, False, 2),
            Block(3, 48, 24, False, True, 1),
            Block(3, 64, 32, True, True, 2),
        ),
        last_conv=96,
        hidden=0,
    ),
}


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int, groups: int, act: nn.Module | None
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: a global pool, a bottleneck, and a hard-sigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _divisible(channels / 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeezed, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeezed, channels, 1),
            nn.Hardsigmoid(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate: torch.Tensor = self.gate(x)
        return x * gate


class InvertedResidual(nn.Module):
    """Expand (1x1), filter (depthwise kxk), excite, project (1x1, linear); a skip when shapes allow."""

    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if block.hswish else nn.ReLU
        layers: list[nn.Module] = []
        if block.expanded != cin:
            layers.append(_conv_bn(cin, block.expanded, 1, 1, 1, act()))
        width = block.expanded
        layers.append(_conv_bn(width, width, block.kernel, block.stride, width, act()))  # depthwise
        if block.se:
            layers.append(SqueezeExcite(block.expanded))
        layers.append(_conv_bn(block.expanded, block.out, 1, 1, 1, None))
        self.body = nn.Sequential(*layers)
        self.residual = block.stride == 1 and cin == block.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.body(x)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    def __init__(self, spec: Spec, num_classes: int, in_channels: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, spec.stem, 3, spec.stem_stride, 1, nn.Hardswish())]
        channels = spec.stem
        for block in spec.blocks:
            layers.append(InvertedResidual(channels, block))
            channels = block.out
        layers.append(_conv_bn(channels, spec.last_conv, 1, 1, 1, nn.Hardswish()))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        width = spec.last_conv
        if spec.hidden:
            head += [nn.Linear(width, spec.hidden), nn.Hardswish(), nn.Dropout(dropout)]
            width = spec.hidden
        head.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*head)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return logits


def build(name: str, num_classes: int, in_channels: int) -> MobileNetV3:
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(SPECS))}")
    return MobileNetV3(SPECS[name], num_classes, in_channels)
