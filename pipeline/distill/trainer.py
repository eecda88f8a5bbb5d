"""One training loop for teacher and students: margin loss plus any pluggable distillation terms.

Checkpoints every N steps and at each epoch end; a rerun resumes from the last one and, because batches
derive from (seed, epoch) and RNG state is saved, reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from deploy.preprocess import PreprocessSpec
from pipeline.config import MarginConfig, OptimConfig
from pipeline.data.arrays import FaceArrays
from pipeline.distill.batches import epoch_batches, images_to_tensor, steps_per_epoch
from pipeline.distill.checkpoint import load_checkpoint, save_checkpoint
from pipeline.distill.losses import DistillInputs, DistillLoss
from pipeline.errors import PipelineError
from pipeline.models.margin import CombinedMarginHead

log = logging.getLogger(__name__)


class NonFiniteLossError(PipelineError):
    """The loss became NaN/inf; the last good checkpoint is kept on disk."""


class TrainingInterrupted(PipelineError):
    """Training stopped on request (signal or `should_stop`) after writing a checkpoint; rerun to resume."""


@dataclass
class TeacherSignals:
    """Teacher outputs computed once per image (and its mirror), so distillation never reruns the teacher."""

    embeddings: np.ndarray  # (N, 2, D): [:, 0] original, [:, 1] horizontally flipped

    def embedding_for(self, indices: np.ndarray, flipped: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.embeddings[indices, flipped.astype(np.int64)]))


@dataclass
class WeightedLoss:
    name: str
    weight: float
    module: DistillLoss


@dataclass
class TrainResult:
    global_steps: int
    resumed_from_step: int
    wall_time_s: float
    images_per_s: float
    history: list[dict] = field(default_factory=list)


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
    teacher: TeacherSignals | None = None,
    description: str = "train",
    should_stop: Callable[[int], bool] | None = None,
) -> tuple[CombinedMarginHead, TrainResult]:
    """Train `backbone` (in place) with a margin head and optional distillation terms; return the head and stats.

    `should_stop(global_step)` is asked after every step; True writes a checkpoint and raises TrainingInterrupted.
    """
    distill_losses = distill_losses or []
    needs_teacher = any("teacher_embedding" in term.module.requires for term in distill_losses)
    if needs_teacher and teacher is None:
        raise PipelineError(f"{description}: a distillation loss needs teacher embeddings but none were given")

    torch.manual_seed(seed)
    head = CombinedMarginHead(getattr(backbone, "embedding_dim", 512), train_set.num_identities, **margin.model_dump())
    trainable = nn.ModuleDict({"backbone": backbone, "head": head, "losses": nn.ModuleList([t.module for t in distill_losses])})
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=optim.lr, weight_decay=optim.weight_decay)

    per_epoch = steps_per_epoch(len(train_set.labels), optim.batch_size)
    total_steps = per_epoch * optim.epochs
    if optim.max_steps is not None:
        total_steps = min(total_steps, optim.max_steps)
    warmup_steps = max(1, int(optim.warmup_epochs * per_epoch))

    global_step = 0
    history: list[dict] = []
    saved = load_checkpoint(checkpoint_dir)
    if saved is not None:
        trainable.load_state_dict(saved["trainable"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        global_step, history = saved["global_step"], saved["history"]
        log.info("%s: resumed from checkpoint at step %d/%d (%s)", description, global_step, total_steps, checkpoint_dir)
    resumed_from = global_step

    def checkpoint() -> None:
        save_checkpoint(checkpoint_dir, {
            "trainable": trainable.state_dict(), "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(), "global_step": global_step, "history": history,
        })

    trainable.train()
    started = time.perf_counter()
    running: dict[str, float] = {}
    with tqdm(total=total_steps, initial=global_step, desc=description, unit="step", dynamic_ncols=True) as bar:
        while global_step < total_steps:
            epoch, step_in_epoch = divmod(global_step, per_epoch)
            for batch in epoch_batches(len(train_set.labels), optim.batch_size, seed, epoch, optim.hflip, step_in_epoch):
                if global_step >= total_steps:
                    break
                lr = learning_rate(global_step, total_steps, warmup_steps, optim.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = images_to_tensor(train_set.images[batch.indices], batch.flipped, spec)
                labels = torch.from_numpy(train_set.labels[batch.indices].astype(np.int64))
                embedding = backbone(images)
                terms = {"margin": head.margin_loss(embedding, labels)}
                if distill_losses:
                    inputs = DistillInputs(embedding, labels, teacher.embedding_for(batch.indices, batch.flipped) if needs_teacher else None)
                    for term in distill_losses:
                        terms[term.name] = term.module(inputs)
                loss = terms["margin"] + sum(t.weight * terms[t.name] for t in distill_losses)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"{description}: loss is {loss.item()} at step {global_step} (epoch {epoch}); "
                        f"last good checkpoint kept in {checkpoint_dir}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                global_step += 1
                for name, value in {"loss": loss, **terms}.items():
                    running[name] = running.get(name, 0.0) + float(value.detach())
                running["steps"] = running.get("steps", 0) + 1
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.1e}")
                epoch_done = batch.step_in_epoch == per_epoch - 1 or global_step == total_steps
                if epoch_done:
                    steps = running.pop("steps")
                    history.append({"epoch": epoch, "step": global_step, **{k: v / steps for k, v in running.items()}})
                    log.info("%s epoch %d: %s", description, epoch, ", ".join(f"{k}={v / steps:.4f}" for k, v in running.items()))
                    running = {}
                if epoch_done or global_step % optim.checkpoint_every_steps == 0:
                    checkpoint()
                if should_stop is not None and should_stop(global_step) and global_step < total_steps:
                    checkpoint()
                    raise TrainingInterrupted(f"{description}: stopped at step {global_step}; checkpoint in {checkpoint_dir}")
    wall = time.perf_counter() - started
    trained_images = (global_step - resumed_from) * min(optim.batch_size, len(train_set.labels))
    backbone.eval()
    return head, TrainResult(global_step, resumed_from, wall, trained_images / wall if wall > 0 else 0.0, history)
