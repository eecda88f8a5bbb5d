"""Convolutions kept in fp32 under CPU bf16 autocast, because oneDNN runs their backward slower in bf16.

Measured here (torch 2.14.1's oneDNN, an AVX512-BF16 EPYC, 2 threads, MobileFaceNet at batch 64, channels-last):
bf16 halves to thirds the forward and backward of every pointwise and stride-1 3x3 depthwise convolution, but the
backward of a stride-2 depthwise convolution takes 4x its fp32 time (128 channels at 56x56: 35 -> 136 ms, 512 at
14x14: 3 -> 94 ms) and that of the 7x7 global depthwise one 2.3x. Run in fp32, those four layers keep a bf16 step
at 0.86-0.9 s against 1.38 s with every convolution in bf16 (and 1.15-1.24 s in fp32). CUDA autocast is untouched.
"""

from __future__ import annotations

import torch
from torch import nn


def slower_in_bf16_on_cpu(conv: nn.Conv2d) -> bool:
    """A depthwise convolution with a stride, or with a kernel wider than 3 (the measured slow bf16 backward)."""
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    return depthwise and (max(conv.stride) > 1 or max(conv.kernel_size) > 3)


def convolve(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)`, in fp32 where CPU autocast would pick a slow bf16 kernel (the output is then fp32)."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and slower_in_bf16_on_cpu(conv):
        with torch.autocast("cpu", enabled=False):
            return conv(x.float())
    return conv(x)
