"""The step profile accounts for a training step: its parts add up to the step, and the kernels it names ran."""

from __future__ import annotations

from functools import partial

import pytest

from benchmarks.step_profile import profile_markdown, profile_training_steps
from pipeline.config import MarginConfig, OptimConfig
from pipeline.models.registry import create_model
from tests.test_trainer import SPEC, tiny_faces


@pytest.mark.parametrize("fused", [True, False])
def test_parts_add_up_to_the_step_and_name_the_kernels(one_torch_thread, fused):
    optim = OptimConfig(batch_size=8, lr=0.01, fused_kernels=fused, mixed_precision=False)
    result = profile_training_steps(partial(create_model, "mobilefacenet", width=0.25, input_size=32, embedding_dim=16),
                                    tiny_faces(), SPEC, MarginConfig(), optim, seed=0, steps=2)
    parts = result["parts_ms"]
    assert result["step_ms"] > 0
    assert all(parts[part] > 0 for part in ("data", "forward", "backward", "optimizer")), parts
    assert sum(parts.values()) == pytest.approx(result["step_ms"], abs=0.5)  # the rest is the "outside" row
    assert parts["outside the parts (loop, progress, logging)"] >= -0.5
    kernels = result["kernels_ms"]
    assert kernels["convolution forward (oneDNN)"] > 0 and kernels["convolution backward (oneDNN)"] > 0
    assert (kernels["compiled BatchNorm+PReLU graphs"] > 0) == fused
    assert (kernels["ATen BatchNorm / PReLU"] > kernels["compiled BatchNorm+PReLU graphs"]) == (not fused)
    assert sum(kernels.values()) == pytest.approx(result["step_ms"], abs=0.5)
    assert "| backward |" in profile_markdown(result)
