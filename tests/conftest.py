"""Shared fixtures: the tiny profile run once per session, and small models with non-trivial BatchNorm statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config, profile_path

REPO_ROOT = Path(__file__).resolve().parent.parent


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics so export bugs in BN folding cannot hide behind identity BNs."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            module.weight.data.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def input_sensitive_student(width: float = 0.25, seed: int = 0) -> torch.nn.Module:
    """A random MobileFaceNet whose embedding depends on its input, as a trained one's does.

    With the default fan-out init a random network's signal shrinks layer by layer until the BatchNorm biases
    decide the output, so any conversion error upstream is invisible; fan-in init keeps unit variance.
    """
    from pipeline.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model("mobilefacenet", width=width)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
    return randomise_batchnorm(model, seed)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads per process made small steps 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the whole pipeline once on the tiny profile; tests read its artifacts."""
    from app.stages import STAGES
    from pipeline.stages.runner import StageRunner

    runs_dir = tmp_path_factory.mktemp("runs")
    config = load_config(profile_path("tiny"))
    runner = StageRunner(config, STAGES, runs_dir)
    outcomes = runner.run()
    return {"config": config, "runner": runner, "run_dir": runner.run_dir, "outcomes": outcomes, "runs_dir": runs_dir}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
