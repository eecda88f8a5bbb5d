"""Stages `baseline` (student alone) and `distill` (student taught by the teacher), on one trainer.

`train_student` is the one way a student is trained: these stages and `app/ablation.py` all call it.
A frozen teacher's signals (embeddings, and patch tokens at the blocks feature terms tap) of every training image
and its mirror are computed once and cached in the work folder, keyed by the teacher's and the data's hashes:
distillation never reruns a frozen teacher. A prompted teacher (APT) changes every step, so it runs live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.artifacts import sha256_json
from pipeline.config import DistillVariant, RunConfig
from pipeline.data.store import load_array, load_training_set
from pipeline.distill import distributed
from pipeline.distill.apt import PromptedTeacher
from pipeline.distill.checkpoint import load_module_weights
from pipeline.distill.objective import build_losses, loss_context, reads_teacher, teacher_taps
from pipeline.distill.teacher_cache import compute_teacher_signals
from pipeline.distill.teacher_signals import FrozenTeacher, TeacherSignals, teacher_runs_in_bf16
from pipeline.distill.trainer import train_recognition_model
from pipeline.interrupts import stop_requested
from pipeline.models.margin import CombinedMarginHead
from pipeline.models.registry import create_model
from pipeline.models.saved import load_model, save_model, save_weights
from pipeline.stages.common import run_preprocess_spec, write_json
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)
TEACHER_HEAD_FILE = "teacher_head.safetensors"


@dataclass(frozen=True)
class StudentJob:
    """Where one student training reads and writes, and the seed it uses."""

    config: RunConfig
    data_dir: Path
    teacher_dir: Path | None  # None: no teacher (the baseline)
    work_dir: Path  # checkpoints
    cache_dir: Path  # the teacher-signal cache, shared by every student trained on the same data and teacher
    out_dir: Path
    cache_key: str  # hash of the data and teacher outputs: names the teacher-signal cache files
    seed: int


def train_student(job: StudentJob, stem: str, objective: DistillVariant) -> dict:
    """Train a student with `objective`, write <stem>.safetensors/.json, its head and history; return its summary."""
    config = job.config
    torch.manual_seed(job.seed)  # every objective trained with one seed starts from the same student weights
    student = create_model(config.student.model, **config.student.model_args)
    train_set = load_training_set(job.data_dir)
    teacher_model = teacher_head = None
    if objective.losses and job.teacher_dir is not None:
        teacher_model = load_model(job.teacher_dir, "teacher")
        teacher_head = load_teacher_head(job.teacher_dir, config, teacher_model, train_set.num_identities)
    losses = build_losses(objective, loss_context(student, config.data.image_size, teacher_model, teacher_head), job.seed)
    teacher: TeacherSignals | PromptedTeacher | FrozenTeacher | None = None
    optim = config.distill.optim
    if objective.apt is not None:  # PromptedTeacher refuses a teacher without tokens, or a kept margin loss without a head
        apt = objective.apt
        teacher = PromptedTeacher(teacher_model, teacher_head, apt.num_prompts, apt.blocks, apt.teacher_margin_weight)
    elif any(reads_teacher(loss) for loss in losses) and teacher_model is not None:
        if optim.augment is not None:  # the teacher embeds the augmented view the student sees, every step
            teacher = FrozenTeacher(teacher_model, teacher_runs_in_bf16(config.distill.teacher_precision, distributed.current().device))
        else:
            teacher = teacher_signals(job, teacher_model, teacher_taps(losses), train_set.images)
    head, result = train_recognition_model(
        student, train_set, run_preprocess_spec(config), config.distill.margin, optim,
        job.seed, job.work_dir / f"{stem}_checkpoint", losses, teacher, description=stem, should_stop=stop_requested,
        margin_weight=objective.margin_weight, evaluate=curve_evaluator(job.data_dir, config) if optim.eval_every_steps else None,
    )
    save_model(job.out_dir, stem, student, config.student.model, dict(config.student.model_args))
    save_weights(job.out_dir / f"{stem}_head.safetensors", head)
    write_json(job.out_dir, f"{stem}_history.json", result.history)
    if result.curve:
        write_json(job.out_dir, f"{stem}_curve.json", result.curve)
    return {
        "steps": result.global_steps, "resumed_from_step": result.resumed_from_step,
        "train_wall_time_s": round(result.wall_time_s, 1), "images_per_s": round(result.images_per_s, 1),
        "median_step_s": round(result.median_step_s, 5), "precision": result.precision,
        "losses": [loss.name for loss in losses], "apt": objective.apt is not None, "margin_weight": objective.margin_weight,
        "teacher_signals": "none" if teacher is None else "cached" if isinstance(teacher, TeacherSignals) else "live",
        "teacher_bf16": bool(getattr(teacher, "bf16", False)),
        "augment": optim.augment is not None,
        "parameters": sum(p.numel() for p in student.parameters()),
    }


def load_teacher_head(teacher_dir: Path, config: RunConfig, teacher: nn.Module, num_identities: int) -> CombinedMarginHead | None:
    """The teacher stage's margin head (class centres), or None for a teacher loaded from a user's checkpoint."""
    path = teacher_dir / TEACHER_HEAD_FILE
    if not path.is_file():
        return None
    head = CombinedMarginHead(teacher.embedding_dim, num_identities, **config.teacher.margin.model_dump())
    load_module_weights(head, load_file(str(path)), path)
    return head.eval()


def student_job(context: StageContext, config: RunConfig, teacher: bool, work_dir: Path | None = None, out_dir: Path | None = None) -> StudentJob:
    """Where a stage's student training reads and writes: its data, the teacher stage (or none), and its folders.

    The teacher-signal cache is keyed by the data's and the teacher's output hashes, so every student trained on the
    same data and teacher shares it."""
    return StudentJob(
        config, context.input_dir("data"), context.input_dir("teacher") if teacher else None, work_dir or context.work_dir,
        context.work_dir, out_dir or context.out_dir,
        sha256_json({"teacher": context.extra_inputs.get("teacher"), "data": context.extra_inputs["data"]})[:16],
        config.seed if config.distill.seed is None else config.distill.seed,
    )


def run_baseline_stage(context: StageContext) -> None:
    """The no-distillation student: same data, trainer and budget as `distill`, margin loss only (`distill.train_baseline`
    false: none, and the report says so)."""
    if not context.config.distill.train_baseline:
        context.summary["student_nokd"] = "not trained (distill.train_baseline is false)"
        return
    context.summary["student_nokd"] = train_student(student_job(context, context.config, teacher=False), "student_nokd", DistillVariant())


def run_distill_stage(context: StageContext) -> None:
    context.summary["student"] = train_student(student_job(context, context.config, teacher=True), "student", context.config.distill.objective())


def teacher_signals(job: StudentJob, teacher: nn.Module, taps: list[str], images: np.ndarray) -> TeacherSignals:
    """Frozen-teacher embeddings (and tokens at `taps`) of every training image and its mirror, cached or computed now."""
    embeddings_path = job.cache_dir / f"teacher_embeddings_{job.cache_key}.npy"
    token_paths = {tap: job.cache_dir / f"teacher_tokens_{tap}_{job.cache_key}.npy" for tap in taps}
    missing = {tap: path for tap, path in token_paths.items() if not path.is_file()}
    if missing or not embeddings_path.is_file():
        ctx = distributed.current()
        if ctx.is_main:  # under torchrun one rank computes the cache and the others wait for it
            compute_teacher_signals(teacher, images, run_preprocess_spec(job.config, teacher.embedding_dim), embeddings_path, missing)
        ctx.barrier()
    else:
        log.info("distill: teacher signals from cache %s", job.cache_dir)
    tokens = {tap: load_array(path) for tap, path in token_paths.items()}  # memory-mapped fp16
    return TeacherSignals(np.asarray(load_array(embeddings_path, mmap=False)), tokens)


def curve_evaluator(data_dir: Path, config: RunConfig):
    """Scores a backbone on the run's first verification set (name order), for the accuracy-against-time curve."""
    from deploy.runners.torch_runner import TorchRunner
    from pipeline.data.store import load_verification_sets
    from pipeline.evaluation.verification import evaluate_verification

    pairs = load_verification_sets(data_dir)[0]
    images = np.asarray(pairs.images)

    def evaluate(backbone: nn.Module) -> dict[str, float]:
        embeddings = TorchRunner(backbone, run_preprocess_spec(config, backbone.embedding_dim)).embed(images, batch_size=128)
        result = evaluate_verification(embeddings, pairs.issame)
        return {"set": pairs.name, "accuracy": round(100 * result.accuracy, 2), "accuracy_std": round(100 * result.accuracy_std, 2)}

    return evaluate
