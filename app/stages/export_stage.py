"""Stage `export`: the student into every configured format x precision, with the preprocessing manifest beside it.

One format failing to export is recorded (with its error) and does not stop the others (Ultralytics'
benchmark lesson); the parity stage reports it. A format this machine cannot build (TensorRT without a CUDA
device or TensorRT) is recorded as "skipped" with the reason, and nothing is run for it. A write the machine
refuses (full disk, quota, file-size limit, read-only or failing disk) is no format's failure: it fails the stage,
so the previous exports stay in place and nothing is cached, and the same command redoes the export once there
is space.

INT8 variants are kept only if they pass the INT8 parity gate (`parity.gates.int8`, both numeric and accuracy)
on the verification pairs right after export: one that fails is deleted and recorded as "dropped" with its
numbers, which the parity table shows and which does not fail the run (`export.int8_gate: false` keeps it, and
then a failure is an ordinary parity failure).
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
from torch import nn

from deploy.export.calibration import draw_calibration_images
from deploy.formats import ExportFormat, ExportRequest, parse_format_entry
from deploy.parity_run import parity_for_record, parity_subset
from deploy.runners.torch_runner import TorchRunner
from pipeline.artifacts import ArtifactWriteError, path_size, write_error, write_fault
from pipeline.config import ParityConfig, RunConfig
from pipeline.data.arrays import VerificationPairs
from pipeline.data.store import load_training_set, load_verification_sets
from pipeline.models.saved import load_model
from pipeline.preprocess import PreprocessSpec
from pipeline.run_layout import EXPORTS_FILE, MODEL_MANIFEST, ExportRecord, checked_export_records
from pipeline.stages.common import run_preprocess_spec, write_json
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)


def run_export_stage(context: StageContext) -> None:
    config = context.config
    student = load_model(context.input_dir("distill"), "student")
    spec = run_preprocess_spec(config, student.embedding_dim)
    calibration = draw_calibration_images(load_training_set(context.input_dir("data")).images, config.export.calibration_images)
    int8_gate = _Int8Gate(context, config, student, spec) if config.export.int8_gate else None
    records = []
    for entry in config.export.formats:
        export_format, precisions = parse_format_entry(entry)
        exportable, why_not = export_format.exportable_here()
        for precision in precisions:
            if not exportable:
                record = {"format": export_format.name, "precision": precision, "status": "skipped", "files": [],
                          "reason": why_not, "export_time_s": 0.0, "bytes": 0}
                records.append(record)
                log.info("export %s/%s: skipped: %s", export_format.name, precision, why_not)
                continue
            request = ExportRequest(student, spec, context.out_dir, precision, config.export.opset, calibration, config.export)
            record = export_one(export_format, request)
            if precision == "int8" and record["status"] == "exported" and int8_gate is not None:
                int8_gate.apply(record)
            records.append(record)
            log.info("export %s/%s: %s %s (%.1f s)", export_format.name, precision, record["status"], ", ".join(record["files"]), record["export_time_s"])
    write_json(context.out_dir, EXPORTS_FILE, checked_export_records(records, context.out_dir / EXPORTS_FILE))
    write_json(context.out_dir, MODEL_MANIFEST, {
        "model": config.student.model, "model_args": config.student.model_args,
        "preprocess": spec.to_dict(),
        "exports": [{k: r[k] for k in ("format", "precision", "status", "files")} for r in records],
    })
    context.summary["exports"] = {f"{r['format']}/{r['precision']}": r["status"] for r in records}


def export_one(export_format: ExportFormat, request: ExportRequest) -> dict:
    """Export one format x precision into `request.out_dir` and return its record.

    A converter that fails gives a "failed" record, so one broken converter does not hide the others' results;
    a write the machine refuses raises `ArtifactWriteError` naming the format's file, and fails the stage.
    """
    started = time.perf_counter()
    try:
        record = {"format": export_format.name, "precision": request.precision, "status": "exported",
                  **export_format.export(request)}
    except Exception as exc:
        fault = write_fault(exc)
        if fault is not None:
            raise refused_write(exc, fault, request.out_dir / export_format.main_file(request.precision)) from exc
        log.error("export %s/%s failed: %s", export_format.name, request.precision, exc)
        record = {"format": export_format.name, "precision": request.precision, "status": "failed", "files": [],
                  "error": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
    record["export_time_s"] = round(time.perf_counter() - started, 3)
    record["bytes"] = sum(path_size(request.out_dir / name) for name in record["files"])
    return record


def refused_write(exc: Exception, fault: OSError, destination: Path) -> ArtifactWriteError:
    """The error to fail the stage with: an atomic write's own error when it names a file of this export, else one
    naming the format's `destination` (and the scratch folder the write failed in, when that disk is another)."""
    if isinstance(exc, ArtifactWriteError) and Path(exc.path).parent == destination.parent:
        return exc
    return write_error(destination, fault)


class _Int8Gate:
    """The INT8 gate with its verification subset and PyTorch reference, computed once, on first use."""

    def __init__(self, context: StageContext, config: RunConfig, student: nn.Module, spec: PreprocessSpec) -> None:
        self.context, self.config, self.student, self.spec = context, config, student, spec
        self._subset: VerificationPairs | None = None
        self._reference: np.ndarray | None = None

    def apply(self, record: ExportRecord) -> None:
        if self._subset is None:
            pairs = load_verification_sets(self.context.input_dir("data"))[0]
            self._subset = parity_subset(pairs, self.config.parity.max_images)
            self._reference = TorchRunner(self.student, self.spec).embed(self._subset.images, batch_size=64)
        keep_if_int8_gate_passes(self.context.out_dir, record, self.spec, self._subset, self._reference, self.config.parity,
                                 self.student)


def keep_if_int8_gate_passes(out_dir: Path, record: ExportRecord, spec: PreprocessSpec, subset: VerificationPairs,
                             reference: np.ndarray, parity: ParityConfig, model: nn.Module | None = None) -> None:
    """Keep an exported int8 `record` (noting the gate's numbers) or delete its files and mark it dropped.

    Only a measured miss drops it; an int8 model that cannot even run is a failed export (it fails the run), and
    one this machine cannot run is kept ungated (its parity row says skipped, with the reason).
    """
    result = parity_for_record(out_dir, record, spec, subset, reference, parity, model=model)
    record["gate_result"] = result.to_dict()
    if result.status in ("skipped", "error"):
        log.warning("export %s/int8: int8 gate %s: %s", record["format"], result.status, result.reason)
        if result.status == "error":
            record.update(status="failed", error=f"the int8 gate could not run it: {result.reason}")
        return
    numbers = f"cos min {result.cosine_min:.4f}, accuracy delta {result.accuracy_delta_points:+.2f} points"
    if result.status == "pass":
        log.info("export %s/int8 passes the int8 gate (%s)", record["format"], numbers)
        return
    for name in record["files"]:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    record.update(status="dropped", files=[], reason=f"failed int8 gate ({numbers}): {result.reason}")
    log.warning("export %s/int8 dropped: %s", record["format"], record["reason"])
