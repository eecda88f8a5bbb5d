"""Training speed through the one trainer: old settings against new, each change on its own, and what the teacher costs.

Each figure is training images/s from the median step of `train_recognition_model` (warm-up and checkpointing steps
left out), on the run's own training faces:
- student alone, a ladder from the trainer's old settings to the profile's, one change added per row: before (NCHW,
  ATen BatchNorm and PReLU, fp32, glibc's default allocation), + channels-last, + the compiled BatchNorm+PReLU kernels
  (`pipeline/models/fused_bn.py`), + bf16 autocast (only where the CPU has native bf16; the row says fp32 otherwise),
  + freed memory kept in the process (`pipeline/distill/host_memory.py`) = now. Every row of the ladder runs in a fresh
  process (spawned), because the allocator setting and compiled kernels are process-wide: a row measured after
  another would inherit them;
- the teacher's own training (margin loss, the teacher profile's optimiser), before (fp32, default allocation) and now
  (the profile's settings), also in fresh processes: the ViT trains in the default run when no pretrained one is given;
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
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.latency import measure_latency
from deploy.runners.torch_runner import TorchRunner
from pipeline.config import DistillConfig, MarginConfig, OptimConfig
from pipeline.cpu_features import cpu_flags, has_native_bf16, native_bf16_on
from pipeline.data.arrays import FaceArrays
from pipeline.distill.distributed import Distributed
from pipeline.distill.losses import TEACHER_EMBEDDING, create_loss
from pipeline.distill.teacher_signals import FrozenTeacher, TeacherSignals, teacher_runs_in_bf16
from pipeline.distill.trainer import WeightedLoss, train_recognition_model
from pipeline.errors import ConfigError
from pipeline.models.fused_bn import fused_kernels_failed
from pipeline.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

# The student ladder: (row, the settings this row turns on); each row keeps the ones above it.
STUDENT_LADDER = (
    ("before", {"channels_last": False, "fused_kernels": False, "mixed_precision": False, "keep_freed_memory": False}),
    ("channels_last", {"channels_last": True}),
    ("fused_kernels", {"fused_kernels": True}),
    ("bf16_autocast", {"mixed_precision": True}),
    ("keep_freed_memory", {"keep_freed_memory": True}),
)


def step_images_per_s(make_model: Callable[[], nn.Module], train_set: FaceArrays, spec: PreprocessSpec, margin: MarginConfig,
                      optim: OptimConfig, seed: int, steps: int, losses: Sequence[WeightedLoss] = (), teacher: object | None = None,
                      threads: int | None = None) -> tuple[float, int]:
    """(images/s from the median step time, steps timed) of `steps` training steps of a fresh model under `optim`.

    `teacher`: None, cached `TeacherSignals`, or anything with the trainer's `signals(...)` (a live teacher);
    `threads`: torch's intra-op threads for this call (a spawned process starts with its own default).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    stamps: list[float] = []

    def record_step(_step: int) -> bool:
        stamps.append(time.perf_counter())
        return False

    # Two steps before the timed ones (the first compiles the fused kernels, the second has no earlier stamp to time it
    # from) and one after: the trainer checkpoints at its last step before asking should_stop, so that step's time is
    # not a training step's. Enough epochs that the steps fit even when the faces make one or two batches.
    optim = optim.model_copy(update={"max_steps": steps + 3, "epochs": max(optim.epochs, steps + 3),
                                     "checkpoint_every_steps": 10**9, "eval_every_steps": None})
    with tempfile.TemporaryDirectory(prefix="distill-speed-") as checkpoint_dir:
        train_recognition_model(make_model(), train_set, spec, margin, optim, seed, Path(checkpoint_dir),
                                list(losses), teacher, description="speed", should_stop=record_step,
                                distributed=Distributed())  # one CPU process, also when the run is under torchrun
    step_seconds = np.diff(stamps)[1:-1]
    batch = min(optim.batch_size, len(train_set.labels))
    return round(batch / float(np.median(step_seconds)), 1), len(step_seconds)


