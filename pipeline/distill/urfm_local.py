"""`urfm_local`: this project's first, windowed reading of URFM (Zhao et al., "Cross-Architecture Distillation for Face
Recognition", ACM MM 2024); the published method is `urfm` (`urfm.py`).

Kept under its own name so the ablation can compare the two: it differs from the paper in that each centre sees only
a hard window of pixels, the positional encoding is a learned map added to queries and keys, there is no
attention-map loss and no self-attention over the mapped features, and prompt outputs are not mapped.

Why: a ViT token at patch (i, j) has a global receptive field after self-attention, while a CNN pixel at (i, j)
sees a local window, so matching them position by position (FitNet) asks the student for information it cannot
see. URFM maps both networks' pixel features into K *local features with the same receptive field on the face*
and aligns those instead.

What is followed (the paper, as ../shared/METHOD.md reads it):
- K learnable local centres (queries) laid on a g x g grid over the aligned face, each with a facial positional
  encoding (FPE); every centre gathers, by attention, the features of its own face region, separately from the
  teacher's patch tokens and from the student's feature-map pixels. The centres and the FPE are shared by both
  mappings, so centre k describes the same face region in both networks whatever their grids are.
- The teacher's and the student's mapped features are aligned by a distance loss: MSE of L2-normalised local
  features (= 2 - 2 cos), averaged over centres.
- Training time only: the mappers live in the loss module, never in the exported student.

Choices made here where the paper or METHOD.md leaves room (each stated so it can be changed knowingly):
- FPE: one learnable map over the face (`encoding_resolution`^2 cells) sampled bilinearly at any position, so a
  7x7 token grid, a 12x12 one and a 14x14 CNN map all read the same encoding for the same face point. Keys are
  projected pixel features plus the FPE at the pixel; queries are the centre's embedding plus the FPE at the centre.
- Receptive field: each centre attends only to pixels whose centre lies in a square window of side `region`
  (fraction of the face side, default 2/g) around it; construction fails if a centre's window holds no pixel.
- Values: the teacher side's values are its (layer-normalised, parameter-free) patch tokens and the student
  side's are a learned linear map into the teacher's width. Learnable value maps on *both* sides could make the
  loss zero by mapping both to a constant; keeping the teacher's values fixed rules that collapse out. With
  `dim` smaller than the teacher's width, the teacher's tokens go through a fixed random orthogonal projection.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.distill.face_geometry import grid_positions
from pipeline.distill.losses import STUDENT_FEATURES, TEACHER_TOKENS, DistillInputs, DistillLoss, LossContext, register_loss, unit_distance
from pipeline.errors import ConfigError

_EDGE = 1e-6  # a pixel exactly on a window's edge belongs to it


class LocalCentres(nn.Module):
    """The K = grid^2 local centres (learnable queries) and the facial positional encoding both networks share."""

    def __init__(self, grid: int, attn_dim: int, region: float, encoding_resolution: int = 14):
        super().__init__()
        if grid < 1 or attn_dim < 1 or encoding_resolution < 1:
            raise ConfigError(f"urfm_local: grid, attn_dim and encoding_resolution must be >= 1, got {grid}, {attn_dim}, {encoding_resolution}")
        if not 0 < region <= 1:
            raise ConfigError(f"urfm_local: region is a fraction of the face side in (0, 1], got {region}")
        self.grid, self.region = grid, region
        self.queries = nn.Parameter(torch.empty(grid * grid, attn_dim))
        self.face_encoding = nn.Parameter(torch.empty(1, attn_dim, encoding_resolution, encoding_resolution))
        nn.init.trunc_normal_(self.queries, std=0.02)
        nn.init.trunc_normal_(self.face_encoding, std=0.02)
        self.register_buffer("positions", grid_positions(grid, grid), persistent=False)

    def encode(self, positions: torch.Tensor) -> torch.Tensor:
        """FPE at (P, 2) face positions -> (P, attn_dim), bilinear between the encoding's cells."""
        sample_at = (positions[:, [1, 0]] * 2 - 1).view(1, 1, -1, 2)  # grid_sample wants (x, y) in [-1, 1]
        encoded = F.grid_sample(self.face_encoding, sample_at, mode="bilinear", padding_mode="border", align_corners=False)
        return encoded[0, :, 0].transpose(0, 1)

    def region_mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(K, P) True where pixel p lies in centre k's window."""
        offsets = (self.positions[:, None, :] - positions[None, :, :]).abs()
        return (offsets <= self.region / 2 + _EDGE).all(dim=2)

    def query_vectors(self) -> torch.Tensor:
        return self.queries + self.encode(self.positions)


