"""TensorRT engines from the ONNX export, built with the TensorRT Python API (FP32, FP16, INT8).

TensorRT is imported only inside the functions that need it: it exists where NVIDIA ships it (JetPack, NVIDIA's
containers), not on PyPI in a form that installs here, and asking whether it can run must not fail on a machine
without it. What does not need TensorRT (the probe, the build plan, the profiles, the ONNX sources) is plain Python
and tested everywhere.

How each TensorRT version builds each precision is one pure function, `tensorrt_build_plan` (TensorRT 11 removed
the precision builder flags and implicit INT8 calibration; 10.12 deprecated weak typing, 10.1 the calibrators):

- fp32: the fp32 ONNX, strongly typed from TensorRT 10 on, TF32 cleared (on by default on Ampere and later, where
  "fp32" would otherwise multiply with 10-bit mantissas).
- fp16: before 10.12 the fp32 ONNX with the FP16 builder flag (weak typing, not yet deprecated there: TensorRT
  keeps a layer in fp32 where fp16 is unsupported or slower); from 10.12 on, strongly typed, from an fp16 copy of
  the ONNX (fp16 weights and arithmetic, fp32 input and output, so the runner and trtexec feed float32 as before).
- int8: explicit quantisation from a Q/DQ ONNX, quantised with ONNX Runtime's static quantiser as
  deploy/export/onnx_int8.py does, but the way TensorRT reads Q/DQ: symmetric activations (TensorRT's zero points
  must be 0) and float biases (no int32 DequantizeLinear). Strongly typed from TensorRT 10 on.
- implicit INT8 calibration (IInt8EntropyCalibrator2) is kept only where it is the only way: an int8 engine asked
  from an ONNX without Q/DQ nodes, with calibration batches, on TensorRT < 11. It calibrates on its own
  optimisation profile, min = opt = max = the calibrator's batch (TensorRT calibrates at the profile's opt shape).

The engine has a dynamic batch profile (min 1, opt, max) and a timing cache saved beside it (so a rebuild on the
same GPU skips kernel timing; a cache from another GPU or TensorRT is refused and a fresh one started). Engines
only load on the GPU and TensorRT that built them: `python -m deploy.export.tensorrt_export EXPORT_DIR --out DIR`
(docker/device-benchmark.sh) builds a run's engines on the device from its ONNX export before they are timed there.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.export.calibration import calibration_batches
from pipeline.artifacts import atomic_path, write_bytes_atomic, write_json_atomic
from pipeline.optional_modules import installed
from pipeline.preprocess import PreprocessSpec
from pipeline.run_layout import EXPORTS_FILE, MODEL_MANIFEST, ExportRecord, checked_export_records, read_export_records

if TYPE_CHECKING:
    import onnx
    from torch import nn

log = logging.getLogger(__name__)

TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")
NO_CUDA_DEVICE = "no CUDA device"
NOT_INSTALLED = "TensorRT not installed"
TORCH_MISSING = "the TensorRT runner needs torch (Jetson image: build it with TORCH_INDEX_URL); trtexec times engines without it"
OLDEST_TENSORRT = (8, 5)  # the runner's name-based I/O API (set_input_shape, execute_async_v3)
STRONG_TYPING_FROM = (10, 0)  # NetworkDefinitionCreationFlag.STRONGLY_TYPED
WEAK_TYPING_DEPRECATED_IN = (10, 12)  # the FP16/INT8 builder flags: deprecated in 10.12, removed in 11
STRONG_TYPING_ONLY_FROM = (11, 0)  # every network strongly typed; STRONGLY_TYPED ignored; no calibrators


def tensorrt_available() -> tuple[bool, str]:
    """(True, "") where an engine can be built and run; otherwise (False, every missing prerequisite)."""
    missing = []
    if cuda_device_count() == 0:
        missing.append(NO_CUDA_DEVICE)
    if not installed("tensorrt"):
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


def tensorrt_version_tuple(version: str) -> tuple[int, int]:
    """(major, minor) of "10.3.0.26", "11.0" and the like."""
    match = re.match(r"\s*(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class BuildPlan:
    """How one TensorRT version builds one precision: from which ONNX, typed how, with which builder flags."""

    source: str  # the ONNX the network is parsed from: "fp32", "fp16" (fp16 weights, fp32 I/O) or "int8-qdq"
    strongly_typed: bool  # tensor types come from the ONNX; no precision builder flags
    network_flags: tuple[str, ...] = ()  # NetworkDefinitionCreationFlag members
    builder_flags: tuple[str, ...] = ()  # BuilderFlag members set
    cleared_flags: tuple[str, ...] = ()  # BuilderFlag members cleared
    calibrator: bool = False  # implicit INT8 calibration

    def describe(self) -> dict:
        return {"source_onnx": self.source, "typing": "strong" if self.strongly_typed else "weak",
                "network_flags": list(self.network_flags), "builder_flags": list(self.builder_flags),
                "cleared_flags": list(self.cleared_flags), "int8": "implicit calibration" if self.calibrator else None,
                "tf32_allowed": "TF32" not in self.cleared_flags}


def tensorrt_build_plan(version: str, precision: str, qdq_onnx: bool = True) -> BuildPlan:
    """The plan for `precision` on TensorRT `version` (module docstring); `qdq_onnx=False`: int8 without a Q/DQ ONNX."""
    release = tensorrt_version_tuple(version)
    if release < OLDEST_TENSORRT:
        raise ValueError(f"TensorRT {version} is older than {'.'.join(map(str, OLDEST_TENSORRT))}, the oldest this project runs")
    if precision not in TENSORRT_PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {TENSORRT_PRECISIONS}, got {precision!r}")
    legacy_network = ("EXPLICIT_BATCH",) if release < STRONG_TYPING_FROM else ()
    if precision == "int8" and not qdq_onnx:
        if release >= STRONG_TYPING_ONLY_FROM:
            raise ValueError(f"TensorRT {version} has no implicit INT8 calibration: an int8 engine needs a Q/DQ ONNX")
        return BuildPlan("fp32", False, legacy_network, ("INT8", "FP16"), calibrator=True)
    weak_fp16 = precision == "fp16" and release < WEAK_TYPING_DEPRECATED_IN
    strongly_typed = release >= STRONG_TYPING_FROM and not weak_fp16
    cleared = ("TF32",) if precision == "fp32" else ()
    if not strongly_typed:  # 8.x/9.x, or fp16 before 10.12: weak typing, precision from builder flags
        flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]  # FP16: fallback for non-int8 layers
        return BuildPlan("int8-qdq" if precision == "int8" else "fp32", False, legacy_network, flags, cleared)
    network = ("STRONGLY_TYPED",) if release < STRONG_TYPING_ONLY_FROM else ()  # 11: always on, the flag ignored
    return BuildPlan({"fp32": "fp32", "fp16": "fp16", "int8": "int8-qdq"}[precision], True, network, (), cleared)


def installed_tensorrt_version() -> str:
    import tensorrt as trt

    return str(trt.__version__)


@dataclass(frozen=True)
class ProfileShapes:
    """The optimisation profile of the input: TensorRT tunes kernels for `opt` and accepts min..max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


