"""The pipeline's stages in run order: data -> teacher -> baseline -> distill -> evaluate -> export -> parity -> native_parity ->
benchmark -> pareto -> report."""

from __future__ import annotations

from app.stages.benchmark_stage import run_benchmark_stage
from app.stages.data_stage import data_input_digests, run_data_stage
from app.stages.evaluate_stage import run_evaluate_stage
from app.stages.export_stage import run_export_stage
from app.stages.native_parity_stage import run_native_parity_stage
from app.stages.pareto_stage import run_pareto_stage
from app.stages.parity_stage import run_parity_stage
from app.stages.report_stage import run_report_stage
from app.stages.student_stages import run_baseline_stage, run_distill_stage
from app.stages.teacher_stage import run_teacher_stage, teacher_external_files
from pipeline.run_layout import REPORT_FILE
from pipeline.stages.runner import Stage

STAGES: list[Stage] = [
    Stage("data", run_data_stage, (), ("seed", "data"), description="prepare training and verification faces",
          input_digests=data_input_digests),
    Stage("teacher", run_teacher_stage, ("data",), ("seed", "teacher"), teacher_external_files, "train the ViT teacher, or load a pretrained one",
          distributed=True),
    Stage("baseline", run_baseline_stage, ("data",), ("seed", "student", "distill"), description="train the student without distillation",
          distributed=True),
    Stage("distill", run_distill_stage, ("data", "teacher"), ("seed", "student", "distill"), description="distil the teacher into the student",
          distributed=True),
    Stage("evaluate", run_evaluate_stage, ("data", "teacher", "baseline", "distill"), (), description="verification accuracy of teacher and students"),
    Stage("export", run_export_stage, ("data", "distill"), ("export", "parity"), description="export the student to every configured format"),
    Stage("parity", run_parity_stage, ("data", "distill", "evaluate", "export"), ("parity",), description="numeric and accuracy parity of every backend"),
    Stage("native_parity", run_native_parity_stage, ("data", "distill", "evaluate", "export"), ("native_parity", "parity"),
          description="the ncnn export through the project's C++ tool: x86, and ARM kernels under qemu"),
    Stage("benchmark", run_benchmark_stage, ("data", "teacher", "distill", "export"), ("benchmark",),
          description="latency of every runnable backend, FLOPs, and the teacher's training cost"),
    Stage("pareto", run_pareto_stage, ("data", "teacher", "distill"), ("seed", "student", "distill", "export", "pareto"),
          description="students of several sizes: accuracy against ncnn latency", distributed=False),
    Stage("report", run_report_stage, ("data", "teacher", "baseline", "distill", "evaluate", "export", "parity", "native_parity", "benchmark",
                                       "pareto"),
          ("run_name",),
          description=f"{REPORT_FILE} and report.html"),
]

STAGE_NAMES = [stage.name for stage in STAGES]