class ReceptiveFieldMapper(nn.Module):
    """One network's (B, P, C) pixel features on an (h, w) grid -> (B, K, width) local features, one per centre."""

    def __init__(self, centres: LocalCentres, in_channels: int, grid_hw: tuple[int, int], value: nn.Module, attn_dim: int, name: str,
                 extent: float = 1.0):
        super().__init__()
        height, width = grid_hw
        positions = grid_positions(height, width, extent)
        mask = centres.region_mask(positions)
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ConfigError(
                f"urfm_local: {name}'s {height}x{width} map has no pixel inside the region of local centre(s) {empty[:5]} "
                f"(region {centres.region:.3f} of the face side, {centres.grid}x{centres.grid} centres); use a larger region or fewer centres"
            )
        self.key = nn.Linear(in_channels, attn_dim)
        self.value = value
        self.in_channels, self.grid_hw, self.name = in_channels, (height, width), name
        self.register_buffer("positions", positions, persistent=False)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, features: torch.Tensor, centres: LocalCentres) -> torch.Tensor:
        expected = (self.grid_hw[0] * self.grid_hw[1], self.in_channels)
        if features.dim() != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"urfm_local: {self.name} features are {tuple(features.shape)}, built for (B, {expected[0]}, {expected[1]})")
        keys = self.key(features) + centres.encode(self.positions)
        queries = centres.query_vectors()
        scores = torch.einsum("kd,bpd->bkp", queries, keys) / math.sqrt(queries.shape[1])
        weights = scores.masked_fill(~self.mask, float("-inf")).softmax(dim=-1)
        return weights @ self.value(features)


class FixedProjection(nn.Module):
    """A random orthogonal projection kept fixed (a buffer): narrows the teacher's tokens without being trainable."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.register_buffer("weight", nn.init.orthogonal_(torch.empty(out_channels, in_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def checked_tap_sizes(loss: str, student_shape: tuple[int, int, int], teacher_shape: tuple[int, int, int],
                      dim: int | None) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    """The student tap's (C, H, W), the teacher tap's (H, W, C) and the mapped width (`dim`, default the teacher's),
    checked, so that a URFM term sized wrongly is a one-line config error naming the loss."""
    for label, shape in (("student_shape", student_shape), ("teacher_shape", teacher_shape)):
        if len(shape) != 3 or min(int(v) for v in shape) < 1:
            raise ConfigError(f"{loss}: {label} must be three positive sizes, got {tuple(shape)}")
    student = tuple(int(v) for v in student_shape)
    teacher = tuple(int(v) for v in teacher_shape)
    width = teacher[2] if dim is None else int(dim)
    if not 1 <= width <= teacher[2]:
        raise ConfigError(f"{loss}: dim must be between 1 and the teacher's width {teacher[2]}, got {dim}")
    return student, teacher, width  # type: ignore[return-value]


@register_loss("urfm_local")
class LocalURFMLoss(DistillLoss):
    """Align the teacher's and the student's local features of unified receptive fields (see the module docstring).

    `student_shape` is the student tap's (C, H, W); `teacher_shape` the teacher tap's (grid_h, grid_w, C);
    `teacher_extent` the fraction of the face side the teacher's patch grid covers (see `grid_positions`).
    """

    requires = frozenset({TEACHER_TOKENS, STUDENT_FEATURES})
    context_args = ("student_shape", "teacher_shape")

    def __init__(
        self,
        student_tap: str,
        teacher_tap: str,
        student_shape: tuple[int, int, int],
        teacher_shape: tuple[int, int, int],
        grid: int = 7,
        attn_dim: int = 64,
        region: float | None = None,
        dim: int | None = None,
        encoding_resolution: int = 14,
        teacher_extent: float = 1.0,
    ):
        super().__init__()
        (student_channels, student_h, student_w), (teacher_h, teacher_w, teacher_channels), width = checked_tap_sizes(
            "urfm_local", student_shape, teacher_shape, dim)
        self.student_taps, self.teacher_taps = (student_tap,), (teacher_tap,)
        self.student_tap, self.teacher_tap = student_tap, teacher_tap
        self.centres = LocalCentres(grid, attn_dim, 2.0 / grid if region is None else float(region), encoding_resolution)
        teacher_value = nn.Identity() if width == teacher_channels else FixedProjection(teacher_channels, width)
        self.teacher_map = ReceptiveFieldMapper(
            self.centres, teacher_channels, (teacher_h, teacher_w), teacher_value, attn_dim, f"teacher tap {teacher_tap!r}", teacher_extent
        )
        self.student_map = ReceptiveFieldMapper(
            self.centres, student_channels, (student_h, student_w), nn.Linear(student_channels, width), attn_dim, f"student tap {student_tap!r}"
        )

    @classmethod
    def from_context(cls, context: LossContext, student_tap: str = "stages.2", teacher_tap: str = "blocks.5", **args: Any) -> LocalURFMLoss:
        args.setdefault("teacher_extent", context.teacher_extent(teacher_tap))
        return cls(student_tap, teacher_tap, context.student_shape(student_tap), context.teacher_shape(teacher_tap), **args)

    def map_teacher(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h*w, C) patch tokens -> (B, K, width) local features."""
        return self.teacher_map(F.layer_norm(tokens, tokens.shape[-1:]), self.centres)

    def map_student(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) feature map -> (B, K, width) local features."""
        if features.dim() != 4:
            raise ValueError(f"urfm_local: student features must be (B, C, H, W), got {tuple(features.shape)}")
        return self.student_map(features.flatten(2).transpose(1, 2), self.centres)

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        student = self.map_student(inputs.student_features[self.student_tap])
        teacher = self.map_teacher(inputs.teacher_tokens[self.teacher_tap])
        return unit_distance(student, teacher)