def _input_shape(spec: PreprocessSpec, batch: int) -> tuple[int, int, int, int]:
    if spec.layout != "NCHW":
        raise ValueError(f"TensorRT export needs an NCHW spec, got {spec.layout}")
    return (batch, 3, spec.height, spec.width)


def profile_shapes(spec: PreprocessSpec, max_batch: int, opt_batch: int = 1) -> ProfileShapes:
    """Batch 1..max_batch, tuned for opt_batch, at the spec's NCHW size."""
    _input_shape(spec, 1)
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"TensorRT profile needs 1 <= opt_batch <= max_batch, got opt {opt_batch}, max {max_batch}")
    return ProfileShapes(_input_shape(spec, 1), _input_shape(spec, opt_batch), _input_shape(spec, max_batch))


def calibration_profile_shapes(calibration: list[np.ndarray]) -> ProfileShapes:
    """min = opt = max = the calibrator's batch shape. TensorRT calibrates at the calibration profile's kOPT: with the
    main profile (opt batch 1) it would read 1 image of each 8 the calibrator hands it, and say nothing."""
    shapes = {tuple(int(d) for d in batch.shape) for batch in calibration}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"the int8 calibrator needs NCHW batches of one shape, got {sorted(shapes)}")
    shape = next(iter(shapes))
    return ProfileShapes(shape, shape, shape)


