"""Stages `baseline` (student alone) and `distill` (student taught by the teacher), on one trainer.

The teacher's embeddings of every training image and its mirror are computed once and cached in the
stage's work folder, keyed by the teacher's and the data's hashes: distillation never reruns the teacher.
"""

from __future__ import annotations

import logging

import numpy as np

from deploy.runners.torch_runner import TorchRunner
from pipeline.artifacts import sha256_json
from pipeline.data.store import load_array, load_training_set, save_array
from pipeline.distill.losses import create_loss
from pipeline.distill.trainer import TeacherSignals, WeightedLoss, train_recognition_model
from pipeline.models.registry import create_model
from pipeline.models.saved import load_model, save_model, save_weights
from pipeline.stages.common import run_preprocess_spec, write_json
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)


def _train_student(context: StageContext, stem: str, losses: list[WeightedLoss], teacher: TeacherSignals | None) -> None:
    config = context.config
    student = create_model(config.student.model, **config.student.model_args)
    train_set = load_training_set(context.input_dir("data"))
    head, result = train_recognition_model(
        student, train_set, run_preprocess_spec(config), config.distill.margin, config.distill.optim,
        config.seed, context.work_dir / f"{stem}_checkpoint", losses, teacher, description=stem,
    )
    save_model(context.out_dir, stem, student, config.student.model, dict(config.student.model_args))
    save_weights(context.out_dir / f"{stem}_head.safetensors", head)
    write_json(context.out_dir, f"{stem}_history.json", result.history)
    context.summary[stem] = {
        "steps": result.global_steps, "resumed_from_step": result.resumed_from_step,
        "train_wall_time_s": round(result.wall_time_s, 1), "images_per_s": round(result.images_per_s, 1),
        "losses": [loss.name for loss in losses], "parameters": sum(p.numel() for p in student.parameters()),
    }


def run_baseline_stage(context: StageContext) -> None:
    """The no-distillation student: same data, trainer and budget as `distill`, margin loss only."""
    _train_student(context, "student_nokd", [], None)


def run_distill_stage(context: StageContext) -> None:
    config = context.config
    losses = [WeightedLoss(term.name, term.weight, create_loss(term.name, **term.args)) for term in config.distill.losses]
    needs_teacher = any("teacher_embedding" in loss.module.requires for loss in losses)
    teacher = teacher_signals(context) if needs_teacher else None
    _train_student(context, "student", losses, teacher)


def teacher_signals(context: StageContext) -> TeacherSignals:
    """Teacher embeddings of every training image, original and mirrored, from the cache or computed now."""
    key = sha256_json({"teacher": context.extra_inputs["teacher"], "data": context.extra_inputs["data"]})[:16]
    cache_path = context.work_dir / f"teacher_embeddings_{key}.npy"
    if cache_path.is_file():
        log.info("distill: teacher embeddings from cache %s", cache_path)
        return TeacherSignals(np.asarray(load_array(cache_path, mmap=False)))
    teacher = load_model(context.input_dir("teacher"), "teacher")
    images = load_training_set(context.input_dir("data")).images
    runner = TorchRunner(teacher, run_preprocess_spec(context.config, teacher.embedding_dim))
    original = runner.embed(images, batch_size=128, progress=True)
    mirrored = runner.embed(np.ascontiguousarray(images[:, :, ::-1]), batch_size=128, progress=True)
    embeddings = np.stack([original, mirrored], axis=1).astype(np.float32)
    save_array(cache_path, embeddings)
    log.info("distill: cached teacher embeddings %s -> %s", embeddings.shape, cache_path)
    return TeacherSignals(embeddings)
