"""APT, the Adaptable Prompting Teacher (Zhao et al., "Cross-Architecture Distillation for Face Recognition", ACM MM 2024).

Why: a teacher trained only for recognition was never trained to teach. APT inserts learnable prompt tokens into
the frozen ViT teacher and trains them together with the student, so the teacher can adapt what it shows the
student, while the teacher's own margin loss on its prompted output keeps it discriminative (prompts cannot trade
recognition away for easy-to-copy features).

What is followed (the paper, as ../shared/METHOD.md reads it):
- Every teacher weight is frozen, its margin head (class centres from the teacher stage) included; only the
  prompts train, in the same optimiser step as the student, by the distillation terms (whose gradients reach the
  prompts through the teacher) plus `loss_weight` x the prompted teacher's margin loss. One joint stage: METHOD.md
  names no prompt warm-up, so none is done.
- Prompts are visual-prompt-tuning tokens (Jia et al., VPT, 2022): `num_prompts` tokens concatenated to the token
  sequence at the input of each block in `blocks`. As in VPT-deep, a block's fresh prompts replace the previous
  block's prompt outputs; blocks not listed carry the prompts through. Prompts are dropped before the teacher's
  head (average of patch tokens) and from every tapped token map, so URFM/FitNet only ever see patch tokens.
  Initialisation is VPT's uniform(-v, v), v = sqrt(6 / (3 * patch^2 + width)).
- Training time only: the prompted teacher lives in the training checkpoint, never in the exported student.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pipeline.distill.teacher_signals import TeacherBatch
from pipeline.errors import ConfigError
from pipeline.models.margin import CombinedMarginHead
from pipeline.models.vit_teacher import FaceViT


class PromptedTeacher(nn.Module):
    """A frozen `FaceViT` and its frozen margin head, with learnable prompts; a live teacher for the trainer."""

    def __init__(
        self,
        teacher: FaceViT,
        head: CombinedMarginHead,
        num_prompts: int = 4,
        blocks: list[int] | None = None,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        if not isinstance(teacher, FaceViT):
            raise ConfigError(f"APT needs a ViT teacher (FaceViT) to insert prompts into, got {type(teacher).__name__}")
        depth = len(teacher.vit.blocks)
        blocks = list(range(depth)) if blocks is None else sorted(blocks)
        if not blocks or min(blocks) < 0 or max(blocks) >= depth:
            raise ConfigError(f"APT: prompt blocks {blocks} are not blocks of the teacher (0 .. {depth - 1})")
        if num_prompts < 1:
            raise ConfigError(f"APT: num_prompts must be >= 1, got {num_prompts}")
        self.teacher = teacher.requires_grad_(False).eval()
        self.head = head.requires_grad_(False)
        self.slot_of_block = {block: slot for slot, block in enumerate(blocks)}
        self.num_prompts, self.loss_weight = num_prompts, loss_weight
        patch = teacher.vit.patch_embed.patch_size[0]
        bound = math.sqrt(6.0 / (3 * patch * patch + teacher.width))
        self.prompts = nn.Parameter(torch.empty(len(blocks), num_prompts, teacher.width).uniform_(-bound, bound))

    def train(self, mode: bool = True) -> PromptedTeacher:
        """Only the prompts train: the frozen teacher (its BatchNorm statistics included) always runs in eval mode."""
        super().train(mode)
        self.teacher.eval()
        self.head.eval()
        return self

    def forward(self, images: torch.Tensor, taps: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Prompted teacher -> (embedding, {"blocks.i": (B, h*w, C) patch tokens after block i})."""
        tokens = self.teacher.embed_patches(images)
        num_patches = tokens.shape[1]
        tapped: dict[str, torch.Tensor] = {}
        for index, block in enumerate(self.teacher.vit.blocks):
            slot = self.slot_of_block.get(index)
            if slot is not None:
                prompts = self.prompts[slot].unsqueeze(0).expand(tokens.shape[0], -1, -1)
                tokens = torch.cat([prompts, tokens[:, -num_patches:]], dim=1)
            tokens = block(tokens)
            if f"blocks.{index}" in taps:
                tapped[f"blocks.{index}"] = tokens[:, -num_patches:]
        missing = set(taps) - set(tapped)
        if missing:
            raise ConfigError(f"APT: the teacher has no token tap {sorted(missing)[0]!r}; taps: blocks.0 .. blocks.{len(self.teacher.vit.blocks) - 1}")
        return self.teacher.head_from_tokens(tokens[:, -num_patches:]), tapped

    def signals(self, indices: np.ndarray, flipped: np.ndarray, images: torch.Tensor, labels: torch.Tensor, taps: tuple[str, ...]) -> TeacherBatch:
        """The trainer's live-teacher hook: prompted embedding and tokens, and the teacher's margin loss on them."""
        embedding, tokens = self(images, taps)
        return TeacherBatch(embedding, tokens, self.head.margin_loss(embedding, labels))
