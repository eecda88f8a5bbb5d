"""Under CPU bf16 autocast, the convolutions oneDNN is slow at in bf16 (strided or wide depthwise) run in fp32 and every
other convolution in bf16; CUDA autocast and fp32 training are untouched."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.cpu_autocast import convolve, slower_in_bf16_on_cpu


def test_the_rule_names_strided_and_wide_depthwise_convolutions():
    assert slower_in_bf16_on_cpu(nn.Conv2d(32, 32, 3, stride=2, groups=32))
    assert slower_in_bf16_on_cpu(nn.Conv2d(32, 32, 7, groups=32))
    assert not slower_in_bf16_on_cpu(nn.Conv2d(32, 32, 3, stride=1, groups=32))
    assert not slower_in_bf16_on_cpu(nn.Conv2d(32, 64, 1))
    assert not slower_in_bf16_on_cpu(nn.Conv2d(32, 32, 3, stride=2))  # dense, not depthwise
    assert not slower_in_bf16_on_cpu(nn.Conv2d(32, 64, 3, stride=2, groups=8))  # grouped, not depthwise


def test_under_cpu_autocast_only_the_slow_ones_stay_fp32(one_torch_thread):
    x = torch.randn(2, 16, 8, 8)
    strided, pointwise = nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.Conv2d(16, 16, 1, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept, lowered = convolve(strided, x), convolve(pointwise, x)
        from_bf16 = convolve(strided, x.bfloat16())
    assert kept.dtype == torch.float32 and from_bf16.dtype == torch.float32
    assert lowered.dtype == torch.bfloat16
    torch.testing.assert_close(kept, strided(x), rtol=0, atol=0)  # exactly the fp32 convolution
    assert convolve(strided, x).dtype == torch.float32  # no autocast: the plain module


def test_mobilefacenet_trains_under_cpu_autocast(one_torch_thread):
    from pipeline.models.registry import create_model

    model = create_model("mobilefacenet", width=0.25, input_size=32, embedding_dim=16).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 3, 32, 32))
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
