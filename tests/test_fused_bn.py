"""The compiled BatchNorm + PReLU training kernel computes what the two modules compute: outputs, gradients and
running statistics; evaluation and export never take it."""

from __future__ import annotations

import copy

import torch

from pipeline.models.fused_bn import fused_kernels, fused_kernels_active
from pipeline.models.registry import create_model


def test_fused_training_step_matches_the_modules(one_torch_thread):
    torch.manual_seed(0)
    eager = create_model("mobilefacenet", width=0.25, input_size=32, embedding_dim=16).train()
    fused = copy.deepcopy(eager)
    images = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    target = torch.randn(8, 16)
    eager_loss = (eager(images) - target).pow(2).mean()
    eager_loss.backward()
    with fused_kernels(True):
        fused_loss = (fused(images) - target).pow(2).mean()
        fused_loss.backward()
        assert fused_kernels_active(), "torch.compile failed here: the fused path fell back to the eager modules"
    torch.testing.assert_close(fused_loss, eager_loss, rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(eager.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)
    for (name, a), (_, b) in zip(eager.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_eval_mode_never_takes_the_fused_path(one_torch_thread):
    torch.manual_seed(0)
    model = create_model("mobilefacenet", width=0.25, input_size=32, embedding_dim=16).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        plain = model(images)
        with fused_kernels(True):
            torch.testing.assert_close(model(images), plain, rtol=0, atol=0)
