"""ONNX Runtime runner (CPU execution provider here; CUDA where present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from deploy.model_check import check_declared_shapes
from deploy.runners.base import Runner
from pipeline.preprocess import PreprocessSpec


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, model_path: str | Path, spec: PreprocessSpec, precision: str = "fp32", threads: int = 1, providers: list[str] | None = None):
        super().__init__(spec, precision, threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        check_declared_shapes(model_path, self.session.get_inputs()[0].shape, self.session.get_outputs()[0].shape, spec)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def close(self) -> None:
        self.session = None
