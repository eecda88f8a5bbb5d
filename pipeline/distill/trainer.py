"""One training loop for teacher and students: margin loss plus any pluggable distillation terms.

Checkpoints every N steps and at each epoch end; a rerun resumes from the last one and, because batches
derive from (seed, epoch) and RNG state is saved, reaches the same weights as an uninterrupted run. A checkpoint
whose tensors no longer match their recorded sha256 is discarded and the one before it resumed (`checkpoint.py`).

The teacher is cached signals (`TeacherSignals`: embeddings and patch tokens of every image and its mirror,
computed once), a frozen teacher run on each (augmented) batch (`FrozenTeacher`), or a live module trained alongside
the student (`apt.PromptedTeacher`): its trainable parts (prompts) join the optimiser and the checkpoint, and its own
loss joins the objective. Student feature maps that terms read are captured with forward hooks, removed again before
the function returns.

Speed and recipe settings live in `OptimConfig`: channels-last tensors, the compiled BatchNorm+PReLU kernel
(`models/fused_bn.py`), bf16 autocast where the device computes bf16 natively (losses in fp32; on CPU the
convolutions oneDNN is slow at in bf16 stay fp32, `models/cpu_autocast.py`), glibc keeping freed activation memory
(`host_memory.py`), online augmentation (`augment.py`, each face's view fixed by a seed its batch carries), a
moving average of the weights (timm's ModelEmaV3) saved as the trained model, and an evaluation every N steps that
records accuracy against training time.

Under torchrun (`distributed.py`) the step runs inside DistributedDataParallel on this rank's slice of the global
batch; only rank 0 writes checkpoints, and every rank resumes from them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function
from timm.utils.model_ema import ModelEmaV3
from tqdm import tqdm

from pipeline.config import MarginConfig, OptimConfig
from pipeline.cpu_features import native_bf16_on
from pipeline.data.arrays import FaceArrays
from pipeline.distill.batches import epoch_batches, images_to_tensor, steps_per_epoch
from pipeline.distill.checkpoint import resume_checkpoint, save_checkpoint
from pipeline.distill.distributed import Distributed, current, sync_batchnorms, unsync_batchnorms
from pipeline.distill.host_memory import keep_freed_memory
from pipeline.distill.losses import STUDENT_LOGITS, TEACHER_EMBEDDING, TEACHER_TOKENS, DistillInputs, DistillLoss
from pipeline.distill.teacher_signals import TeacherBatch, TeacherSignals
from pipeline.errors import PipelineError
from pipeline.models.fused_bn import set_fused_kernels
from pipeline.models.margin import CombinedMarginHead
from pipeline.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


class NonFiniteLossError(PipelineError):
    """The loss became NaN/inf; the last good checkpoint is kept on disk."""


class TrainingInterrupted(PipelineError):
    """Training stopped on request (signal or `should_stop`) after writing a checkpoint; rerun to resume."""


@dataclass
class WeightedLoss:
    name: str
    weight: float
    module: DistillLoss


# Profiler labels of a step's parts (benchmarks/step_profile.py reads them); free when no profiler runs.
STEP_REGIONS = {part: f"train.{part}" for part in ("data", "forward", "losses", "backward", "optimizer")}


@dataclass
class TrainResult:
    global_steps: int
    resumed_from_step: int
    wall_time_s: float
    images_per_s: float
    history: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)  # {"step", "images", "train_s", ...the evaluation's figures}
    median_step_s: float = 0.0  # this process's steps (warm-up, evaluations and checkpoints weigh nothing in it)
    precision: str = "fp32"  # "bf16" where the forward ran under bf16 autocast


def learning_rate(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to 1% of the base rate."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_recognition_model(
    backbone: nn.Module,
    train_set: FaceArrays,
    spec: PreprocessSpec,
    margin: MarginConfig,
    optim: OptimConfig,
    seed: int,
    checkpoint_dir: Path,
    distill_losses: list[WeightedLoss] | None = None,
    teacher: TeacherSignals | nn.Module | None = None,
    description: str = "train",
    should_stop: Callable[[int], bool] | None = None,
    distributed: Distributed | None = None,
    margin_weight: float = 1.0,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
) -> tuple[CombinedMarginHead, TrainResult]:
    """Train `backbone` (in place) with a margin head and optional distillation terms; return the head and stats.

    `teacher` is cached `TeacherSignals` or a live teacher module (see the module docstring) whose
    `signals(indices, flipped, images, labels, taps)` returns a `TeacherBatch`.
    `margin_weight` weighs the margin loss (0: distillation alone). Rows labelled -1 (unlabelled faces) are sampled
    only when a term reads the teacher, and the margin loss skips them.
    `should_stop(global_step)` is asked after every step; True writes a checkpoint and raises TrainingInterrupted.
    `evaluate(backbone)`, every `optim.eval_every_steps` steps and at the end, adds a point to the result's curve.
    `distributed` defaults to the process's torchrun context (`distributed.current()`); the model ends on the CPU.
    """
    ctx = distributed or current()
    if ctx.enabled and optim.batch_size % ctx.world_size:
        raise PipelineError(f"{description}: batch size {optim.batch_size} does not split over {ctx.world_size} ranks")
    if optim.sync_batchnorm and ctx.enabled:
        sync_batchnorms(backbone)
    distill_losses = distill_losses or []
    required = frozenset().union(*(term.module.requires for term in distill_losses))
    needs_teacher = bool(required & {TEACHER_EMBEDDING, TEACHER_TOKENS})
    if needs_teacher and teacher is None:
        raise PipelineError(f"{description}: a distillation loss needs teacher embeddings but none were given")
    live_teacher = teacher if isinstance(teacher, nn.Module) else None
    if optim.augment is not None and isinstance(teacher, TeacherSignals):
        raise PipelineError(f"{description}: cached teacher signals are of un-augmented faces; augmentation needs a live teacher")
    rows = usable_rows(train_set.labels, needs_teacher, description)
    device = ctx.device
    autocast_enabled = optim.mixed_precision and native_bf16_on(device.type)
    if device.type == "cpu" and optim.keep_freed_memory:
        keep_freed_memory()
    log.info("%s: %s training on %s", description, "bf16 autocast" if autocast_enabled else "fp32", device)
    student_taps = sorted({tap for term in distill_losses for tap in term.module.student_taps})
    teacher_taps = tuple(sorted({tap for term in distill_losses for tap in term.module.teacher_taps}))

    torch.manual_seed(seed)
    head = CombinedMarginHead(getattr(backbone, "embedding_dim", 512), max(1, train_set.num_identities), **margin.model_dump())
    modules = {"backbone": backbone, "head": head, "losses": nn.ModuleList([t.module for t in distill_losses])}
    if live_teacher is not None and any(p.requires_grad for p in live_teacher.parameters()):
        modules["teacher"] = live_teacher  # it trains (APT prompts): optimiser and checkpoint hold its state
    elif live_teacher is not None:
        live_teacher.to(device)
    memory_format = torch.channels_last if optim.channels_last else torch.contiguous_format
    for module in (backbone, live_teacher):
        if module is not None:
            module.to(memory_format=memory_format)
    if optim.ema_decay is not None:  # after the memory-format change, so the average is laid out like the backbone
        modules["ema"] = ModelEmaV3(backbone, decay=optim.ema_decay, use_warmup=True, warmup_power=3 / 4)
    trainable = nn.ModuleDict(modules).to(device)
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=optim.lr, weight_decay=optim.weight_decay)

    num_rows = len(train_set.labels) if rows is None else len(rows)
    per_epoch = steps_per_epoch(num_rows, optim.batch_size)
    total_steps = per_epoch * optim.epochs
    if optim.max_steps is not None:
        total_steps = min(total_steps, optim.max_steps)
    warmup_steps = max(1, int(optim.warmup_epochs * per_epoch))

    global_step = 0
    history: list[dict] = []
    curve: list[dict] = []
    trained_s = 0.0  # training time so far, resumed runs included, evaluations excluded
    step_seconds: list[float] = []
    ctx.barrier()  # rank 0 may still be writing the checkpoint every rank resumes from
    saved = resume_checkpoint(checkpoint_dir, discard_bad=ctx.is_main)  # a damaged one falls back to the one before
    if saved is not None:
        trainable.load_state_dict(saved["trainable"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        global_step, history = saved["global_step"], saved["history"]
        curve, trained_s = saved.get("curve", []), float(saved.get("trained_s", 0.0))
        log.info("%s: resumed from checkpoint at step %d/%d (%s)", description, global_step, total_steps, checkpoint_dir)
    resumed_from = global_step
    last_good_step = global_step if saved is not None else None  # the newest checkpoint on disk, all weights finite

    def last_good() -> str:
        if last_good_step is None:
            return f"no checkpoint written yet in {checkpoint_dir}"
        return f"last good checkpoint: step {last_good_step} in {checkpoint_dir}"

    def checkpoint() -> None:
        nonlocal last_good_step
        if not all(bool(torch.isfinite(p).all()) for p in trainable.parameters()):
            raise NonFiniteLossError(f"{description}: weights became non-finite at step {global_step}; {last_good()}")
        if ctx.is_main:  # DDP keeps every rank's weights equal; one writer
            save_checkpoint(checkpoint_dir, {
                "trainable": trainable.state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(), "global_step": global_step, "history": history, "running": running,
                "curve": curve, "trained_s": trained_s,
            })
        last_good_step = global_step

    captured: dict[str, torch.Tensor] = {}
    teacher_weight = float(getattr(live_teacher, "loss_weight", 1.0))

    def step_terms(batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch and its named terms (margin, each distillation term, the live teacher's own loss)."""
        with record_function(STEP_REGIONS["data"]):
            images = images_to_tensor(train_set.images[batch.indices], batch.flipped, spec, optim.augment, batch.augment_seeds,
                                      device).contiguous(memory_format=memory_format)
            labels = torch.from_numpy(train_set.labels[batch.indices].astype(np.int64)).to(device)
        captured.clear()
        with record_function(STEP_REGIONS["forward"]), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_enabled):
            embedding = backbone(images)  # losses below stay in fp32: margins and KD are precision-sensitive
        with record_function(STEP_REGIONS["losses"]):
            return _terms_of(images, labels, embedding.float(), batch)

    def _terms_of(images: torch.Tensor, labels: torch.Tensor, embedding: torch.Tensor, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {"margin": head.margin_loss(embedding, labels)} if margin_weight > 0 else {}
        if not distill_losses:
            return margin_weight * terms["margin"], terms
        signals = TeacherBatch()
        if needs_teacher or live_teacher is not None:
            signals = teacher.signals(batch.indices, batch.flipped, images, labels, teacher_taps).to(device)
        student_logits = head.cosine(embedding) * head.scale if STUDENT_LOGITS in required else None
        inputs = DistillInputs(embedding, labels, signals.embedding, student_logits=student_logits,
                               student_features={tap: value.float() for tap, value in captured.items()}, teacher_tokens=signals.tokens,
                               teacher_prompts=signals.prompts)
        for term in distill_losses:
            terms[term.name] = term.module(inputs)
        loss = sum(t.weight * terms[t.name] for t in distill_losses) + (margin_weight * terms["margin"] if terms.get("margin") is not None else 0.0)
        if signals.loss is not None:
            terms["teacher_margin"] = signals.loss
            loss = loss + teacher_weight * signals.loss
        return loss, terms

    hooks = capture_features(backbone, student_taps, captured, description)
    step_module = _Step(trainable, step_terms)
    if ctx.enabled:  # gradients averaged over ranks inside backward; parameters broadcast from rank 0 here
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # e.g. timm's unused class token; a loss term may skip a module
        )
    trainable.train()
    started = time.perf_counter()
    fused_before = set_fused_kernels(optim.fused_kernels)
    running: dict[str, float] = dict(saved.get("running", {})) if saved is not None else {}  # this epoch's loss sums so far
    try:
        with tqdm(total=total_steps, initial=global_step, desc=description, unit="step", dynamic_ncols=True,
                  disable=not ctx.is_main) as bar:
            while global_step < total_steps:
                epoch, step_in_epoch = divmod(global_step, per_epoch)
                for batch in epoch_batches(num_rows, optim.batch_size, seed, epoch, optim.hflip, step_in_epoch, rows):
                    if global_step >= total_steps:
                        break
                    step_started = time.perf_counter()
                    batch = local_batch(ctx, batch)
                    lr = learning_rate(global_step, total_steps, warmup_steps, optim.lr)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    loss, terms = step_module(batch)
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(
                            f"{description}: loss is {loss.item()} at step {global_step} (epoch {epoch}); "
                            f"{last_good()}"
                        )
                    with record_function(STEP_REGIONS["backward"]):
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                    with record_function(STEP_REGIONS["optimizer"]):
                        optimizer.step()
                        global_step += 1
                        if "ema" in trainable:
                            trainable["ema"].update(backbone, step=global_step)
                    step_seconds.append(time.perf_counter() - step_started)
                    trained_s += step_seconds[-1]
                    logged = {"loss": loss, **terms}
                    means = ctx.mean_over_ranks(torch.stack([value.detach().float() for value in logged.values()]))
                    for name, value in zip(logged, means.tolist()):
                        running[name] = running.get(name, 0.0) + value
                    running["steps"] = running.get("steps", 0) + 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.1e}")
                    if evaluate is not None and optim.eval_every_steps and (
                            global_step % optim.eval_every_steps == 0 or global_step == total_steps):
                        curve.append(curve_point(trained_weights(trainable), evaluate, global_step, optim.batch_size, trained_s, ctx))
                        log.info("%s step %d: %s", description, global_step,
                                 ", ".join(f"{k}={v}" for k, v in curve[-1].items() if k != "step"))
                    epoch_done = batch.step_in_epoch == per_epoch - 1 or global_step == total_steps
                    if epoch_done:
                        steps = running.pop("steps")
                        history.append({"epoch": epoch, "step": global_step, **{k: v / steps for k, v in running.items()}})
                        log.info("%s epoch %d: %s", description, epoch, ", ".join(f"{k}={v / steps:.4f}" for k, v in running.items()))
                        running = {}
                    if epoch_done or global_step % optim.checkpoint_every_steps == 0:
                        checkpoint()
                    stop = ctx.any_rank(should_stop is not None and should_stop(global_step))
                    if stop and global_step < total_steps:
                        checkpoint()
                        raise TrainingInterrupted(f"{description}: stopped at step {global_step}; checkpoint in {checkpoint_dir}")
    finally:
        set_fused_kernels(fused_before)
        for hook in hooks:
            hook.remove()
        captured.clear()
        trainable.cpu()
        backbone.to(memory_format=torch.contiguous_format)
        if live_teacher is not None:
            live_teacher.cpu().to(memory_format=torch.contiguous_format)
        if optim.sync_batchnorm and ctx.enabled:
            unsync_batchnorms(backbone)
    if "ema" in trainable:  # the average is the trained model
        backbone.load_state_dict(trainable["ema"].module.state_dict())
    wall = time.perf_counter() - started
    trained_images = (global_step - resumed_from) * min(optim.batch_size, num_rows)  # over all ranks
    backbone.eval()
    median_step_s = float(np.median(step_seconds)) if step_seconds else 0.0
    return head, TrainResult(global_step, resumed_from, wall, trained_images / wall if wall > 0 else 0.0, history, curve,
                             median_step_s, "bf16" if autocast_enabled else "fp32")


