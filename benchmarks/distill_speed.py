"""What the teacher costs: training images/s of the student alone vs the distillation step, through the one trainer.

Four figures, each the median over a few steps of `train_recognition_model` (warm-up and checkpointing steps left out):
- student alone: margin loss only (the baseline stage's step);
- distill, cached teacher: the margin loss plus the configured embedding terms reading teacher embeddings
  computed beforehand (what the distill stage does: it caches the teacher's outputs once);
- distill, online teacher: the same step with the teacher's forward pass inside it (what distillation costs
  without the cache, as it must for a teacher that changes while the student trains, e.g. APT's prompts);
- teacher forward alone, in inference mode, at the training batch size (the cache's price per image).
Stand-in teacher embeddings are seeded random vectors: their values do not change a step's cost.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.latency import measure_latency
from deploy.preprocess import PreprocessSpec
from deploy.runners.torch_runner import TorchRunner
from pipeline.config import DistillConfig
from pipeline.data.arrays import FaceArrays
from pipeline.distill.losses import TEACHER_EMBEDDING, create_loss
from pipeline.distill.distributed import Distributed
from pipeline.distill.teacher_signals import TeacherSignals
from pipeline.distill.trainer import WeightedLoss, train_recognition_model
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def _step_images_per_s(make_student: Callable[[], nn.Module], train_set: FaceArrays, spec: PreprocessSpec, distill: DistillConfig, seed: int,
                       steps: int, losses: list[WeightedLoss], teacher: object | None) -> tuple[float, int]:
    """(images/s from the median step time, steps timed) of `steps` training steps on a fresh student.

    `teacher`: None, cached `TeacherSignals`, or anything with the trainer's `signals(...)` (a live teacher).
    """
    stamps: list[float] = []

    def record_step(_step: int) -> bool:
        stamps.append(time.perf_counter())
        return False

    # One step before the timed ones (warm-up, no earlier stamp to time it from) and one after: the trainer
    # checkpoints at its last step before asking should_stop, so that step's time is not a training step's.
    optim = distill.optim.model_copy(update={"max_steps": steps + 2, "checkpoint_every_steps": 10**9})
    with tempfile.TemporaryDirectory(prefix="distill-speed-") as checkpoint_dir:
        train_recognition_model(make_student(), train_set, spec, distill.margin, optim, seed, Path(checkpoint_dir),
                                losses, teacher, description="speed", should_stop=record_step,
                                distributed=Distributed())  # one CPU process, also when the run is under torchrun
    step_seconds = np.diff(stamps)[:-1]
    batch = min(distill.optim.batch_size, len(train_set.labels))
    return round(batch / float(np.median(step_seconds)), 1), len(step_seconds)


def embedding_terms(distill: DistillConfig) -> list[WeightedLoss]:
    """The configured terms that read only the teacher's embedding (cacheable); embedding_kd when there are none."""
    terms = []
    for term in distill.losses:
        try:
            module = create_loss(term.name, **term.args)
        except ConfigError:  # a term sized to the networks or reading the teacher's head: not an embedding term
            continue
        if module.requires <= {TEACHER_EMBEDDING}:
            terms.append(WeightedLoss(term.name, term.weight, module))
    return terms or [WeightedLoss("embedding_kd", 1.0, create_loss("embedding_kd"))]


def measure_distill_speed(make_student: Callable[[], nn.Module], teacher: nn.Module, train_set: FaceArrays, spec: PreprocessSpec,
                          distill: DistillConfig, seed: int, steps: int) -> dict:
    """The four figures of the module docstring, and how many times longer an online distill step takes than the student's."""
    terms = embedding_terms(distill)
    embedding_dim = getattr(teacher, "embedding_dim", 512)
    stand_in = np.random.default_rng(seed).standard_normal((len(train_set.labels), 2, embedding_dim)).astype(np.float32)
    student_alone, timed = _step_images_per_s(make_student, train_set, spec, distill, seed, steps, [], None)
    cached, _ = _step_images_per_s(make_student, train_set, spec, distill, seed, steps, terms, TeacherSignals(stand_in))
    from benchmarks.teacher_cache_speed import LiveTeacher  # here: that module builds on this one's step timing

    online, _ = _step_images_per_s(make_student, train_set, spec, distill, seed, steps, terms, LiveTeacher(teacher))
    batch = min(distill.optim.batch_size, len(train_set.labels))
    teacher_forward = measure_latency(TorchRunner(teacher, spec, threads=torch.get_num_threads()), train_set.images, batch,
                                      warmup_runs=1, timed_runs=max(3, steps)).images_per_s
    result = {
        "batch_size": batch, "steps_timed": timed, "threads": torch.get_num_threads(), "losses": [t.name for t in terms],
        "student_alone_images_per_s": student_alone,
        "distill_cached_teacher_images_per_s": cached,
        "distill_online_teacher_images_per_s": online,
        "teacher_forward_images_per_s": teacher_forward,
        "online_step_time_vs_student_alone": round(student_alone / online, 2) if online else None,
    }
    log.info("distill speed: %s", result)
    return result