def engine_file_names(name: str, precision: str) -> dict[str, str]:
    """The engine, its ONNX source, and the caches saved beside it."""
    stem = f"{name}_{precision}"
    return {"engine": f"{stem}.engine", "onnx": f"{stem}.trt.onnx", "timing_cache": f"{stem}.engine.timing",
            "calibration_cache": f"{stem}.engine.calib"}


# --- The ONNX sources: fp16 copy, TensorRT's Q/DQ int8, and the checks that tell them apart ---------------------


def write_fp16_onnx(fp32_path: Path, out_path: Path) -> Path:
    """fp16 weights and arithmetic, fp32 input and output (a Cast at each end): fp16 for a strongly typed network.

    ONNX Runtime's float16 converter (onnxruntime.transformers.float16) appends the boundary Casts after the other
    nodes; TensorRT's parser, like the ONNX checker, wants them in topological order, so they are sorted first."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    sort_nodes_topologically(model.graph)
    onnx.checker.check_model(model)
    with atomic_path(out_path) as temp:
        onnx.save(model, str(temp))
    return Path(out_path)


def sort_nodes_topologically(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` so each node follows the producers of its inputs (stable for an already sorted graph)."""
    known = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in known for name in node.input)]
        if not ready:
            raise ValueError(f"ONNX graph has a cycle or a missing input near node {pending[0].name or pending[0].op_type}")
        for node in ready:
            known.update(node.output)
        ordered += ready
        pending = [node for node in pending if node not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def tensorrt_qdq_options() -> dict[str, Any]:
    """ONNX Runtime quantiser options for a Q/DQ graph TensorRT accepts: zero points of 0, no int32 bias DQ."""
    return {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def write_tensorrt_qdq_onnx(fp32_path: Path, out_path: Path, input_name: str, batches: list[np.ndarray]) -> Path:
    """Static int8 Q/DQ of `fp32_path`, per-channel weights, entropy-calibrated on `batches` (every image of each)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from deploy.export.calibration import ort_calibration_reader

    with atomic_path(out_path) as temp:
        quantize_static(str(fp32_path), str(temp), ort_calibration_reader(input_name, batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Entropy, extra_options=tensorrt_qdq_options())
        problems = tensorrt_qdq_problems(onnx.load(str(temp)))
        if problems:
            raise RuntimeError(f"the Q/DQ ONNX for TensorRT is not one TensorRT reads: {'; '.join(problems)}")
    return Path(out_path)


def tensorrt_qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT would refuse this Q/DQ graph (empty: it would not): no Q/DQ at all, non-zero or non-int8 zero
    points (TensorRT quantises symmetrically, in int8), DequantizeLinear of constants other than int8 (int32 biases)."""
    from onnx import numpy_helper

    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    nodes = [node for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not any(node.op_type == "QuantizeLinear" for node in nodes):
        return ["no QuantizeLinear nodes (not a Q/DQ model)"]
    zero_points = [constants.get(node.input[2]) for node in nodes if len(node.input) > 2 and node.input[2]]
    quantised_constants = [constants[node.input[0]] for node in nodes if node.op_type == "DequantizeLinear" and node.input[0] in constants]
    counts = {
        "zero points not constant": sum(point is None for point in zero_points),
        "zero points not 0 (asymmetric quantisation)": sum(point is not None and bool(np.any(point != 0)) for point in zero_points),
        "zero points not int8": sum(point is not None and point.dtype != np.int8 for point in zero_points),
        "DequantizeLinear of constants that are not int8 (e.g. int32 biases)": sum(c.dtype != np.int8 for c in quantised_constants),
    }
    return [f"{count} {what}" for what, count in counts.items() if count]


def onnx_has_qdq(path: Path) -> bool:
    import onnx

    return any(node.op_type == "QuantizeLinear" for node in onnx.load(str(path)).graph.node)


def onnx_is_fp16(path: Path) -> bool:
    """Whether the graph's weights are fp16 (what `write_fp16_onnx` makes)."""
    import onnx

    return any(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in onnx.load(str(path)).graph.initializer)


def write_tensorrt_source(model: nn.Module, spec: PreprocessSpec, out_path: Path, plan: BuildPlan, opset: int,
                          calibration: list[np.ndarray] | None) -> Path:
    """The ONNX `plan` builds from, at `out_path`: the fp32 export, its fp16 copy, or its TensorRT Q/DQ int8."""
    from deploy.export.onnx_export import export_onnx

    if plan.source == "fp32":
        export_onnx(model, spec, out_path, opset=opset)
        return out_path
    with tempfile.TemporaryDirectory(prefix="trt-onnx-") as work:
        fp32_path = Path(work) / "fp32.onnx"
        export_onnx(model, spec, fp32_path, opset=opset)
        if plan.source == "fp16":
            return write_fp16_onnx(fp32_path, out_path)
        return write_tensorrt_qdq_onnx(fp32_path, out_path, spec.input_name, calibration or [])


# --- Building -------------------------------------------------------------------------------------------------


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
    """The ONNX this TensorRT builds `precision` from, then the engine; raises with the reason where it cannot build."""
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
    plan = tensorrt_build_plan(installed_tensorrt_version(), precision)
    batches = calibration_batches(calibration_images, spec, calibration_batch) if precision == "int8" else None
    write_tensorrt_source(model, spec, out_dir / files["onnx"], plan, opset, batches)
    shapes = profile_shapes(spec, max_batch, opt_batch)
    facts = build_engine(out_dir / files["onnx"], out_dir / files["engine"], spec.input_name, shapes, precision,
                         out_dir / files["timing_cache"], workspace_mib=workspace_mib)
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
    """Parse the ONNX (or the source the plan needs, derived from it), configure the builder per `tensorrt_build_plan`,
    serialise the engine and the timing cache (both atomically)."""
    import tensorrt as trt

    plan = tensorrt_build_plan(trt.__version__, precision, qdq_onnx=precision != "int8" or onnx_has_qdq(onnx_path))
    onnx_path = _source_for(plan, Path(onnx_path), Path(engine_path), calibration)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    attach_timing_cache(config, timing_cache_path)
    _add_profile(builder, config, input_name, shapes)
    _apply_flags(trt, config, plan)
    calibrator = _attach_calibrator(builder, config, input_name, calibration, calibration_cache_path) if plan.calibrator else None
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} ({precision}); see its log above")
    build_seconds = time.perf_counter() - started
    del calibrator  # held until here: the Python calibrator must outlive the build that calls back into it
    write_bytes_atomic(engine_path, bytes(serialized))
    save_timing_cache(config, timing_cache_path)
    log.info("TensorRT %s %s engine %s (%d B) built in %.1f s from %s, profile %s", trt.__version__, precision, engine_path,
             engine_path.stat().st_size, build_seconds, onnx_path.name, shapes)
    return {"engine_bytes": engine_path.stat().st_size, "build_seconds": round(build_seconds, 3),
            "tensorrt_version": trt.__version__, "build_plan": plan.describe(), "source_onnx": onnx_path.name}


def _source_for(plan: BuildPlan, onnx_path: Path, engine_path: Path, calibration: list[np.ndarray] | None) -> Path:
    """`onnx_path`, or the fp16 copy of it the plan needs (written beside the engine); implicit int8 needs batches."""
    if plan.calibrator and not calibration:
        raise ValueError(f"{onnx_path} has no Q/DQ nodes: an int8 engine needs a Q/DQ ONNX (or calibration batches before TensorRT 11)")
    if plan.source == "int8-qdq":
        import onnx

        problems = tensorrt_qdq_problems(onnx.load(str(onnx_path)))
        if problems:
            raise ValueError(f"{onnx_path}: TensorRT cannot read this Q/DQ graph: {'; '.join(problems)}")
    if plan.source != "fp16" or onnx_is_fp16(onnx_path):
        return onnx_path
    return write_fp16_onnx(onnx_path, engine_path.with_name(engine_path.name.removesuffix(".engine") + ".trt.onnx"))


def _network_flags(trt: Any, plan: BuildPlan) -> int:
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return flags


def _add_profile(builder: Any, config: Any, input_name: str, shapes: ProfileShapes) -> Any:
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    return profile


def _apply_flags(trt: Any, config: Any, plan: BuildPlan) -> None:
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.cleared_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))


