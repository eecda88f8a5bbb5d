"""A distillation objective from config: loss terms sized to the student and teacher they connect.

Feature terms check their taps against both networks here, once, before any training step: a tap that does not
exist, or a URFM region that misses a feature grid, fails with the tap and the shapes named.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import DistillVariant
from pipeline.distill.losses import TEACHER_EMBEDDING, TEACHER_TOKENS, LossContext, create_loss
from pipeline.distill.trainer import WeightedLoss
from pipeline.errors import ConfigError
from pipeline.models.margin import CombinedMarginHead
from pipeline.models.vit_teacher import FaceViT


@torch.no_grad()
def student_feature_shapes(student: nn.Module, input_size: int) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every named feature stage of the student, probed with one eval-mode forward pass."""
    stages: dict[str, nn.Module] = getattr(student, "feature_stages", {})
    shapes: dict[str, tuple[int, int, int]] = {}
    hooks = [module.register_forward_hook(lambda m, i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))) for name, module in stages.items()]
    was_training = student.training
    try:
        student.eval()(torch.zeros(1, 3, input_size, input_size))
    finally:
        student.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes


def teacher_token_shapes(teacher: nn.Module | None) -> dict[str, tuple[int, int, int]]:
    """(grid_h, grid_w, C) of every token map a teacher exposes: a ViT's patch tokens after each block (`blocks.i`),
    EdgeFace's stage maps (`stages.i`); none for other teachers."""
    if isinstance(teacher, FaceViT):
        return {f"blocks.{i}": (teacher.grid_size, teacher.grid_size, teacher.width) for i in range(len(teacher.vit.blocks))}
    if hasattr(teacher, "token_shapes"):
        return teacher.token_shapes()
    return {}


def teacher_extents(teacher: nn.Module | None) -> dict[str, float]:
    """Per tap, the fraction of the face side the teacher's token grid covers (< 1 where the input is not a multiple of
    the patch or of the stride: arcface_torch's patch-9 ViT, EdgeFace's 3x3 last stage)."""
    if isinstance(teacher, FaceViT):
        embed = teacher.vit.patch_embed
        extent = teacher.grid_size * embed.patch_size[0] / embed.img_size[0]
        return {tap: extent for tap in teacher_token_shapes(teacher)}
    if hasattr(teacher, "token_extent"):
        return {tap: teacher.token_extent(tap) for tap in teacher_token_shapes(teacher)}
    return {}


def loss_context(student: nn.Module, input_size: int, teacher: nn.Module | None, teacher_head: CombinedMarginHead | None) -> LossContext:
    return LossContext(
        student_feature_shapes(student, input_size), teacher_token_shapes(teacher), teacher_head, teacher_extents(teacher),
        student_description=f"student {type(student).__name__}", teacher_description=f"teacher {type(teacher).__name__}",
    )


def build_losses(variant: DistillVariant, context: LossContext, seed: int) -> list[WeightedLoss]:
    """The variant's weighted terms; parameters of trainable terms (URFM mappers, projections) are seeded by `seed`."""
    torch.manual_seed(seed)
    losses = [WeightedLoss(term.name, term.weight, create_loss(term.name, context=context, **term.args)) for term in variant.losses]
    if variant.apt is not None and not any(reads_teacher(loss) for loss in losses):
        raise ConfigError("apt is set but no distillation loss reads the teacher: prompts learn through those terms")
    return losses


def reads_teacher(loss: WeightedLoss) -> bool:
    return bool(loss.module.requires & {TEACHER_EMBEDDING, TEACHER_TOKENS})


def teacher_taps(losses: list[WeightedLoss]) -> list[str]:
    return sorted({tap for loss in losses for tap in loss.module.teacher_taps})
