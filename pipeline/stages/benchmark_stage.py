"""Stage `benchmark`: latency of the PyTorch reference and every runnable export, threads x batch sizes."""

from __future__ import annotations

import logging
import os

import numpy as np

from benchmarks.latency import format_latency_table, measure_latency
from deploy.formats import get_format
from deploy.preprocess import PreprocessSpec
from deploy.runners.torch_runner import TorchRunner
from pipeline.data.store import load_verification_sets
from pipeline.models.saved import load_model
from pipeline.stages.common import read_json, write_json
from pipeline.stages.export_stage import EXPORTS_FILE, MODEL_MANIFEST
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)
LATENCY_FILE = "latency.json"


def run_benchmark_stage(context: StageContext) -> None:
    settings = context.config.benchmark
    export_dir = context.input_dir("export")
    spec = PreprocessSpec.load(export_dir / MODEL_MANIFEST)
    images = np.asarray(load_verification_sets(context.input_dir("data"))[0].images[: settings.throughput_batch])
    student = load_model(context.input_dir("distill"), "student")
    threads_available = os.cpu_count() or 1
    thread_counts = [t for t in settings.threads if t <= threads_available] or [1]
    factories = [("pytorch", "fp32", lambda threads: TorchRunner(student, spec, threads=threads))]
    for record in read_json(export_dir / EXPORTS_FILE):
        export_format = get_format(record["format"])
        runnable, why_not = export_format.runnable_here()
        if record["status"] != "exported" or not runnable:
            log.info("benchmark %s/%s: skipped (%s)", record["format"], record["precision"], why_not or "export failed")
            continue
        factories.append((record["format"], record["precision"],
                          lambda threads, f=export_format, r=record: f.make_runner(export_dir, r, spec, threads)))
    results = []
    for backend, precision, make_runner in factories:
        for threads in thread_counts:
            runner = make_runner(threads)
            try:
                for batch, runs in ((1, settings.timed_runs), (settings.throughput_batch, settings.throughput_runs)):
                    result = measure_latency(runner, images, batch, settings.warmup_runs if batch == 1 else 1, runs, backend)
                    results.append(result.to_dict())
                    log.info("benchmark %s/%s threads=%d batch=%d: p50 %.2f ms, p90 %.2f ms (%.0f images/s)",
                             backend, precision, threads, batch, result.p50_ms, result.p90_ms, result.images_per_s)
            finally:
                runner.close()
    write_json(context.out_dir, LATENCY_FILE, {"cpu_count": threads_available, "results": results})
    print(format_latency_table(results))
    context.summary["rows"] = len(results)
