"""Margin-based classification heads for face recognition training (ArcFace / CosFace family).

Training-time only: the deployed model is the backbone; its embedding is compared by cosine similarity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CombinedMarginHead(nn.Module):
    """logits = s * (cos(m1*theta + m2) - m3) on the target class, s * cos(theta) elsewhere (insightface form)."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 32.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.scale, self.m1, self.m2, self.m3 = scale, m1, m2, m3

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine between each embedding and each class centre: the margin-free logits / scale."""
        return F.linear(F.normalize(embeddings), F.normalize(self.weight))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = self.cosine(embeddings).clamp(-1 + 1e-7, 1 - 1e-7)
        target_cos = cosine.gather(1, labels[:, None])
        theta = torch.acos(target_cos)
        shifted = torch.cos(self.m1 * theta + self.m2) - self.m3
        # Where theta + m2 would pass pi the margin stops being monotone; fall back to CosFace-style (insightface's easy fix).
        limit = math.pi - self.m2
        shifted = torch.where(theta * self.m1 <= limit, shifted, target_cos - self.m3 - math.sin(self.m2) * self.m2)
        logits = cosine.scatter(1, labels[:, None], shifted)
        return logits * self.scale

    def margin_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the margin logits over the labelled rows; rows labelled -1 (unlabelled faces) are skipped."""
        labelled = labels >= 0
        if not bool(labelled.all()):
            if not bool(labelled.any()):
                return embeddings.sum() * 0.0  # keeps the graph (and DDP's view of the head) without a gradient
            embeddings, labels = embeddings[labelled], labels[labelled]
        return F.cross_entropy(self.forward(embeddings, labels), labels)
