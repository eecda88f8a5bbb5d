"""The one table of export formats that the exporter, the parity stage and the benchmark all read.

Adding a backend is adding a row here and its export/runner modules (Ultralytics' idea); whether a format
can run on this machine is asked of the row, and a "no" comes with its reason (mmdeploy's idea).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deploy.runners.base import Runner
from pipeline.config import ExportConfig
from pipeline.errors import ConfigError
from pipeline.export_catalog import FORMAT_SPECS
from pipeline.export_catalog import parse_format_entry as parse_catalog_entry
from pipeline.optional_modules import installed
from pipeline.preprocess import PreprocessSpec
from pipeline.run_layout import ExportRecord

if TYPE_CHECKING:  # only the exporters need torch: device images that just run exports have none
    from torch import nn


@dataclass
class ExportRequest:
    """Everything an exporter may need; calibration images serve the INT8 variants.

    `options` is the validated `export` section itself, so an exporter never holds a default of its own that could drift
    from the config's (a request built without one gets the config's defaults).
    """

    model: nn.Module
    spec: PreprocessSpec
    out_dir: Path
    precision: str
    opset: int = 17
    calibration_images: np.ndarray | None = None
    options: ExportConfig = field(default_factory=ExportConfig)


def _always() -> tuple[bool, str]:
    return True, ""


@dataclass(frozen=True)
class ExportFormat:
    """One row: how to export, how to run, and whether this machine can do either (a "no" says why)."""

    name: str
    suffix: str
    precisions: tuple[str, ...]
    export: Callable[[ExportRequest], dict]  # -> record with "files": [names in out_dir], plus facts
    make_runner: Callable[[Path, ExportRecord, PreprocessSpec, int], Runner]  # (export dir, record, spec, threads)
    runnable_here: Callable[[], tuple[bool, str]]
    exportable_here: Callable[[], tuple[bool, str]] = _always
    # (export dir, record, spec, one preprocessed image batch) -> every layer's output, for localising divergence
    layer_outputs: Callable[[Path, ExportRecord, PreprocessSpec, np.ndarray], list] | None = None

    def main_file(self, precision: str) -> str:
        """The file (or bundle) a deployer opens for this precision: what an error while exporting it names."""
        return f"student_{precision}{self.suffix}"


def _export_onnx(request: ExportRequest) -> dict:
    name = f"student_{request.precision}.onnx"
    if request.precision == "int8":
        from deploy.export.onnx_int8 import export_onnx_int8

        record = export_onnx_int8(request.model, request.spec, request.out_dir / name, _calibration(request), request.opset,
                                  request.options.int8_calibration, depthwise_fp32=request.options.int8_depthwise_fp32)
    else:
        from deploy.export.onnx_export import export_onnx

        record = export_onnx(request.model, request.spec, request.out_dir / name, opset=request.opset)
    return {"files": [name], **record}


def _calibration(request: ExportRequest) -> np.ndarray:
    if request.calibration_images is None or len(request.calibration_images) == 0:
        raise ValueError(f"an int8 export needs calibration images; none were given for {request.out_dir}")
    return request.calibration_images


def _onnx_runner(folder: Path, record: ExportRecord, spec: PreprocessSpec, threads: int) -> Runner:
    from deploy.runners.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(folder / record["files"][0], spec, record["precision"], threads)


def _onnx_layers(folder: Path, record: ExportRecord, spec: PreprocessSpec, batch: np.ndarray) -> list:
    from deploy.localize import onnx_layer_outputs

    return onnx_layer_outputs(folder / record["files"][0], batch)


def _export_ncnn(request: ExportRequest) -> dict:
    if request.precision == "int8":
        from deploy.export.ncnn_int8 import export_ncnn_int8

        record = export_ncnn_int8(request.model, request.spec, request.out_dir, _calibration(request),
                                  float_layers=tuple(request.options.ncnn_int8_float_layers),
                                  method=request.options.int8_calibration, depthwise_fp32=request.options.int8_depthwise_fp32)
    else:
        from deploy.export.ncnn_export import export_ncnn

        record = export_ncnn(request.model, request.spec, request.out_dir, request.precision,
                             fp16_arithmetic_off=tuple(request.options.ncnn_fp16_arithmetic_off))
    return {"files": [Path(record["param"]).name, Path(record["bin"]).name],
            **{k: v for k, v in record.items() if k not in {"param", "bin", "precision"}}}


def _ncnn_runner(folder: Path, record: ExportRecord, spec: PreprocessSpec, threads: int) -> Runner:
    from deploy.runners.ncnn_runner import NcnnRunner

    param, weights = record["files"]
    return NcnnRunner(folder / param, folder / weights, spec, record["precision"], threads,
                      record.get("input_blob"), record.get("output_blob"))


def _ncnn_layers(folder: Path, record: ExportRecord, spec: PreprocessSpec, batch: np.ndarray) -> list:
    from deploy.localize import ncnn_layer_outputs

    param, weights = record["files"]
    return ncnn_layer_outputs(folder / param, folder / weights, spec, record["precision"], batch)


def _export_coreml(request: ExportRequest) -> dict:
    """Convert, then validate what Linux can validate (names, shapes, preprocessing, precision) at once."""
    from deploy.export.coreml_export import export_coreml
    from deploy.runners.coreml_runner import validate_coreml_package

    name = f"student_{request.precision}.mlpackage"
    record = export_coreml(request.model, request.spec, request.out_dir / name, request.precision,
                           max_batch=request.options.max_batch)
    facts = validate_coreml_package(request.out_dir / name, request.spec, request.precision)
    return {"files": [name], "validated": {k: facts[k] for k in ("input_shape", "output_shape", "precision") if k in facts},
            **{k: v for k, v in record.items() if k not in {"path", "precision"}}}


def _coremltools_installed() -> tuple[bool, str]:
    """A missing converter is a skipped row that says so (as TensorRT's is), not a failed export that fails the run."""
    return (True, "") if installed("coremltools") else (False, "coremltools not installed (pip install '.[coreml]')")


def _coreml_runner(folder: Path, record: ExportRecord, spec: PreprocessSpec, threads: int) -> Runner:
    from deploy.runners.coreml_runner import CoreMLRunner

    return CoreMLRunner(folder / record["files"][0], spec, record["precision"], threads)


def _coreml_runnable() -> tuple[bool, str]:
    from deploy.runners.coreml_runner import coreml_prediction_available

    return coreml_prediction_available()


def _export_tensorrt(request: ExportRequest) -> dict:
    from deploy.export.tensorrt_export import export_tensorrt

    options = request.options
    return export_tensorrt(request.model, request.spec, request.out_dir, request.precision,
                           request.calibration_images if request.precision == "int8" else None, request.opset,
                           max_batch=options.max_batch, opt_batch=options.tensorrt_opt_batch,
                           workspace_mib=options.tensorrt_workspace_mib)


def _tensorrt_runner(folder: Path, record: ExportRecord, spec: PreprocessSpec, threads: int) -> Runner:
    from deploy.runners.tensorrt_runner import TensorRTRunner

    return TensorRTRunner(folder / record["files"][0], spec, record["precision"], threads)


def _tensorrt_available() -> tuple[bool, str]:
    from deploy.export.tensorrt_export import tensorrt_available

    return tensorrt_available()


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", ".onnx", FORMAT_SPECS["onnx"].precisions, _export_onnx, _onnx_runner, _always, layer_outputs=_onnx_layers),
    "ncnn": ExportFormat("ncnn", ".ncnn.param", FORMAT_SPECS["ncnn"].precisions, _export_ncnn, _ncnn_runner, _always,
                         layer_outputs=_ncnn_layers),
    "coreml": ExportFormat("coreml", ".mlpackage", FORMAT_SPECS["coreml"].precisions, _export_coreml, _coreml_runner, _coreml_runnable,
                           exportable_here=_coremltools_installed),
    "tensorrt": ExportFormat("tensorrt", ".engine", FORMAT_SPECS["tensorrt"].precisions, _export_tensorrt, _tensorrt_runner,
                             _tensorrt_available, exportable_here=_tensorrt_available),
}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ConfigError(f"unknown export format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def parse_format_entry(entry: str) -> tuple[ExportFormat, tuple[str, ...]]:
    """'onnx' -> every precision of the format; 'ncnn:fp32,fp16' -> those precisions only (the catalog's rules)."""
    try:
        name, precisions = parse_catalog_entry(entry)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return get_format(name), precisions
