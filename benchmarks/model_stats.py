"""Parameters and FLOPs of the student, counted by running it, never typed in.

FLOPs come from torch.utils.flop_counter.FlopCounterMode on one forward pass at batch 1: it counts the
multiply-adds of convolutions and matrix products (2 FLOPs each) and ignores element-wise work (BatchNorm,
PReLU, additions), which is how papers and pnnx quote a network's cost. MACs = FLOPs / 2.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def model_complexity(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """{'parameters', 'flops', 'macs', 'input_shape', 'flops_by_op', 'counter'} of `model` at `input_shape`."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.zeros(input_shape))
    finally:
        model.train(was_training)
    flops = int(counter.get_total_flops())
    by_op = {str(op).removeprefix("aten."): int(count) for op, count in counter.get_flop_counts().get("Global", {}).items()}
    return {
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "flops": flops,
        "macs": flops // 2,
        "input_shape": list(input_shape),
        "flops_by_op": by_op,
        "counter": "torch.utils.flop_counter.FlopCounterMode (convolutions and matrix products; element-wise ops not counted)",
    }