def trained_weights(trainable: nn.ModuleDict) -> nn.Module:
    """The network training produces: the weight average where one is kept (`optim.ema_decay`), else the backbone."""
    return trainable["ema"].module if "ema" in trainable else trainable["backbone"]


def usable_rows(labels: np.ndarray, needs_teacher: bool, description: str) -> np.ndarray | None:
    """The rows a training samples from: all of them (None) when a term reads the teacher or every row is labelled,
    else the labelled ones (a margin loss alone learns nothing from a face labelled -1)."""
    labelled = labels >= 0
    if needs_teacher or bool(labelled.all()):
        return None
    if not bool(labelled.any()):
        raise PipelineError(f"{description}: no training face has an identity label, and no distillation term reads a teacher")
    return np.flatnonzero(labelled)


def curve_point(backbone: nn.Module, evaluate: Callable[[nn.Module], dict[str, float]], step: int, batch_size: int,
                trained_s: float, ctx: Distributed) -> dict:
    """One point of the accuracy-against-training-time curve: the backbone evaluated in eval mode, on rank 0."""
    point: dict = {"step": step, "images": step * batch_size, "train_s": round(trained_s, 1)}
    if ctx.is_main:
        was_training = backbone.training
        backbone.eval()
        try:
            point.update(evaluate(backbone))
        finally:
            backbone.train(was_training)
    return point


class _Step(nn.Module):
    """One training step's forward as a module, so DistributedDataParallel wraps exactly what the loss touches."""

    def __init__(self, trainable: nn.ModuleDict, step: Callable):
        super().__init__()
        self.trainable = trainable
        self.step = step

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.step(batch)


def local_batch(ctx: Distributed, batch):
    """This rank's rows of a global batch (the whole batch in a single process)."""
    if not ctx.enabled:
        return batch
    return replace(batch, indices=ctx.local_rows(batch.indices), flipped=ctx.local_rows(batch.flipped))


def capture_features(model: nn.Module, taps: list[str], into: dict[str, torch.Tensor], description: str) -> list:
    """Forward hooks that store the output of each named module in `into`; the caller removes them."""
    named = dict(model.named_modules())
    missing = [tap for tap in taps if tap not in named]
    if missing:
        offered = list(getattr(model, "feature_stages", {})) or [name for name in named if name]
        raise PipelineError(f"{description}: the student has no module {missing[0]!r} to tap; feature taps: {', '.join(offered)}")

    def hook_for(tap: str):
        def store(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            into[tap] = output

        return store

    return [named[tap].register_forward_hook(hook_for(tap)) for tap in taps]
