"""Pluggable distillation terms. The trainer computes what a term `requires` and adds weight * term.

A new method (URFM, APT, logit KD, FitNet) is a new registered module; the training loop does not change.
Terms that must size themselves to the two networks (feature KD, URFM) or read the teacher's margin head
(logit KD) are built from a `LossContext` through `create_loss(name, context=..., **args)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.margin import CombinedMarginHead

# Signals a term may require; the trainer computes each only when some term asks for it.
TEACHER_EMBEDDING = "teacher_embedding"
TEACHER_TOKENS = "teacher_tokens"
STUDENT_FEATURES = "student_features"
STUDENT_LOGITS = "student_logits"


@dataclass
class DistillInputs:
    """What one training step offers the distillation terms."""

    student_embedding: torch.Tensor
    labels: torch.Tensor
    teacher_embedding: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    student_logits: torch.Tensor | None = None  # (B, classes): scale * cos(embedding, class centre), no margin
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)  # tap -> (B, C, H, W)
    teacher_tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # tap -> (B, h*w, C) patch tokens
    teacher_prompts: dict[str, torch.Tensor] = field(default_factory=dict)  # tap -> (B, t, C) prompt outputs (APT)


class DistillLoss(nn.Module):
    """A distillation term. `requires` names the signals it reads; `*_taps` the feature maps it reads."""

    requires: frozenset[str] = frozenset()
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()
    context_args: tuple[str, ...] = ()  # constructor arguments `from_context` fills from the networks, not from config

    @classmethod
    def from_context(cls, context: LossContext, **args: Any) -> DistillLoss:
        """Build the term for these two networks; terms that need shapes or the teacher head override this."""
        return cls(**args)

    def forward(self, inputs: DistillInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class LossContext:
    """What a term may size itself to: tapped feature shapes of both networks, and the teacher's margin head."""

    student_shapes: dict[str, tuple[int, int, int]]  # tap -> (C, H, W)
    teacher_shapes: dict[str, tuple[int, int, int]]  # tap -> (grid_h, grid_w, C)
    teacher_head: CombinedMarginHead | None = None
    teacher_extents: dict[str, float] = field(default_factory=dict)  # tap -> fraction of the face side its grid covers
    student_description: str = "student"
    teacher_description: str = "teacher"

    def student_shape(self, tap: str) -> tuple[int, int, int]:
        if tap not in self.student_shapes:
            raise ConfigError(f"{self.student_description} has no feature tap {tap!r}; taps: {', '.join(self.student_shapes)}")
        return self.student_shapes[tap]

    def teacher_extent(self, tap: str) -> float:
        return self.teacher_extents.get(tap, 1.0)

    def teacher_shape(self, tap: str) -> tuple[int, int, int]:
        if tap not in self.teacher_shapes:
            raise ConfigError(f"{self.teacher_description} has no token tap {tap!r}; taps: {', '.join(self.teacher_shapes) or 'none'}")
        return self.teacher_shapes[tap]


_LOSSES: dict[str, type[DistillLoss]] = {}


def register_loss(name: str) -> Callable[[type[DistillLoss]], type[DistillLoss]]:
    def decorate(cls: type[DistillLoss]) -> type[DistillLoss]:
        _LOSSES[name] = cls
        return cls

    return decorate


def create_loss(name: str, context: LossContext | None = None, **kwargs) -> DistillLoss:
    """A registered term by name; with `context` it sizes itself to the networks (see `DistillLoss.from_context`)."""
    _import_builtin_losses()
    if name not in _LOSSES:
        raise ConfigError(f"unknown distillation loss {name!r}; registered: {', '.join(sorted(_LOSSES))}")
    try:
        if context is None:
            return _LOSSES[name](**kwargs)
        return _LOSSES[name].from_context(context, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"distillation loss {name!r}: {exc}") from None


def loss_arguments(name: str) -> list[str] | None:
    """The `args` a profile may give loss `name`, or None when that cannot be told (a **kwargs going on to one)."""
    from pipeline.models.registry import accepted_keywords

    _import_builtin_losses()
    loss = _LOSSES[name]
    return accepted_keywords(loss.from_context, loss, set_on_the_way=loss.context_args, not_given=("context",))


def loss_argument_problem(name: str, args: dict[str, Any]) -> tuple[str | None, str] | None:
    """(the offending argument, or None for the name itself; a one-line problem) for a loss and its `args`."""
    from pipeline.models.registry import unknown_argument

    _import_builtin_losses()
    if name not in _LOSSES:
        return None, f"unknown distillation loss {name!r}; registered: {', '.join(sorted(_LOSSES))}"
    return unknown_argument(f"loss {name}", args, loss_arguments(name))


def _import_builtin_losses() -> None:
    # Imported for their @register_loss side effect.
    from pipeline.distill import urfm, urfm_local  # noqa: F401


