"""TensorRT runner: deserialises an engine and runs it on the GPU through torch's CUDA memory and stream.

torch supplies device buffers and the stream (it is a dependency already), so no pycuda/cuda-python is needed.
Uses the name-based I/O API of TensorRT 8.5+ (set_input_shape / set_tensor_address / execute_async_v3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploy.export.tensorrt_export import tensorrt_available
from deploy.runners.base import Runner
from pipeline.preprocess import PreprocessSpec


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, spec: PreprocessSpec, precision: str = "fp32", threads: int = 1) -> None:
        available, why_not = tensorrt_available()
        if not available:
            raise RuntimeError(f"cannot run TensorRT engine {engine_path}: {why_not}")
        import tensorrt as trt
        import torch

        super().__init__(spec, precision, threads)
        self._torch = torch
        self.engine_path = Path(engine_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {self.engine_path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"{self.engine_path}: expected one input and one output, found {inputs} -> {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        for name in (self.input_name, self.output_name):  # strongly typed engines take their I/O types from the ONNX
            if self.engine.get_tensor_dtype(name) != trt.float32:
                raise RuntimeError(f"{self.engine_path}: {name} is {self.engine.get_tensor_dtype(name)}; this runner feeds and reads "
                                   "float32 (fp16 and int8 engines keep fp32 input and output)")
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self._stream = torch.cuda.Stream()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        outputs = []
        for start in range(0, len(batch), self.max_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(batch[start : start + self.max_batch], np.float32)).cuda()
            self.context.set_input_shape(self.input_name, tuple(chunk.shape))
            result = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(self.input_name, int(chunk.data_ptr()))
            self.context.set_tensor_address(self.output_name, int(result.data_ptr()))
            torch.cuda.current_stream().synchronize()
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for {self.engine_path}")
            self._stream.synchronize()
            outputs.append(result.cpu().numpy().reshape(len(chunk), -1))
        return np.concatenate(outputs)

    def close(self) -> None:
        self.context = None
        self.engine = None
