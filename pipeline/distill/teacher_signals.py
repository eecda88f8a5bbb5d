"""What a distilling teacher hands the trainer each step: cached signals of a frozen teacher, or a live teacher.

`TeacherSignals` holds a frozen teacher's outputs for every training image and its mirror, computed once
(`stages.student_stages.teacher_signals`), for training without augmentation. `FrozenTeacher` runs the frozen
teacher on the very batch the student sees, for training with online augmentation. Both answer
`signals(indices, flipped, images, labels, taps)` with a `TeacherBatch`, as the prompted teacher (`apt.py`) does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError, PipelineError


def tap_index(tap: str) -> int:
    """"blocks.3" / "stages.3" -> 3: the position of a tapped block or stage in a teacher's `forward_tokens` list."""
    return int(tap.rsplit(".", 1)[1])


@dataclass
class TeacherBatch:
    """The teacher's signals for one batch; `loss` is the teacher's own training loss when it trains (APT)."""

    embedding: torch.Tensor | None = None
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # tap -> (B, h*w, C) patch tokens
    loss: torch.Tensor | None = None
    prompts: dict[str, torch.Tensor] = field(default_factory=dict)  # tap -> (B, t, C) prompt outputs (APT)

    def to(self, device: torch.device) -> TeacherBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TeacherBatch(move(self.embedding), {tap: t.to(device) for tap, t in self.tokens.items()}, move(self.loss),
                            {tap: t.to(device) for tap, t in self.prompts.items()})


@dataclass
class TeacherSignals:
    """Teacher outputs computed once per image (and its mirror), so distillation never reruns the teacher."""

    embeddings: np.ndarray  # (N, 2, D): [:, 0] original, [:, 1] horizontally flipped
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # tap -> (N, 2, h*w, C), usually fp16 memory-mapped

    def embedding_for(self, indices: np.ndarray, flipped: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.embeddings[indices, flipped.astype(np.int64)]))

    def tokens_for(self, tap: str, indices: np.ndarray, flipped: np.ndarray) -> torch.Tensor:
        if tap not in self.tokens:
            raise PipelineError(f"teacher tokens at {tap!r} were not cached; cached taps: {', '.join(self.tokens) or 'none'}")
        return torch.from_numpy(np.asarray(self.tokens[tap][indices, flipped.astype(np.int64)], dtype=np.float32))

    def signals(self, indices: np.ndarray, flipped: np.ndarray, images: torch.Tensor, labels: torch.Tensor, taps: tuple[str, ...]) -> TeacherBatch:
        return TeacherBatch(self.embedding_for(indices, flipped), {tap: self.tokens_for(tap, indices, flipped) for tap in taps})


class FrozenTeacher(nn.Module):
    """A frozen teacher run on each training batch (the augmented view the student sees), without gradients.

    It holds no trainable parameters, so it never joins the optimiser or the training checkpoint, and it stays in
    eval mode whatever mode the trainer sets.
    """

    def __init__(self, teacher: nn.Module, bf16: bool = False):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.bf16 = bf16  # forward under bf16 autocast; its outputs come back as fp32

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    @torch.no_grad()
    def signals(self, indices: np.ndarray, flipped: np.ndarray, images: torch.Tensor, labels: torch.Tensor, taps: tuple[str, ...]) -> TeacherBatch:
        if taps and not hasattr(self.teacher, "forward_tokens"):
            raise ConfigError(f"feature distillation taps teacher tokens, but the teacher {type(self.teacher).__name__} has no forward_tokens")
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if not taps:
                return TeacherBatch(self.teacher(images).float())
            embedding, per_block = self.teacher.forward_tokens(images)
        return TeacherBatch(embedding.float(), {tap: per_block[tap_index(tap)].float() for tap in taps})


def teacher_runs_in_bf16(precision: str, device: torch.device) -> bool:
    """The `distill.teacher_precision` setting resolved for this device (see its description in the config)."""
    if precision != "auto":
        return precision == "bf16"
    from pipeline.cpu_features import native_bf16_on

    return native_bf16_on(device.type)
