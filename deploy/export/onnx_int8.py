"""ONNX INT8: static quantisation (QDQ format) of the fp32 export with ONNX Runtime's quantiser.

Static, not dynamic: activations get calibrated scales, so convolutions run as int8 kernels; QDQ, not QOperator:
the model stays a standard ONNX graph (QuantizeLinear/DequantizeLinear around float ops) that ONNX Runtime, and
TensorRT's explicit-quantisation path, both read. Weights are per output channel and symmetric int8.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from deploy.export.calibration import calibration_batches, ort_calibration_reader
from deploy.export.onnx_export import export_onnx
from pipeline.artifacts import atomic_path
from pipeline.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

# The project's names for activation calibration (shared with ncnn) -> ONNX Runtime's calibrators.
CALIBRATION_METHODS = {"percentile": "Percentile", "kl": "Entropy", "max": "MinMax"}


def export_onnx_int8(
    model: nn.Module,
    spec: PreprocessSpec,
    out_path: Path,
    calibration_images: np.ndarray,
    opset: int = 17,
    method: str = "percentile",
    batch_size: int = 8,
    depthwise_fp32: bool = False,
) -> dict:
    """Export fp32 ONNX, then quantise it statically to `out_path`, calibrated on `calibration_images`.

    `depthwise_fp32` leaves depthwise convolutions (group > 1) in float: one activation scale per tensor is
    what costs a depthwise layer most, and they are a small share of the network's arithmetic.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"ONNX int8 calibration method must be one of {tuple(CALIBRATION_METHODS)}, got {method!r}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnx-int8-") as work:
        fp32_path = Path(work) / "fp32.onnx"
        fp32 = export_onnx(model, spec, fp32_path, opset=opset)
        batches = calibration_batches(calibration_images, spec, min(batch_size, len(calibration_images)))
        excluded = depthwise_conv_nodes(onnx.load(str(fp32_path))) if depthwise_fp32 else []
        with atomic_path(out_path) as temp:
            quantise_onnx_static(fp32_path, temp, spec.input_name, batches, method, excluded)
    graph = onnx.load(str(out_path))
    onnx.checker.check_model(graph)
    op_counts: dict[str, int] = {}
    for node in graph.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    wall = time.perf_counter() - started
    log.info("ONNX int8 (QDQ, %s calibration on %d images): %s, %d QuantizeLinear nodes, %.1f s", method,
             sum(len(b) for b in batches), out_path, op_counts.get("QuantizeLinear", 0), wall)
    return {
        "path": Path(out_path).name, "opset": opset, "nodes": len(graph.graph.node), "fp32_nodes": fp32["nodes"],
        "quantize_linear_nodes": op_counts.get("QuantizeLinear", 0), "float_nodes": excluded,
        "calibration": {"images": sum(len(b) for b in batches), "method": method, "format": "QDQ",
                        "activations": "int8", "weights": "int8 per-channel symmetric"},
        "export_time_s": round(wall, 3),
    }


def depthwise_conv_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of Conv nodes with group > 1."""
    return [node.name for node in model.graph.node if node.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in node.attribute)]


def quantise_onnx_static(fp32_path: Path, out_path: Path, input_name: str, batches: list[np.ndarray], method: str,
                         excluded_nodes: list[str] = ()) -> None:
    """ONNX Runtime's quantize_static fed from `batches` (preprocessed float32 arrays); `excluded_nodes` stay float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate_method = getattr(CalibrationMethod, CALIBRATION_METHODS[method])
    quantize_static(
        str(fp32_path), str(out_path), ort_calibration_reader(input_name, batches), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate_method,
        nodes_to_exclude=list(excluded_nodes),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
