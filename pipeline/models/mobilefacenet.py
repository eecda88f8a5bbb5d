"""MobileFaceNet (Chen et al., 2018): the mobile CNN student.

Depthwise-separable inverted bottlenecks with PReLU and BatchNorm, and a global depthwise convolution (GDC)
instead of global average pooling, because a face's spatial layout matters after alignment. The 512-d
embedding follows insightface's variant. `feature_stages` names the taps that feature distillation reads.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.cpu_autocast import convolve
from pipeline.models.fused_bn import batchnorm_prelu
from pipeline.models.registry import register_model


class ConvBnAct(nn.Sequential):
    """Conv -> BatchNorm -> optional PReLU, the unit every MobileFaceNet block is built from.

    In training, BatchNorm + PReLU may run as one compiled kernel (`fused_bn`), and under CPU bf16 autocast the
    convolutions oneDNN is slow at in bf16 stay fp32 (`cpu_autocast`); the modules, and eval, are unchanged.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2 if kernel > 1 else 0, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act:
            layers.append(nn.PReLU(out_ch))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = convolve(self[0], x)
        if len(self) == 3:
            return batchnorm_prelu(y, self[1], self[2])
        return self[1](y)


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1, depthwise 3x3, linear project 1x1; residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.block = nn.Sequential(
            ConvBnAct(in_ch, hidden, 1),
            ConvBnAct(hidden, hidden, 3, stride, groups=hidden),
            ConvBnAct(hidden, out_ch, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


# (expansion, out_channels, repeats, first_stride) per stage, as in the paper's Table 1.
MOBILEFACENET_STAGES = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class MobileFaceNet(nn.Module):
    """112x112 aligned face -> `embedding_dim` embedding (not normalised; the margin head normalises)."""

    def __init__(self, embedding_dim: int = 512, width: float = 1.0, input_size: int = 112):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        base = int(64 * width)
        self.stem = nn.Sequential(ConvBnAct(3, base, 3, 2), ConvBnAct(base, base, 3, 1, groups=base))
        stages: list[nn.Module] = []
        in_ch = base
        for expansion, out_ch, repeats, stride in MOBILEFACENET_STAGES:
            out_ch = int(out_ch * width)
            blocks = [Bottleneck(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, expansion) for i in range(repeats)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.conv_head = ConvBnAct(in_ch, 512, 1)
        head_size = input_size // 16
        self.gdc = ConvBnAct(512, 512, head_size, groups=512, act=False)
        self.gdc[0].padding = (0, 0)
        self.embedding = nn.Sequential(
            nn.Conv2d(512, embedding_dim, 1, bias=False), nn.BatchNorm2d(embedding_dim), nn.Flatten()
        )
        self.embedding_dim = embedding_dim
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 7x7 (for 112 input) feature map before the head."""
        return self.conv_head(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.gdc(self.forward_features(x)))

    @property
    def feature_stages(self) -> dict[str, nn.Module]:
        """Named tap points (stride 4, 8, 8, 16, 16) for feature distillation."""
        return {f"stages.{i}": stage for i, stage in enumerate(self.stages)}


@register_model("mobilefacenet")
def mobilefacenet(embedding_dim: int = 512, width: float = 1.0, input_size: int = 112) -> MobileFaceNet:
    return MobileFaceNet(embedding_dim=embedding_dim, width=width, input_size=input_size)
