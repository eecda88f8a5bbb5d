"""APT, the Adaptable Prompting Teacher (Zhao et al., "Cross-Architecture Distillation for Face Recognition", ACM MM 2024).

Why: a teacher trained only for recognition was never trained to teach. APT inserts learnable prompt tokens into
the frozen ViT teacher and trains them together with the student, so the teacher can adapt what it shows the
student.

What is followed (the paper, as ../shared/METHOD.md's last section reads it):
- Every teacher weight is frozen; only the prompts train, in the same optimiser step as the student, by the
  distillation terms (whose gradients reach the prompts through the teacher). One joint stage, no prompt warm-up.
- Prompts at every block (VPT-deep, Jia et al. 2022): `num_prompts` fresh tokens joined to the token sequence at the
  input of each block, replacing the previous block's prompt outputs: [x_{i+1}, p'_{i+1}] = B_i([x_i, p_i]).
  `blocks` may name fewer blocks (an ablation; [0] is VPT-shallow); unlisted blocks carry the prompts through.
  Initialisation is VPT's uniform(-v, v), v = sqrt(6 / (3 * patch^2 + width)).
- The teacher features URFM maps are a tapped block's patch tokens *and* its prompt outputs, f = [x_K, p_K]: the
  prompts go to the terms as `DistillInputs.teacher_prompts`; terms that compare positions (FitNet, `urfm_local`)
  read only the patch tokens. The teacher's embedding (its head) is computed from the patch tokens.
- The paper's teacher is a Swin, where patch merging drops the prompts; in a plain ViT there is no merging, so the
  prompts simply ride along every block.

This project's addition, reported as such: `loss_weight` x the prompted teacher's own margin loss (with its frozen
margin head from the teacher stage), so prompts cannot trade recognition away for easy-to-copy features. The paper
credits the frozen backbone alone; `loss_weight` 0 is the paper's setting and needs no margin head.

APT needs a token sequence: the EdgeFace teacher (convolution stages) has none, and a config asking for both is refused.

Training time only: the prompted teacher lives in the training checkpoint, never in the exported student.
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
    """A frozen `FaceViT` (and its frozen margin head, when its margin loss is kept) with learnable prompts at every
    block; a live teacher for the trainer."""

    def __init__(
        self,
        teacher: FaceViT,
        head: CombinedMarginHead | None,
        num_prompts: int = 4,
        blocks: list[int] | None = None,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        if not isinstance(teacher, FaceViT):
            raise ConfigError(apt_teacher_problem(type(teacher).__name__))
        if head is None and loss_weight > 0:
            raise ConfigError("APT's teacher margin loss (teacher_margin_weight > 0) needs the teacher's margin head "
                              "(teacher_head.safetensors from a trained teacher stage); set apt.teacher_margin_weight 0 without one")
        depth = len(teacher.vit.blocks)
        blocks = list(range(depth)) if blocks is None else sorted(blocks)
        if not blocks or min(blocks) < 0 or max(blocks) >= depth:
            raise ConfigError(f"APT: prompt blocks {blocks} are not blocks of the teacher (0 .. {depth - 1})")
        if num_prompts < 1:
            raise ConfigError(f"APT: num_prompts must be >= 1, got {num_prompts}")
        self.teacher = teacher.requires_grad_(False).eval()
        self.head = None if head is None else head.requires_grad_(False)
        self.slot_of_block = {block: slot for slot, block in enumerate(blocks)}
        self.num_prompts, self.loss_weight = num_prompts, loss_weight
        patch = teacher.vit.patch_embed.patch_size[0]
        bound = math.sqrt(6.0 / (3 * patch * patch + teacher.width))
        self.prompts = nn.Parameter(torch.empty(len(blocks), num_prompts, teacher.width).uniform_(-bound, bound))

    def train(self, mode: bool = True) -> PromptedTeacher:
        """Only the prompts train: the frozen teacher (its BatchNorm statistics included) always runs in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if self.head is not None:
            self.head.eval()
        return self

    def forward(self, images: torch.Tensor, taps: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Prompted teacher -> (embedding, {"blocks.i": (B, h*w, C) patch tokens after block i},
        {"blocks.i": (B, num_prompts, C) prompt outputs of block i})."""
        tokens = self.teacher.embed_patches(images)
        num_patches = tokens.shape[1]
        tapped: dict[str, torch.Tensor] = {}
        prompt_outputs: dict[str, torch.Tensor] = {}
        for index, block in enumerate(self.teacher.vit.blocks):
            slot = self.slot_of_block.get(index)
            if slot is not None:
                prompts = self.prompts[slot].unsqueeze(0).expand(tokens.shape[0], -1, -1)
                tokens = torch.cat([prompts, tokens[:, -num_patches:]], dim=1)
            tokens = block(tokens)
            if f"blocks.{index}" in taps:
                tapped[f"blocks.{index}"] = tokens[:, -num_patches:]
                if tokens.shape[1] > num_patches:  # none before the first prompted block
                    prompt_outputs[f"blocks.{index}"] = tokens[:, :-num_patches]
        missing = set(taps) - set(tapped)
        if missing:
            raise ConfigError(f"APT: the teacher has no token tap {sorted(missing)[0]!r}; taps: blocks.0 .. blocks.{len(self.teacher.vit.blocks) - 1}")
        return self.teacher.head_from_tokens(tokens[:, -num_patches:]), tapped, prompt_outputs

    def signals(self, indices: np.ndarray, flipped: np.ndarray, images: torch.Tensor, labels: torch.Tensor, taps: tuple[str, ...]) -> TeacherBatch:
        """The trainer's live-teacher hook: prompted embedding, patch tokens and prompt outputs, and the teacher's
        margin loss when it is kept."""
        embedding, tokens, prompts = self(images, taps)
        margin = self.head.margin_loss(embedding, labels) if self.head is not None and self.loss_weight > 0 else None
        return TeacherBatch(embedding, tokens, margin, prompts)


def apt_teacher_problem(teacher: str) -> str:
    """The one-line refusal of APT for a teacher without a token sequence."""
    return (f"APT does not apply to the teacher {teacher}: it inserts prompt tokens into a ViT's token sequence, and this "
            "teacher has none (EdgeFace's stages are convolutional maps); use URFM on its stage maps without apt, or a ViT teacher")
