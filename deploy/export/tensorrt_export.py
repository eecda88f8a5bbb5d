"""TensorRT engines from the ONNX export, built with the TensorRT Python API (FP32, FP16, INT8).

TensorRT is imported only inside the functions that need it: it exists where NVIDIA ships it (JetPack, NVIDIA's
containers), not on PyPI in a form that installs here, and asking whether it can run must not fail on a machine
without it. What does not need TensorRT (the probe, the optimisation profile, the calibration batches) is plain
Python and tested everywhere.

The engine has a dynamic batch profile (min 1, opt, max), a timing cache saved beside it (so a rebuild on the
same GPU skips kernel timing), and for INT8 an entropy calibrator (IInt8EntropyCalibrator2) fed from the shared
calibration set, whose cache is saved beside the engine too.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deploy.export.calibration import calibration_batches
from deploy.preprocess import PreprocessSpec
from pipeline.artifacts import atomic_path, write_bytes_atomic

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")
NO_CUDA_DEVICE = "no CUDA device"
NOT_INSTALLED = "TensorRT not installed"


def tensorrt_available() -> tuple[bool, str]:
    """(True, "") where an engine can be built and run; otherwise (False, every missing prerequisite)."""
    missing = []
    if cuda_device_count() == 0:
        missing.append(NO_CUDA_DEVICE)
    if importlib.util.find_spec("tensorrt") is None:
        missing.append(NOT_INSTALLED)
    return (not missing), "; ".join(missing)


def cuda_device_count() -> int:
    """CUDA devices the driver reports (0 without a driver), asked of libcuda itself so no framework is needed."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@dataclass(frozen=True)
class ProfileShapes:
    """The optimisation profile of the input: TensorRT tunes kernels for `opt` and accepts min..max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


def profile_shapes(spec: PreprocessSpec, max_batch: int, opt_batch: int = 1) -> ProfileShapes:
    """Batch 1..max_batch, tuned for opt_batch, at the spec's NCHW size."""
    if spec.layout != "NCHW":
        raise ValueError(f"TensorRT export needs an NCHW spec, got {spec.layout}")
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"TensorRT profile needs 1 <= opt_batch <= max_batch, got opt {opt_batch}, max {max_batch}")
    def shape(batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, spec.height, spec.width)

    return ProfileShapes(shape(1), shape(opt_batch), shape(max_batch))


def engine_file_names(name: str, precision: str) -> dict[str, str]:
    """The engine, its ONNX source, and the caches saved beside it."""
    stem = f"{name}_{precision}"
    return {"engine": f"{stem}.engine", "onnx": f"{stem}.trt.onnx", "timing_cache": f"{stem}.engine.timing",
            "calibration_cache": f"{stem}.engine.calib"}


def export_tensorrt(
    model: nn.Module,
    spec: PreprocessSpec,
    out_dir: Path,
    precision: str,
    calibration_images: np.ndarray | None = None,
    opset: int = 17,
    max_batch: int = 64,
    opt_batch: int = 1,
    workspace_mib: int = 1024,
    calibration_batch: int = 8,
    name: str = "student",
) -> dict:
    """ONNX export, then an engine built for `precision`; raises with the reason where TensorRT cannot build."""
    from deploy.export.onnx_export import export_onnx

    if precision not in TENSORRT_PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {TENSORRT_PRECISIONS}, got {precision!r}")
    available, why_not = tensorrt_available()
    if not available:
        raise RuntimeError(f"cannot build a TensorRT engine here: {why_not}")
    if precision == "int8" and calibration_images is None:
        raise ValueError("a TensorRT int8 engine needs calibration images")
    out_dir = Path(out_dir)
    files = engine_file_names(name, precision)
    started = time.perf_counter()
    export_onnx(model, spec, out_dir / files["onnx"], opset=opset)
    shapes = profile_shapes(spec, max_batch, opt_batch)
    batches = calibration_batches(calibration_images, spec, calibration_batch) if precision == "int8" else None
    facts = build_engine(out_dir / files["onnx"], out_dir / files["engine"], spec.input_name, shapes, precision,
                         out_dir / files["timing_cache"], batches, out_dir / files["calibration_cache"], workspace_mib)
    written = [files[key] for key in ("engine", "onnx", "timing_cache", "calibration_cache") if (out_dir / files[key]).is_file()]
    return {"files": written, "profile": {k: list(v) for k, v in vars(shapes).items()}, **facts,
            "export_seconds": round(time.perf_counter() - started, 3)}


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    input_name: str,
    shapes: ProfileShapes,
    precision: str,
    timing_cache_path: Path,
    calibration: list[np.ndarray] | None = None,
    calibration_cache_path: Path | None = None,
    workspace_mib: int = 1024,
) -> dict:
    """Parse the ONNX file, configure the builder, serialise the engine and the timing cache (both atomically)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    cache = config.create_timing_cache(timing_cache_path.read_bytes() if timing_cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    calibrator = None
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default on Ampere+: "fp32" would compute in 10-bit mantissas
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers TensorRT will not run in int8 fall back to fp16, not fp32
        calibrator = make_entropy_calibrator(calibration or [], calibration_cache_path)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} ({precision}); see its log above")
    build_seconds = time.perf_counter() - started
    write_bytes_atomic(engine_path, bytes(serialized))
    write_bytes_atomic(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    log.info("TensorRT %s engine %s (%d B) built in %.1f s, profile %s", precision, engine_path, engine_path.stat().st_size,
             build_seconds, shapes)
    return {"engine_bytes": engine_path.stat().st_size, "build_seconds": round(build_seconds, 3),
            "tensorrt_version": trt.__version__}


def make_entropy_calibrator(batches: list[np.ndarray], cache_path: Path | None):
    """An IInt8EntropyCalibrator2 that feeds `batches` through one CUDA buffer and caches its table on disk."""
    import tensorrt as trt
    import torch

    if not batches:
        raise ValueError("the TensorRT int8 calibrator needs at least one calibration batch")

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._device = torch.empty(batches[0].shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._device.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize()
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            if cache_path is not None:
                with atomic_path(cache_path) as temp:
                    temp.write_bytes(bytes(cache))

    return EntropyCalibrator()
