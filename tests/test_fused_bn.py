"""The compiled BatchNorm + PReLU training kernel computes what the two modules compute: outputs, gradients and
running statistics; evaluation and export never take it."""

from __future__ import annotations

import copy

import torch

from pipeline.models.fused_bn import batchnorm_prelu, fused_kernels, fused_kernels_active
from pipeline.models.mobilefacenet import ConvBnAct
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


def test_bf16_maps_stay_bf16_with_fp32_statistics(one_torch_thread):
    """Under CPU bf16 autocast the kernel reads and writes bf16 maps but keeps BatchNorm's statistics in fp32: its
    running statistics stay within bf16 rounding of the fp32 modules', and its gradients are as close to fp32's as
    ATen's own BatchNorm and PReLU give under the same autocast."""
    torch.manual_seed(0)
    eager = create_model("mobilefacenet", width=0.25, input_size=32, embedding_dim=16).train()
    images = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    target = torch.randn(8, 16)

    def train_step(fused: bool, bf16: bool) -> tuple[torch.nn.Module, torch.Tensor, dict]:
        model, maps = copy.deepcopy(eager), {}
        model.stages[0][0].block[0].register_forward_hook(lambda module, args, output: maps.update(output=output))
        with fused_kernels(fused):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(images)
            (out.float() - target).pow(2).mean().backward()
            assert not fused or fused_kernels_active(), "torch.compile failed here: the fused path fell back to the eager modules"
        return model, torch.cat([p.grad.flatten() for p in model.parameters()]), maps

    fp32, fp32_grads, _ = train_step(False, False)
    _, aten_bf16_grads, _ = train_step(False, True)
    fused, fused_bf16_grads, maps = train_step(True, True)
    assert maps["output"].dtype == torch.bfloat16
    fused_layers = [name for name, module in fused.named_modules() if isinstance(module, ConvBnAct) and len(module) == 3]
    assert len(fused_layers) > 10
    fp32_buffers, fused_buffers = dict(fp32.named_buffers()), dict(fused.named_buffers())
    for layer in fused_layers:  # the kernel's statistics (the other BatchNorms are ATen's, in bf16)
        for buffer in ("running_mean", "running_var"):
            name = f"{layer}.1.{buffer}"
            assert fused_buffers[name].dtype == torch.float32, name
            torch.testing.assert_close(fused_buffers[name], fp32_buffers[name], rtol=0.02, atol=0.01, msg=name)
    cosine = torch.nn.functional.cosine_similarity
    aten, kernel = cosine(aten_bf16_grads, fp32_grads, dim=0).item(), cosine(fused_bf16_grads, fp32_grads, dim=0).item()
    assert kernel > aten - 0.02, f"gradient cosine to fp32: fused bf16 {kernel:.4f}, ATen bf16 {aten:.4f}"


def test_one_shared_prelu_slope_gets_one_gradient(one_torch_thread):
    """nn.PReLU() with a single slope for every channel: the hand-written backward sums its gradient to one value."""
    torch.manual_seed(0)
    bn, prelu = torch.nn.BatchNorm2d(6).train(), torch.nn.PReLU()
    fused_bn, fused_prelu = copy.deepcopy(bn), copy.deepcopy(prelu)
    x = torch.randn(4, 6, 5, 5)
    prelu(bn(x)).sum().backward()
    with fused_kernels(True):
        batchnorm_prelu(x, fused_bn, fused_prelu).sum().backward()
        assert fused_kernels_active()
    assert fused_prelu.weight.grad.shape == (1,)
    torch.testing.assert_close(fused_prelu.weight.grad, prelu.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused_bn.weight.grad, bn.weight.grad, rtol=1e-4, atol=1e-5)