def unit_distance(student: torch.Tensor, teacher: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean squared distance of L2-normalised vectors along `dim` (= 2 - 2 cos): scale-free feature matching."""
    return (F.normalize(student, dim=dim) - F.normalize(teacher, dim=dim)).pow(2).sum(dim=dim).mean()


@register_loss("embedding_kd")
class EmbeddingKD(DistillLoss):
    """Pull the student's normalised embedding onto the teacher's: 1 - cosine (or MSE of unit vectors).

    Both embeddings are 512-d unit vectors compared by cosine at test time, so matching directions is the
    most direct way to hand the teacher's metric space to the student.
    """

    requires = frozenset({TEACHER_EMBEDDING})

    def __init__(self, distance: str = "cosine"):
        super().__init__()
        if distance not in {"cosine", "mse"}:
            raise ConfigError(f"embedding_kd: distance must be 'cosine' or 'mse', got {distance!r}")
        self.distance = distance

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        student = F.normalize(inputs.student_embedding, dim=1)
        teacher = F.normalize(inputs.teacher_embedding, dim=1)
        if self.distance == "cosine":
            return (1 - (student * teacher).sum(dim=1)).mean()
        return F.mse_loss(student, teacher, reduction="none").sum(dim=1).mean()


@register_loss("logit_kd")
class LogitKD(DistillLoss):
    """Hinton et al. (2015) on the margin heads' logits: KL(teacher || student) of temperature-softened softmaxes, x T^2.

    Teacher logits are scale * cos(teacher embedding, teacher class centre) from the teacher stage's frozen margin
    head; student logits the same from the student's own head, both without the margin (the margin is a training
    device of the target class, not part of the class posterior being transferred).
    """

    requires = frozenset({TEACHER_EMBEDDING, STUDENT_LOGITS})
    context_args = ("teacher_head",)

    def __init__(self, teacher_head: CombinedMarginHead, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"logit_kd: temperature must be > 0, got {temperature}")
        self.teacher_head = teacher_head.requires_grad_(False)
        self.temperature = temperature

    @classmethod
    def from_context(cls, context: LossContext, **args: Any) -> LogitKD:
        if context.teacher_head is None:
            raise ConfigError("logit_kd needs the teacher's margin head (teacher_head.safetensors from a trained teacher stage)")
        return cls(context.teacher_head, **args)

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        if inputs.student_logits.shape != (len(inputs.labels), self.teacher_head.weight.shape[0]):
            raise ConfigError(f"logit_kd: student has {inputs.student_logits.shape[1]} classes, teacher head {self.teacher_head.weight.shape[0]}")
        t = self.temperature
        teacher_logits = self.teacher_head.cosine(inputs.teacher_embedding) * self.teacher_head.scale
        teacher_probs = F.softmax(teacher_logits / t, dim=1)
        student_log_probs = F.log_softmax(inputs.student_logits / t, dim=1)
        return F.kl_div(student_log_probs, teacher_probs, reduction="batchmean") * t * t


@register_loss("fitnet")
class FitNetKD(DistillLoss):
    """FitNet-style feature KD (Romero et al. 2015) that ignores receptive fields: the baseline URFM improves on.

    The teacher's patch tokens at `teacher_tap` are laid out as their (h, w) map; the student's map at
    `student_tap` is projected by a 1x1 conv to the teacher's width, average-pooled to the teacher's grid, and
    matched position by position. Both sides are compared as unit vectors per position (as URFM's mapped features
    are), so the ablation isolates the receptive-field mapping, not the distance.
    """

    requires = frozenset({TEACHER_TOKENS, STUDENT_FEATURES})
    context_args = ("student_shape", "teacher_shape")

    def __init__(self, student_tap: str, teacher_tap: str, student_shape: tuple[int, int, int], teacher_shape: tuple[int, int, int]):
        super().__init__()
        self.student_taps, self.teacher_taps = (student_tap,), (teacher_tap,)
        self.student_tap, self.teacher_tap = student_tap, teacher_tap
        self.grid = (int(teacher_shape[0]), int(teacher_shape[1]))
        self.project = nn.Conv2d(int(student_shape[0]), int(teacher_shape[2]), 1)

    @classmethod
    def from_context(cls, context: LossContext, student_tap: str = "stages.2", teacher_tap: str = "blocks.5", **args: Any) -> FitNetKD:
        return cls(student_tap, teacher_tap, context.student_shape(student_tap), context.teacher_shape(teacher_tap), **args)

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        student = F.adaptive_avg_pool2d(self.project(inputs.student_features[self.student_tap]), self.grid)
        tokens = inputs.teacher_tokens[self.teacher_tap]
        teacher = F.layer_norm(tokens, tokens.shape[-1:]).transpose(1, 2).reshape(student.shape)
        return unit_distance(student, teacher, dim=1)
