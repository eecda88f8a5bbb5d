"""Stage `benchmark`: latency of the PyTorch reference and every runnable export (threads x batch sizes), the
student's parameters and FLOPs, and what distillation's teacher costs per training image.

Writes latency.json (schema in benchmarks/latency.py) and distill_speed.json (benchmarks/distill_speed.py).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from benchmarks.distill_speed import measure_distill_speed
from benchmarks.latency import BenchmarkTarget, format_latency_table, run_latency_matrix
from benchmarks.model_stats import model_complexity
from deploy.runners.torch_runner import TorchRunner
from pipeline.artifacts import path_size
from pipeline.data.store import load_training_set, load_verification_sets
from pipeline.models.registry import create_model
from pipeline.models.saved import load_model
from pipeline.preprocess import PreprocessSpec
from pipeline.run_layout import LATENCY_FILE, MODEL_MANIFEST, read_export_records
from pipeline.stages.common import write_json
from pipeline.stages.runner import StageContext

DISTILL_SPEED_FILE = "distill_speed.json"


def run_benchmark_stage(context: StageContext) -> None:
    config = context.config
    settings = config.benchmark
    export_dir, distill_dir = context.input_dir("export"), context.input_dir("distill")
    spec = PreprocessSpec.load(export_dir / MODEL_MANIFEST)
    images = np.asarray(load_verification_sets(context.input_dir("data"))[0].images[: settings.throughput_batch])
    # The PyTorch row loads its own copy per runner, so its peak memory counts the weights as the exports' rows do.
    pytorch = BenchmarkTarget("pytorch", "fp32", lambda threads: TorchRunner(load_model(distill_dir, "student"), spec, threads=threads),
                              path_size(distill_dir / "student.safetensors"))
    model = {"name": config.student.model, "model_args": dict(config.student.model_args),
             **model_complexity(load_model(distill_dir, "student"), (1, 3, spec.height, spec.width))}
    document = run_latency_matrix(export_dir, read_export_records(export_dir), spec, settings, images,
                                  context.work_dir / "engines", (pytorch,), model)
    write_json(context.out_dir, LATENCY_FILE, document)
    print(format_latency_table(document["results"]))
    for entry in document["skipped"]:
        print(f"skipped {entry['backend']}/{entry['precision']}: {entry['reason']}")
    context.summary.update(rows=len(document["results"]), skipped=len(document["skipped"]),
                           parameters=model["parameters"], gflops=round(model["flops"] / 1e9, 4))
    if settings.distill_speed_steps:
        teacher_training = (partial(create_model, config.teacher.model, **config.teacher.model_args), config.teacher.margin,
                            config.teacher.optim)
        speed = measure_distill_speed(partial(create_model, config.student.model, **config.student.model_args),
                                      load_model(context.input_dir("teacher"), "teacher"), load_training_set(context.input_dir("data")),
                                      spec, config.distill, config.seed, settings.distill_speed_steps, teacher_training)
        write_json(context.out_dir, DISTILL_SPEED_FILE, speed)
        context.summary["distill_speed"] = {k: v for k, v in speed.items() if k.endswith("images_per_s")}
