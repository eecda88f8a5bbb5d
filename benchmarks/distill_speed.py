"""Training speed through the one trainer: old settings against new, and what the teacher costs, side by side.

Each figure is training images/s from the median step of `train_recognition_model` (warm-up and checkpointing steps
left out), on the run's own training faces:
- student alone, before: NCHW tensors and ATen's BatchNorm and PReLU (the trainer as it was);
- student alone, now: the profile's settings (channels-last, the compiled BatchNorm+PReLU kernel of
  `pipeline/models/fused_bn.py`, where they are on);
- distill, cached teacher: embedding terms reading teacher embeddings computed beforehand (no augmentation);
- distill, online teacher: the teacher's forward inside the step, in fp32 and at the profile's teacher precision
  (bf16 where the CPU has native bf16), and with the profile's augmentation when it has one (the recipe that needs
  a live teacher);
- teacher forward alone, in inference mode, at the training batch size.
Stand-in cached embeddings are seeded random vectors: their values do not change a step's cost. The CPU features the
choices depend on are recorded beside the figures.
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
from deploy.runners.torch_runner import TorchRunner
from pipeline.config import DistillConfig, OptimConfig
from pipeline.cpu_features import cpu_flags, has_native_bf16
from pipeline.data.arrays import FaceArrays
from pipeline.distill.distributed import Distributed
from pipeline.distill.losses import TEACHER_EMBEDDING, create_loss
from pipeline.distill.teacher_signals import FrozenTeacher, TeacherSignals, teacher_runs_in_bf16
from pipeline.distill.trainer import WeightedLoss, train_recognition_model
from pipeline.errors import ConfigError
from pipeline.models.fused_bn import fused_kernels_failed
from pipeline.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


def _step_images_per_s(make_student: Callable[[], nn.Module], train_set: FaceArrays, spec: PreprocessSpec, distill: DistillConfig, seed: int,
                       steps: int, losses: list[WeightedLoss], teacher: object | None, optim: OptimConfig | None = None) -> tuple[float, int]:
    """(images/s from the median step time, steps timed) of `steps` training steps on a fresh student.

    `teacher`: None, cached `TeacherSignals`, or anything with the trainer's `signals(...)` (a live teacher);
    `optim`: the settings to time (default: the profile's `distill.optim`).
    """
    stamps: list[float] = []

    def record_step(_step: int) -> bool:
        stamps.append(time.perf_counter())
        return False

    # Two steps before the timed ones (the first compiles the fused kernels, the second has no earlier stamp to time it
    # from) and one after: the trainer checkpoints at its last step before asking should_stop, so that step's time is
    # not a training step's.
    optim = (optim or distill.optim).model_copy(update={"max_steps": steps + 3, "checkpoint_every_steps": 10**9, "eval_every_steps": None})
    with tempfile.TemporaryDirectory(prefix="distill-speed-") as checkpoint_dir:
        train_recognition_model(make_student(), train_set, spec, distill.margin, optim, seed, Path(checkpoint_dir),
                                losses, teacher, description="speed", should_stop=record_step,
                                distributed=Distributed())  # one CPU process, also when the run is under torchrun
    step_seconds = np.diff(stamps)[1:-1]
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
    """The figures of the module docstring, the speed-up of the new settings, and how much longer an online step takes."""
    terms = embedding_terms(distill)
    embedding_dim = getattr(teacher, "embedding_dim", 512)
    stand_in = np.random.default_rng(seed).standard_normal((len(train_set.labels), 2, embedding_dim)).astype(np.float32)
    plain = distill.optim.model_copy(update={"augment": None})
    before = plain.model_copy(update={"channels_last": False, "fused_kernels": False})

    def timed(losses: list[WeightedLoss], teacher_signals: object | None, optim: OptimConfig) -> float:
        return _step_images_per_s(make_student, train_set, spec, distill, seed, steps, losses, teacher_signals, optim)[0]

    bf16 = teacher_runs_in_bf16(distill.teacher_precision, torch.device("cpu"))
    student_before = timed([], None, before)
    student_now = timed([], None, plain)
    fused_ran = plain.fused_kernels and not fused_kernels_failed()
    cached = timed(terms, TeacherSignals(stand_in), plain)
    online_fp32 = timed(terms, FrozenTeacher(teacher, bf16=False), plain)
    online = timed(terms, FrozenTeacher(teacher, bf16=bf16), plain) if bf16 else online_fp32
    online_augmented = timed(terms, FrozenTeacher(teacher, bf16=bf16), distill.optim) if distill.optim.augment is not None else None
    batch = min(distill.optim.batch_size, len(train_set.labels))
    teacher_forward = measure_latency(TorchRunner(teacher, spec, threads=torch.get_num_threads()), train_set.images, batch,
                                      warmup_runs=1, timed_runs=max(3, steps)).images_per_s
    result = {
        "batch_size": batch, "steps_timed": steps, "threads": torch.get_num_threads(), "losses": [t.name for t in terms],
        "cpu_features": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimdhp", "bf16", "sve"}),
        "settings_now": {"channels_last": plain.channels_last, "fused_kernels": plain.fused_kernels, "fused_kernels_ran": fused_ran,
                         "teacher_bf16": bf16, "native_bf16": has_native_bf16()},
        "student_alone_before_images_per_s": student_before,
        "student_alone_images_per_s": student_now,
        "student_speedup_vs_before": round(student_now / student_before, 2) if student_before else None,
        "distill_cached_teacher_images_per_s": cached,
        "distill_online_teacher_fp32_images_per_s": online_fp32,
        "distill_online_teacher_images_per_s": online,
        "distill_online_teacher_augmented_images_per_s": online_augmented,
        "teacher_forward_images_per_s": teacher_forward,
        "online_step_time_vs_student_alone": round(student_now / online, 2) if online else None,
    }
    log.info("distill speed: %s", result)
    return result
