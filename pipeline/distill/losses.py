"""Pluggable distillation terms. The trainer computes what a term `requires` and adds weight * term.

A new method (URFM, APT, logit KD, FitNet) is a new registered module; the training loop does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError


@dataclass
class DistillInputs:
    """What one training step offers the distillation terms."""

    student_embedding: torch.Tensor
    labels: torch.Tensor
    teacher_embedding: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class DistillLoss(nn.Module):
    """A distillation term. `requires` names the teacher signals it reads (e.g. "teacher_embedding")."""

    requires: frozenset[str] = frozenset()

    def forward(self, inputs: DistillInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


_LOSSES: dict[str, Callable[..., DistillLoss]] = {}


def register_loss(name: str) -> Callable[[type[DistillLoss]], type[DistillLoss]]:
    def decorate(cls: type[DistillLoss]) -> type[DistillLoss]:
        _LOSSES[name] = cls
        return cls

    return decorate


def create_loss(name: str, **kwargs) -> DistillLoss:
    if name not in _LOSSES:
        raise ConfigError(f"unknown distillation loss {name!r}; registered: {', '.join(sorted(_LOSSES))}")
    try:
        return _LOSSES[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"distillation loss {name!r}: {exc}") from None


@register_loss("embedding_kd")
class EmbeddingKD(DistillLoss):
    """Pull the student's normalised embedding onto the teacher's: 1 - cosine (or MSE of unit vectors).

    Both embeddings are 512-d unit vectors compared by cosine at test time, so matching directions is the
    most direct way to hand the teacher's metric space to the student.
    """

    requires = frozenset({"teacher_embedding"})

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
