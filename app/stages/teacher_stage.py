"""Stage `teacher`: train the ViT teacher with a margin head, or load a user's pretrained teacher (a ViT, EdgeFace, ...)."""

from __future__ import annotations

import logging
from pathlib import Path

from app.stages.student_stages import curve_evaluator
from pipeline.data.store import load_training_set
from pipeline.distill.checkpoint import load_module_weights
from pipeline.distill.trainer import train_recognition_model
from pipeline.errors import DataError
from pipeline.interrupts import stop_requested
from pipeline.models.registry import create_model
from pipeline.models.saved import check_sha256, load_external_weights, save_model, save_weights
from pipeline.stages.common import run_preprocess_spec, write_json
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)


def run_teacher_stage(context: StageContext) -> None:
    config = context.config
    teacher_config = config.teacher
    teacher = create_model(teacher_config.model, **teacher_config.model_args)
    if teacher_config.checkpoint:
        path = Path(teacher_config.checkpoint)
        if teacher_config.checkpoint_sha256:
            check_sha256(path, teacher_config.checkpoint_sha256)
        if teacher_config.checkpoint_format == "insightface_vit":
            from pipeline.models.insightface_vit import load_insightface_weights

            load_insightface_weights(teacher, path)
        else:
            weights = load_external_weights(path)  # an unreadable or unsafe file fails here, as itself
            try:
                load_module_weights(teacher, weights, path)
            except DataError as exc:  # e.g. a checkpoint of another architecture: say which one was expected
                args = ", ".join(f"{k}={v}" for k, v in teacher_config.model_args.items())
                raise DataError(path, f"not a teacher.model {teacher_config.model}({args}) checkpoint: {exc.problem}") from None
        log.info("teacher: loaded %s from %s (no training)", teacher_config.model, path)
        context.summary.update({"source": "checkpoint", "checkpoint": str(path),
                                **({"checkpoint_sha256": teacher_config.checkpoint_sha256} if teacher_config.checkpoint_sha256 else {})})
    else:
        data_dir = context.input_dir("data")
        train_set = load_training_set(data_dir)
        head, result = train_recognition_model(
            teacher, train_set, run_preprocess_spec(config), teacher_config.margin, teacher_config.optim,
            config.seed, context.work_dir / "checkpoint", description="teacher", should_stop=stop_requested,
            evaluate=curve_evaluator(data_dir, config) if teacher_config.optim.eval_every_steps else None,
        )
        save_weights(context.out_dir / "teacher_head.safetensors", head)
        write_json(context.out_dir, "teacher_history.json", result.history)
        if result.curve:
            write_json(context.out_dir, "teacher_curve.json", result.curve)
        context.summary.update({
            "source": "trained", "steps": result.global_steps, "resumed_from_step": result.resumed_from_step,
            "train_wall_time_s": round(result.wall_time_s, 1), "images_per_s": round(result.images_per_s, 1),
            "precision": result.precision,
        })
    save_model(context.out_dir, "teacher", teacher, teacher_config.model, dict(teacher_config.model_args))
    context.summary["parameters"] = sum(p.numel() for p in teacher.parameters())


def teacher_external_files(config) -> list[str]:
    return [config.teacher.checkpoint] if config.teacher.checkpoint else []