def attach_timing_cache(config: Any, path: Path) -> Any:
    """The cache saved at `path` where this GPU and TensorRT accept it, else a fresh one.

    `set_timing_cache(..., ignore_mismatch=False)` returns False for a cache made on another GPU or TensorRT (a
    device copying a host's run folder): then get_timing_cache() is None and saving it would fail after the build."""
    saved = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(saved)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    log.warning("TensorRT timing cache %s was made on another GPU or TensorRT version: it is not used, a fresh one is", path)
    cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError("TensorRT refused a fresh timing cache")
    return cache


def save_timing_cache(config: Any, path: Path) -> bool:
    cache = config.get_timing_cache()
    if cache is None:
        log.warning("TensorRT has no timing cache to save at %s", path)
        return False
    write_bytes_atomic(path, bytes(cache.serialize()))
    return True


def _attach_calibrator(builder: Any, config: Any, input_name: str, calibration: list[np.ndarray], cache_path: Path | None) -> Any:
    """Implicit INT8: the entropy calibrator, calibrating on a profile of its own batch size (see calibration_profile_shapes)."""
    shapes = calibration_profile_shapes(calibration)
    calibrator = make_entropy_calibrator(calibration, cache_path)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes.min, shapes.opt, shapes.max)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)
    return calibrator


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


