"""EdgeFace (George et al., "EdgeFace: Efficient Face Recognition Model for Edge Devices", T-BIOM 2024) as a teacher.

Why: a teacher trained on 2 CPU cores in minutes cannot be a strong face model; a user brings a pretrained one.
EdgeFace is a real one with public weights (BSD-3-Clause): timm's EdgeNeXt (convolution blocks mixed with split
depth-wise transposed attention, a Transformer-family network) with a 512-d embedding head.

The authors' checkpoints hold the network as attribute `model` of a wrapper (keys `model.stem.0.weight`, ...), so
`EdgeFace` keeps that attribute name and their float state dicts load key for key. Their `_q` files have every
Linear dynamically quantised to int8; `pipeline.models.saved.load_external_weights` dequantises those entries into
float weights, so the teacher runs in float.

Feature distillation reads the four stages' spatial maps as token maps (B, h*w, C) under the taps `stages.0` to
`stages.3`, the interface a ViT teacher's patch tokens use (`blocks.i`).
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from pipeline.models.registry import register_model

EDGEFACE_VARIANTS = {"edgeface_xs": "edgenext_x_small", "edgeface_xxs": "edgenext_xx_small"}


class EdgeFace(nn.Module):
    """112x112 aligned face -> 512-d embedding; `forward_tokens` exposes every stage's map for distillation."""

    def __init__(self, timm_name: str, embedding_dim: int = 512, input_size: int = 112):
        super().__init__()
        self.model = timm.create_model(timm_name, pretrained=False)
        self.model.reset_classifier(embedding_dim)
        self.embedding_dim = embedding_dim
        self.input_size = input_size
        self._grids = self._probe_grids(input_size)

    @torch.no_grad()
    def _probe_grids(self, input_size: int) -> dict[str, tuple[int, int, int]]:
        was_training = self.training
        self.eval()
        try:
            _, per_stage = self.forward_tokens(torch.zeros(1, 3, input_size, input_size), as_maps=True)
        finally:
            self.train(was_training)
        return {f"stages.{i}": (m.shape[2], m.shape[3], m.shape[1]) for i, m in enumerate(per_stage)}

    def token_shapes(self) -> dict[str, tuple[int, int, int]]:
        """tap -> (grid_h, grid_w, channels) of each stage's output at this model's input size."""
        return dict(self._grids)

    def token_extent(self, tap: str) -> float:
        """Fraction of the face side a stage's grid covers: strided convolutions drop the odd last row (3x3 at stride 32
        of a 112 face covers 96 pixels)."""
        grid_h = self._grids[tap][0]
        stride = 4 * 2 ** int(tap.rsplit(".", 1)[1])
        return min(1.0, grid_h * stride / self.input_size)

    def forward_tokens(self, x: torch.Tensor, as_maps: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(embedding, the output of every stage) with stage outputs as (B, h*w, C) tokens, or (B, C, h, w) maps."""
        features = self.model.stem(x)
        per_stage = []
        for stage in self.model.stages:
            features = stage(features)
            per_stage.append(features)
        embedding = self.model.forward_head(self.model.norm_pre(features))
        if not as_maps:
            per_stage = [m.flatten(2).transpose(1, 2) for m in per_stage]
        return embedding, per_stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@register_model("edgeface_xs")
def edgeface_xs(embedding_dim: int = 512, input_size: int = 112) -> EdgeFace:
    """EdgeFace-XS: timm edgenext_x_small with a 512-d head, 2.24 M parameters."""
    return EdgeFace(EDGEFACE_VARIANTS["edgeface_xs"], embedding_dim, input_size)


@register_model("edgeface_xxs")
def edgeface_xxs(embedding_dim: int = 512, input_size: int = 112) -> EdgeFace:
    """EdgeFace-XXS: timm edgenext_xx_small with a 512-d head, 1.24 M parameters."""
    return EdgeFace(EDGEFACE_VARIANTS["edgeface_xxs"], embedding_dim, input_size)
