"""Stage `export`: the student into every configured format x precision, with the preprocessing manifest beside it.

One format failing to export is recorded (with its error) and does not stop the others (Ultralytics'
benchmark lesson); the parity stage reports it.
"""

from __future__ import annotations

import logging
import time
import traceback

from deploy.formats import ExportRequest, parse_format_entry
from pipeline.artifacts import path_size
from pipeline.data.store import load_training_set
from pipeline.models.saved import load_model
from pipeline.stages.common import run_preprocess_spec, write_json
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)
EXPORTS_FILE = "exports.json"
MODEL_MANIFEST = "model_manifest.json"
CALIBRATION_IMAGES = 64


def run_export_stage(context: StageContext) -> None:
    config = context.config
    student = load_model(context.input_dir("distill"), "student")
    spec = run_preprocess_spec(config, student.embedding_dim)
    train_images = load_training_set(context.input_dir("data")).images
    calibration = train_images[:: max(1, len(train_images) // CALIBRATION_IMAGES)][:CALIBRATION_IMAGES]
    records = []
    for entry in config.export.formats:
        export_format, precisions = parse_format_entry(entry)
        for precision in precisions:
            request = ExportRequest(student, spec, context.out_dir, precision, config.export.opset, calibration)
            started = time.perf_counter()
            try:
                record = {"format": export_format.name, "precision": precision, "status": "exported", **export_format.export(request)}
            except Exception as exc:  # one broken converter must not hide the others' results
                log.error("export %s/%s failed: %s", export_format.name, precision, exc)
                record = {"format": export_format.name, "precision": precision, "status": "failed", "files": [],
                          "error": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
            record["export_time_s"] = round(time.perf_counter() - started, 3)
            record["bytes"] = sum(path_size(context.out_dir / name) for name in record["files"])
            records.append(record)
            log.info("export %s/%s: %s %s (%.1f s)", export_format.name, precision, record["status"], ", ".join(record["files"]), record["export_time_s"])
    write_json(context.out_dir, EXPORTS_FILE, records)
    write_json(context.out_dir, MODEL_MANIFEST, {
        "model": config.student.model, "model_args": config.student.model_args,
        "preprocess": spec.to_dict(), "exports": [{k: r[k] for k in ("format", "precision", "files")} for r in records],
    })
    context.summary["exports"] = {f"{r['format']}/{r['precision']}": r["status"] for r in records}