# --- Engines built on the device, from a run's export folder --------------------------------------------------


def onnx_source_here(export_dir: Path, records: list[ExportRecord], precision: str) -> tuple[Path | None, str]:
    """(the ONNX in `export_dir` an engine of `precision` is built from here, "") or (None, why there is none).

    fp32/fp16: the run's onnx:fp32 export (build_engine derives the fp16 copy where the plan needs it). int8: a Q/DQ
    ONNX TensorRT reads: the tensorrt:int8 export's own source, or the run's onnx:int8 export where it is symmetric."""
    def exported(fmt: str, prec: str) -> list[Path]:
        return [export_dir / r["files"][0] for r in records
                if r["format"] == fmt and r["precision"] == prec and r["status"] == "exported" and r.get("files")]

    if precision in ("fp32", "fp16"):
        candidates = exported("onnx", "fp32") + [export_dir / engine_file_names("student", "fp32")["onnx"]]
        found = next((path for path in candidates if path.is_file()), None)
        return (found, "") if found else (None, "no fp32 ONNX export in this run (export onnx:fp32): engines are built here from it")
    import onnx

    problems = []
    for path in [export_dir / engine_file_names("student", "int8")["onnx"], *exported("onnx", "int8")]:
        if path.is_file():
            found = tensorrt_qdq_problems(onnx.load(str(path)))
            if not found:
                return path, ""
            problems.append(f"{path.name}: {', '.join(found)}")
    return None, ("no Q/DQ ONNX TensorRT reads in this run (" + ("; ".join(problems) or "no int8 ONNX export") +
                  "): export tensorrt:int8 where TensorRT runs (it writes student_int8.trt.onnx), or run the pipeline here")


