"""IResNet (insightface's "improved" ResNet for faces, Deng et al. ArcFace): the ResNet-class student.

Follows insightface's iresnet.py: a stride-1 3x3 stem, pre-activation-style basic blocks (BN -> conv -> BN -> PReLU
-> conv -> BN) whose first block of each stage downsamples, and an output head BN -> flatten -> FC -> BN that
keeps the face's spatial layout (no global pooling). `width` scales every stage's channels so CPU profiles and
tests can use a narrow copy; width 1.0 is the published network. `feature_stages` names the taps that feature
distillation reads.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import register_model

# Basic blocks per stage, as in insightface's iresnet18 / iresnet50.
IRESNET_LAYERS = {18: (2, 2, 2, 2), 50: (3, 4, 14, 3)}
STAGE_CHANNELS = (64, 128, 256, 512)


class IBasicBlock(nn.Module):
    """BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN, plus the (projected) input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch, eps=1e-5),
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_ch, eps=1e-5),
            nn.PReLU(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_ch, eps=1e-5),
        )
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.body(x) + identity


class IResNet(nn.Module):
    """112x112 aligned face -> `embedding_dim` embedding (not normalised; the margin head normalises)."""

    def __init__(self, depth: int = 18, embedding_dim: int = 512, width: float = 1.0, input_size: int = 112):
        super().__init__()
        if depth not in IRESNET_LAYERS:
            raise ValueError(f"IResNet depth must be one of {sorted(IRESNET_LAYERS)}, got {depth}")
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        channels = [max(8, int(c * width)) for c in STAGE_CHANNELS]
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.PReLU(channels[0]))
        in_ch = channels[0]
        for index, (repeats, out_ch) in enumerate(zip(IRESNET_LAYERS[depth], channels), start=1):
            blocks = [IBasicBlock(in_ch if i == 0 else out_ch, out_ch, 2 if i == 0 else 1) for i in range(repeats)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            in_ch = out_ch
        spatial = input_size // 16
        self.bn2 = nn.BatchNorm2d(in_ch)
        self.fc = nn.Linear(in_ch * spatial * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)
        self.embedding_dim = embedding_dim
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 7x7 (for 112 input) feature map before the head."""
        x = self.stem(x)
        for name in self.feature_stages:
            x = getattr(self, name)(x)
        return self.bn2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(torch.flatten(self.forward_features(x), 1)))

    @property
    def feature_stages(self) -> dict[str, nn.Module]:
        """Named tap points (stride 2, 4, 8, 16) for feature distillation."""
        return {f"layer{i}": getattr(self, f"layer{i}") for i in range(1, 5)}


@register_model("iresnet18")
def iresnet18(embedding_dim: int = 512, width: float = 1.0, input_size: int = 112) -> IResNet:
    return IResNet(18, embedding_dim=embedding_dim, width=width, input_size=input_size)


@register_model("iresnet50")
def iresnet50(embedding_dim: int = 512, width: float = 1.0, input_size: int = 112) -> IResNet:
    return IResNet(50, embedding_dim=embedding_dim, width=width, input_size=input_size)