def in_fresh_process(function: Callable, *args, **kwargs):
    """`function(*args, **kwargs)` in a newly spawned interpreter: nothing this process set (allocator, compiled
    kernels, thread pools) reaches it. The arguments and result must pickle."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


def student_ladder(make_student: Callable[[], nn.Module], train_set: FaceArrays, spec: PreprocessSpec, distill: DistillConfig,
                   seed: int, steps: int) -> list[dict]:
    """The STUDENT_LADDER rows, each timed in a fresh process: [{"row", "settings", "images_per_s"}]."""
    settings = distill.optim.model_copy(update={"augment": None})
    rows = []
    for row, change in STUDENT_LADDER:
        settings = settings.model_copy(update=change)
        images_per_s, _ = in_fresh_process(step_images_per_s, make_student, train_set, spec, distill.margin, settings, seed, steps,
                                           threads=torch.get_num_threads())
        rows.append({"row": row, "images_per_s": images_per_s, "settings": {key: getattr(settings, key) for key in STUDENT_LADDER[0][1]}})
    return rows


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
                          distill: DistillConfig, seed: int, steps: int,
                          teacher_training: tuple[Callable[[], nn.Module], MarginConfig, OptimConfig] | None = None) -> dict:
    """The figures of the module docstring, the speed-up of the new settings, and how much longer an online step takes.

    `make_student` (and `teacher_training`'s model factory) must pickle (a module-level function or a functools.partial):
    the ladder's rows run in spawned processes. `teacher_training`: (fresh teacher, its margin, its optimiser) to time
    the teacher's own training; None leaves those rows out.
    """
    terms = embedding_terms(distill)
    embedding_dim = getattr(teacher, "embedding_dim", 512)
    stand_in = np.random.default_rng(seed).standard_normal((len(train_set.labels), 2, embedding_dim)).astype(np.float32)
    plain = distill.optim.model_copy(update={"augment": None})
    threads = torch.get_num_threads()

    def timed(losses: list[WeightedLoss], teacher_signals: object | None, optim: OptimConfig) -> float:
        return step_images_per_s(make_student, train_set, spec, distill.margin, optim, seed, steps, losses, teacher_signals)[0]

    ladder = student_ladder(make_student, train_set, spec, distill, seed, steps)
    student_before, student_now = ladder[0]["images_per_s"], ladder[-1]["images_per_s"]
    bf16 = teacher_runs_in_bf16(distill.teacher_precision, torch.device("cpu"))
    cached = timed(terms, TeacherSignals(stand_in), plain)
    fused_ran = plain.fused_kernels and not fused_kernels_failed()
    online_fp32 = timed(terms, FrozenTeacher(teacher, bf16=False), plain)
    online = timed(terms, FrozenTeacher(teacher, bf16=bf16), plain) if bf16 else online_fp32
    online_augmented = timed(terms, FrozenTeacher(teacher, bf16=bf16), distill.optim) if distill.optim.augment is not None else None
    batch = min(distill.optim.batch_size, len(train_set.labels))
    teacher_forward = measure_latency(TorchRunner(teacher, spec, threads=threads), train_set.images, batch,
                                      warmup_runs=1, timed_runs=max(3, steps)).images_per_s
    teacher_rows = {}
    if teacher_training is not None:
        make_teacher, teacher_margin, teacher_optim = teacher_training
        old_teacher = teacher_optim.model_copy(update={"augment": None, **STUDENT_LADDER[0][1]})
        new_teacher = teacher_optim.model_copy(update={"augment": None})
        for key, optim in (("teacher_training_before_images_per_s", old_teacher), ("teacher_training_images_per_s", new_teacher)):
            teacher_rows[key] = in_fresh_process(step_images_per_s, make_teacher, train_set, spec, teacher_margin, optim, seed, steps,
                                                 threads=threads)[0]
        teacher_rows["teacher_training_speedup_vs_before"] = round(teacher_rows["teacher_training_images_per_s"]
                                                                   / teacher_rows["teacher_training_before_images_per_s"], 2)
    result = {
        "batch_size": batch, "steps_timed": steps, "threads": threads, "losses": [t.name for t in terms],
        "cpu_features": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimdhp", "bf16", "sve"}),
        "settings_now": {"channels_last": plain.channels_last, "fused_kernels": plain.fused_kernels, "fused_kernels_ran": fused_ran,
                         "bf16_autocast": plain.mixed_precision and native_bf16_on("cpu"), "keep_freed_memory": plain.keep_freed_memory,
                         "teacher_bf16": bf16, "native_bf16": has_native_bf16()},
        "student_ladder": ladder,
        "student_alone_before_images_per_s": student_before,
        "student_alone_images_per_s": student_now,
        "student_speedup_vs_before": round(student_now / student_before, 2) if student_before else None,
        "distill_cached_teacher_images_per_s": cached,
        "distill_online_teacher_fp32_images_per_s": online_fp32,
        "distill_online_teacher_images_per_s": online,
        "distill_online_teacher_augmented_images_per_s": online_augmented,
        "teacher_forward_images_per_s": teacher_forward,
        "online_step_time_vs_student_alone": round(student_now / online, 2) if online else None,
        **teacher_rows,
    }
    log.info("distill speed: %s", result)
    return result