def engine_record_here(export_dir: Path, out_dir: Path, record: ExportRecord, records: list[ExportRecord], spec: PreprocessSpec,
                       max_batch: int = 64) -> dict:
    """`record` (a tensorrt export) with its engine built on this machine into `out_dir`, or skipped/failed and why.

    Nothing is built where the project's TensorRT runner cannot run it (it needs torch for CUDA memory)."""
    available, why_not = tensorrt_available()
    if not available:
        return {**record, "status": "skipped", "files": [], "bytes": 0, "reason": why_not}
    if not installed("torch"):
        return {**record, "status": "skipped", "files": [], "bytes": 0, "reason": TORCH_MISSING}
    source, why_not = onnx_source_here(export_dir, records, record["precision"])
    if source is None:
        return {**record, "status": "skipped", "files": [], "bytes": 0, "reason": why_not}
    files = engine_file_names("student", record["precision"])
    try:
        facts = build_engine(source, out_dir / files["engine"], spec.input_name, profile_shapes(spec, max_batch),
                             record["precision"], out_dir / files["timing_cache"])
    except Exception as exc:  # noqa: BLE001 - one precision that cannot build must not hide the others' rows
        log.error("TensorRT %s engine from %s failed here: %s", record["precision"], source, exc)
        return {**record, "status": "failed", "files": [], "bytes": 0, "error": f"built here: {exc.__class__.__name__}: {exc}"}
    return {**record, "status": "exported", "files": [files["engine"]], "bytes": facts["engine_bytes"], "built_here": True, **facts}


def engines_here(export_dir: Path, out_dir: Path, max_batch: int = 64) -> list[dict]:
    """`out_dir` as an export folder for this machine: `export_dir`'s files linked, except TensorRT's, whose engines
    are built here (an engine only loads on the GPU and TensorRT that built it); its exports.json says which."""
    export_dir, out_dir = Path(export_dir).resolve(), Path(out_dir)
    records = read_export_records(export_dir)
    spec = PreprocessSpec.load(export_dir / MODEL_MANIFEST)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensorrt_names = {name for r in records if r["format"] == "tensorrt" for name in r.get("files", [])}
    tensorrt_names |= {name for p in TENSORRT_PRECISIONS for name in engine_file_names("student", p).values()}
    for entry in export_dir.iterdir():
        if entry.name != EXPORTS_FILE and entry.name not in tensorrt_names:
            _link(entry, out_dir / entry.name)
    here = [engine_record_here(export_dir, out_dir, r, records, spec, max_batch) if r["format"] == "tensorrt" else r for r in records]
    write_json_atomic(out_dir / EXPORTS_FILE, checked_export_records(here, out_dir / EXPORTS_FILE))
    return here


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} exists and is not a link to {target}")
    link.symlink_to(target, target_is_directory=target.is_dir())


def main(argv: list[str] | None = None) -> int:
    """`python -m deploy.export.tensorrt_export EXPORT_DIR --out DIR`: the run's TensorRT engines built on this machine."""
    parser = argparse.ArgumentParser(prog="python -m deploy.export.tensorrt_export", description=main.__doc__)
    parser.add_argument("export_dir", type=Path, help=f"a run's export/ folder ({EXPORTS_FILE}, {MODEL_MANIFEST}, the ONNX export)")
    parser.add_argument("--out", type=Path, required=True, help="folder to time instead (links to EXPORT_DIR, engines built here)")
    parser.add_argument("--max-batch", type=int, default=64, help="the engines' largest batch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for record in engines_here(args.export_dir, args.out, args.max_batch):
        if record["format"] == "tensorrt":
            said = record.get("reason") or record.get("error") or ", ".join(record["files"])
            print(f"tensorrt/{record['precision']}: {record['status']} {said}")
    print(f"wrote {args.out / EXPORTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
