"""Stage `pareto`: accuracy against latency for students of several sizes distilled from the same teacher.

Why: a user picks the student that fits a latency budget, so the run shows what each size buys. Every student in
`pareto.students` is distilled with the distill stage's objective, data and budget (one equal to the run's student
reuses the distill stage's weights), exported to ncnn at each precision, scored on the first verification set with
the evaluate stage's protocol, and timed through ncnn at `pareto.threads` threads, batch 1. Writes pareto.json and,
per student, a folder with its weights and ncnn files.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from app.stages.student_stages import StudentJob, student_job, train_student
from benchmarks.latency import measure_latency
from benchmarks.model_stats import model_complexity
from deploy.export.calibration import draw_calibration_images
from deploy.formats import ExportRequest, get_format
from deploy.runners.torch_runner import TorchRunner
from pipeline.artifacts import path_size
from pipeline.config import ParetoStudentConfig, StudentConfig
from pipeline.data.store import load_training_set, load_verification_sets
from pipeline.evaluation.verification import evaluate_verification
from pipeline.models.saved import load_model
from pipeline.stages.common import run_preprocess_spec, write_json
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)
PARETO_FILE = "pareto.json"
STUDENT_STEM = "student"


def run_pareto_stage(context: StageContext) -> None:
    config = context.config
    students = config.pareto.students
    rows: list[dict] = []
    if students:
        pairs = load_verification_sets(context.input_dir("data"))[0]
        calibration = draw_calibration_images(load_training_set(context.input_dir("data")).images, config.export.calibration_images)
        for student in students:
            rows += pareto_rows(context, student, pairs, calibration)
    write_json(context.out_dir, PARETO_FILE, {"verification_set": pairs.name if students else None,
                                              "threads": config.pareto.threads, "rows": rows})
    context.summary["students"] = [s.name for s in students]


def pareto_rows(context: StageContext, student: ParetoStudentConfig, pairs, calibration: np.ndarray) -> list[dict]:
    """Train (or reuse), export, score and time one student; one row for PyTorch and one per ncnn precision."""
    config = context.config
    folder = context.out_dir / student.name
    folder.mkdir(parents=True, exist_ok=True)
    training = obtain_student(context, student, folder)
    model = load_model(folder, STUDENT_STEM)
    spec = run_preprocess_spec(config, model.embedding_dim)
    complexity = model_complexity(model, (1, 3, spec.height, spec.width))
    base = {"student": student.name, "model": student.model, "model_args": dict(student.model_args),
            "parameters": complexity["parameters"], "gflops": round(complexity["flops"] / 1e9, 4), **training}
    images = np.asarray(pairs.images)
    reference = TorchRunner(model, spec).embed(images, batch_size=64, progress=True)
    rows = [{**base, "backend": "pytorch", "precision": "fp32", **_accuracy(reference, pairs.issame)}]
    ncnn = get_format("ncnn")
    for precision in config.pareto.precisions:
        request = ExportRequest(model, spec, folder, precision, config.export.opset, calibration, config.export)
        record = {"format": "ncnn", "precision": precision, **ncnn.export(request)}
        with ncnn.make_runner(folder, record, spec, 1) as runner:
            embeddings = runner.embed(images, batch_size=32, progress=True)
        with ncnn.make_runner(folder, record, spec, config.pareto.threads) as runner:
            latency = measure_latency(runner, images, 1, config.pareto.warmup_runs, config.pareto.timed_runs, "ncnn",
                                      config.pareto.min_timed_seconds)
        cosine = np.sum(_unit(embeddings) * _unit(reference), axis=1)
        rows.append({**base, "backend": "ncnn", "precision": precision, **_accuracy(embeddings, pairs.issame),
                     "cosine_min_vs_pytorch": round(float(cosine.min()), 6), "p50_ms": latency.p50_ms, "p90_ms": latency.p90_ms,
                     "threads": config.pareto.threads, "model_bytes": sum(path_size(folder / name) for name in record["files"])})
        log.info("pareto %s ncnn/%s: accuracy %.2f%%, p50 %.2f ms at %d thread(s)", student.name, precision,
                 rows[-1]["accuracy"], latency.p50_ms, config.pareto.threads)
    return rows


def obtain_student(context: StageContext, student: ParetoStudentConfig, folder: Path) -> dict:
    """The student's weights in `folder`: the distill stage's when it is the run's student, else distilled here."""
    config = context.config
    if (student.model, dict(student.model_args)) == (config.student.model, dict(config.student.model_args)):
        distill_dir = context.input_dir("distill")
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(distill_dir / f"{STUDENT_STEM}{suffix}", folder / f"{STUDENT_STEM}{suffix}")
        log.info("pareto %s: the run's student, reused from %s", student.name, distill_dir)
        return {"trained_here": False}
    sized = config.model_copy(update={"student": StudentConfig(model=student.model, model_args=student.model_args)})
    job: StudentJob = student_job(context, sized, teacher=True, work_dir=context.work_dir / student.name, out_dir=folder)
    summary = train_student(job, STUDENT_STEM, sized.distill.objective())
    return {"trained_here": True, "steps": summary["steps"], "train_wall_time_s": summary["train_wall_time_s"]}


def _unit(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def _accuracy(embeddings: np.ndarray, issame: np.ndarray) -> dict:
    result = evaluate_verification(embeddings, issame)
    return {"accuracy": round(100 * result.accuracy, 2), "accuracy_std": round(100 * result.accuracy_std, 2)}
