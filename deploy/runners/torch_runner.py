"""The PyTorch reference runner: every backend is compared against what this one computes."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deploy.runners.base import Runner
from pipeline.preprocess import PreprocessSpec


class TorchRunner(Runner):
    backend = "pytorch"

    def __init__(self, model: nn.Module, spec: PreprocessSpec, precision: str = "fp32", threads: int | None = None):
        super().__init__(spec, precision, threads or torch.get_num_threads())
        self.model = model.eval()
        # The model's own device: a curve point taken while training on a GPU embeds there.
        self.device = next(model.parameters(), torch.empty(0)).device

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
        finally:
            torch.set_num_threads(previous)
