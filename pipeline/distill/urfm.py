"""URFM, Unified Receptive Fields Mapping, as published (Zhao et al., "Cross-Architecture Distillation for Face
Recognition", ACM MM 2024, section 3; read in ../shared/METHOD.md's last section). This project's earlier windowed
variant is `urfm_local`.

Why: a ViT token has a global receptive field, a CNN pixel a local one, so matching them position by position
(FitNet) asks the student for what it cannot see. URFM maps both networks' pixel features to the same L local
features, each gathered by one learnable query over *all* pixels of a network, and aligns those.

What is followed:
- L = grid^2 learnable queries, shared by the teacher's and the student's mapping, attend over all N_T teacher /
  N_S student pixel features (no window): e_lj = (q_l + b_lj)(f_j W_k)^T / sqrt(d). The paper's f_i W_q is a
  learnable query token times a learnable matrix; one learnable vector q_l is the same function class.
- b_lj = P[I(D(a_l, p_j))], P a bucket of learnable d-vectors, I iRPE's piecewise index, a_l the query's anchor (its
  cell on a grid x grid lattice over the face), p_j the pixel's face position, D = Euclidean + gamma * D_face (the
  facial-structure distance of `face_geometry.py`; its docstring says how the paper's figure-only definition was
  read). Prompt tokens (APT) have no face position: they share one extra bucket, as iRPE gives the class token one.
- Teacher pixel features are the tapped patch tokens joined with the prompt outputs of the same block when the
  teacher is prompted (APT): f = [x_K, p_K].
- L_attn = MSE(Attn_T, Attn_S) and L_feat = MSE(MSA(h_T), MSA(h_S)); the term is L_feat + attention_weight * L_attn.
- Taps at matching depth: by default the last spatial stage of the student and the teacher's last block / stage.

Choices made where the paper leaves room (each a guard against a shortcut, or a way to compare unequal grids):
- Attention maps are compared as densities over the face (attention x pixel count, 1 = uniform) on the student's
  grid: the teacher's map over its patch tokens is resampled bilinearly at the student's pixel centres (identity when
  the grids match). Attention on prompts has no student counterpart and is not compared.
- Values: the teacher's are its layer-normalised tokens (no parameters; a fixed random orthogonal projection when
  `dim` is narrower), the student's a bias-free linear map. MSA is a residual multi-head self-attention over the L
  local features, shared by both sides, with learnable query/key projections and identity values: h + A(h) h.
  A learnable value/output projection could map both sides to one constant; this one cannot.
- L_feat is divided by the teacher's own spread (variance of MSA(h_T) over batch and queries, mean over channels,
  without gradient): whatever the learnable parts do, a student output that is the same for every image and query
  scores L_feat >= 1, and only one that follows the teacher goes below.
- Training time only: the mappers live in the loss module, never in the exported student.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.distill.face_geometry import bucket_count, bucket_ids, grid_positions
from pipeline.distill.losses import STUDENT_FEATURES, TEACHER_TOKENS, DistillInputs, DistillLoss, LossContext, register_loss
from pipeline.distill.urfm_local import FixedProjection, checked_tap_sizes
from pipeline.errors import ConfigError

_SPREAD_FLOOR = 1e-6  # a teacher whose mapped features do not vary at all gives no target to standardise by


class FacialQueries(nn.Module):
    """The L learnable queries on a grid x grid lattice, and the bucket table P of the facial positional bias."""

    def __init__(self, grid: int, attn_dim: int, gamma: float, face_radius: float, irpe_alpha: float, irpe_beta: float, irpe_gamma: float):
        super().__init__()
        if grid < 1 or attn_dim < 1:
            raise ConfigError(f"urfm: grid and attn_dim must be >= 1, got {grid}, {attn_dim}")
        if gamma < 0 or face_radius <= 0:
            raise ConfigError(f"urfm: gamma must be >= 0 and face_radius > 0, got {gamma}, {face_radius}")
        self.grid, self.gamma, self.face_radius = grid, gamma, face_radius
        self.irpe = (irpe_alpha, irpe_beta, irpe_gamma)
        self.prompt_bucket = bucket_count(irpe_beta)  # the one bucket of every position-free (prompt) token
        self.queries = nn.Parameter(torch.empty(grid * grid, attn_dim))
        self.buckets = nn.Parameter(torch.empty(self.prompt_bucket + 1, attn_dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        nn.init.trunc_normal_(self.buckets, std=0.02)
        self.register_buffer("anchors", grid_positions(grid, grid), persistent=False)

    def bucket_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """(L, P) bucket index of each (query anchor, pixel) pair."""
        alpha, beta, irpe_gamma = self.irpe
        return bucket_ids(self.anchors, positions, self.gamma, alpha, beta, irpe_gamma, self.face_radius)

    def bias(self, bucket_index: torch.Tensor) -> torch.Tensor:
        """(L, P, d) b_lj = P[bucket]: pairs in one bucket get one bias."""
        return self.buckets[bucket_index]

    def logits(self, keys: torch.Tensor, bucket_index: torch.Tensor) -> torch.Tensor:
        """(B, L, P) e_lj = (q_l + b_lj) k_j / sqrt(d), without forming the (L, P, d) biases."""
        content = torch.einsum("ld,bpd->blp", self.queries, keys)
        per_bucket = torch.einsum("bpd,md->bpm", keys, self.buckets)  # k_j . P_m for every bucket m
        positional = per_bucket.gather(2, bucket_index.t().unsqueeze(0).expand(keys.shape[0], -1, -1)).transpose(1, 2)
        return (content + positional) / math.sqrt(self.queries.shape[1])


class PixelMapper(nn.Module):
    """One network's (B, N, C) pixel features (plus optional position-free prompt tokens) -> attention over them
    (B, L, N + t) and L local features (B, L, width)."""

    def __init__(self, queries: FacialQueries, in_channels: int, grid_hw: tuple[int, int], value: nn.Module, attn_dim: int, name: str,
                 extent: float = 1.0):
        super().__init__()
        self.key, self.value = nn.Linear(in_channels, attn_dim), value
        self.in_channels, self.grid_hw, self.extent, self.name = in_channels, grid_hw, extent, name
        self.register_buffer("positions", grid_positions(*grid_hw, extent), persistent=False)
        self.register_buffer("pixel_buckets", queries.bucket_ids(self.positions), persistent=False)

    def forward(self, features: torch.Tensor, queries: FacialQueries, prompts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        expected = (self.grid_hw[0] * self.grid_hw[1], self.in_channels)
        if features.dim() != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"urfm: {self.name} features are {tuple(features.shape)}, built for (B, {expected[0]}, {expected[1]})")
        buckets = self.pixel_buckets
        if prompts is not None:
            features = torch.cat([features, prompts], dim=1)
            prompt_buckets = torch.full((len(buckets), prompts.shape[1]), queries.prompt_bucket, dtype=buckets.dtype, device=buckets.device)
            buckets = torch.cat([buckets, prompt_buckets], dim=1)
        attention = queries.logits(self.key(features), buckets).softmax(dim=-1)
        return attention, attention @ self.value(features)


class ResidualSelfAttention(nn.Module):
    """MSA over the L local features: h + A(h) h per head, A from learnable query/key projections, values the
    features themselves (no value/output projection that could map every input to one constant)."""

    def __init__(self, width: int, attn_dim: int, num_heads: int):
        super().__init__()
        if num_heads < 1 or width % num_heads or attn_dim % num_heads:
            raise ConfigError(f"urfm: num_heads {num_heads} must divide both the mapped width {width} and attn_dim {attn_dim}")
        self.num_heads = num_heads
        self.query, self.key = nn.Linear(width, attn_dim), nn.Linear(width, attn_dim)

    def forward(self, local: torch.Tensor) -> torch.Tensor:
        batch, count, width = local.shape
        heads = self.num_heads
        q = self.query(local).reshape(batch, count, heads, -1).transpose(1, 2)
        k = self.key(local).reshape(batch, count, heads, -1).transpose(1, 2)
        v = local.reshape(batch, count, heads, width // heads).transpose(1, 2)
        mixed = F.scaled_dot_product_attention(q, k, v)
        return local + mixed.transpose(1, 2).reshape(batch, count, width)


@register_loss("urfm")
class URFMLoss(DistillLoss):
    """The published URFM term (module docstring): L_feat + attention_weight * L_attn.

    `student_shape` is the student tap's (C, H, W); `teacher_shape` the teacher tap's (grid_h, grid_w, C);
    `teacher_extent` the fraction of the face side the teacher's grid covers (see `grid_positions`).
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
        dim: int | None = None,
        num_heads: int = 4,
        gamma: float = 1.0,
        face_radius: float = 0.15,
        irpe_alpha: float = 3.8,
        irpe_beta: float = 7.6,
        irpe_gamma: float = 30.4,
        attention_weight: float = 1.0,
        teacher_extent: float = 1.0,
    ):
        super().__init__()
        (student_channels, student_h, student_w), (teacher_h, teacher_w, teacher_channels), width = checked_tap_sizes(
            "urfm", student_shape, teacher_shape, dim)
        if attention_weight < 0:
            raise ConfigError(f"urfm: attention_weight must be >= 0, got {attention_weight}")
        self.student_taps, self.teacher_taps = (student_tap,), (teacher_tap,)
        self.student_tap, self.teacher_tap = student_tap, teacher_tap
        self.attention_weight = float(attention_weight)
        self.queries = FacialQueries(grid, attn_dim, gamma, face_radius, irpe_alpha, irpe_beta, irpe_gamma)
        teacher_value = nn.Identity() if width == teacher_channels else FixedProjection(teacher_channels, width)
        self.teacher_map = PixelMapper(self.queries, teacher_channels, (teacher_h, teacher_w), teacher_value, attn_dim,
                                       f"teacher tap {teacher_tap!r}", teacher_extent)
        self.student_map = PixelMapper(self.queries, student_channels, (student_h, student_w),
                                       nn.Linear(student_channels, width, bias=False), attn_dim, f"student tap {student_tap!r}")
        self.self_attention = ResidualSelfAttention(width, attn_dim, num_heads)
        # where the student's pixel centres fall in the teacher's grid, in grid_sample's [-1, 1] (x, y) coordinates
        on_teacher = self.student_map.positions / teacher_extent * 2 - 1
        self.register_buffer("student_on_teacher", on_teacher[:, [1, 0]].view(1, 1, -1, 2), persistent=False)

    @classmethod
    def from_context(cls, context: LossContext, student_tap: str | None = None, teacher_tap: str | None = None, **args: Any) -> URFMLoss:
        """Taps default to matching depth: the student's last feature stage and the teacher's last token map."""
        student_tap = student_tap or last_tap(context.student_shapes, context.student_description, "feature")
        teacher_tap = teacher_tap or last_tap(context.teacher_shapes, context.teacher_description, "token")
        args.setdefault("teacher_extent", context.teacher_extent(teacher_tap))
        return cls(student_tap, teacher_tap, context.student_shape(student_tap), context.teacher_shape(teacher_tap), **args)

    def map_teacher(self, tokens: torch.Tensor, prompts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h*w, C) patch tokens and optional (B, t, C) prompt outputs -> (attention (B, L, h*w + t), h_T (B, L, width))."""
        normalise = lambda t: F.layer_norm(t, t.shape[-1:])  # noqa: E731
        return self.teacher_map(normalise(tokens), self.queries, None if prompts is None else normalise(prompts))

    def map_student(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) feature map -> (attention (B, L, H*W), h_S (B, L, width))."""
        if features.dim() != 4:
            raise ValueError(f"urfm: student features must be (B, C, H, W), got {tuple(features.shape)}")
        return self.student_map(features.flatten(2).transpose(1, 2), self.queries)

    def attention_loss(self, teacher_attention: torch.Tensor, student_attention: torch.Tensor) -> torch.Tensor:
        """MSE of the two attention maps as densities on the student's grid (prompt columns left out)."""
        batch, count, _ = student_attention.shape
        teacher_h, teacher_w = self.teacher_map.grid_hw
        patches = teacher_attention[..., : teacher_h * teacher_w] * (teacher_h * teacher_w)
        sample_at = self.student_on_teacher.expand(batch * count, -1, -1, -1)
        resampled = F.grid_sample(patches.reshape(batch * count, 1, teacher_h, teacher_w), sample_at, mode="bilinear",
                                  padding_mode="border", align_corners=False).view(batch, count, -1)
        return F.mse_loss(resampled, student_attention * student_attention.shape[-1])

    def feature_loss(self, teacher_local: torch.Tensor, student_local: torch.Tensor) -> torch.Tensor:
        """MSE(MSA(h_T), MSA(h_S)) relative to the teacher's spread over batch and queries (>= 1 for a constant student)."""
        teacher, student = self.self_attention(teacher_local), self.self_attention(student_local)
        spread = teacher.detach().flatten(0, 1).var(dim=0, unbiased=False).mean().clamp(min=_SPREAD_FLOOR)
        return F.mse_loss(student, teacher) / spread

    def terms(self, inputs: DistillInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_attn, L_feat) for one batch."""
        teacher_attention, teacher_local = self.map_teacher(inputs.teacher_tokens[self.teacher_tap], inputs.teacher_prompts.get(self.teacher_tap))
        student_attention, student_local = self.map_student(inputs.student_features[self.student_tap])
        return self.attention_loss(teacher_attention, student_attention), self.feature_loss(teacher_local, student_local)

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        attention, feature = self.terms(inputs)
        return feature + self.attention_weight * attention


def last_tap(shapes: dict[str, tuple[int, int, int]], description: str, kind: str) -> str:
    """The deepest tap of a network (taps are listed shallow to deep)."""
    if not shapes:
        raise ConfigError(f"urfm: {description} has no {kind} taps to map")
    return list(shapes)[-1]
