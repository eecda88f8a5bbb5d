"""The ViT teacher: a timm VisionTransformer sized for 112x112 aligned faces with a 512-d embedding head.

timm supplies the transformer (patch embedding, blocks, norms); this module only fixes the face-specific
choices: 112x112 input, no class token (tokens are averaged, as arcface_torch's ViTs keep every patch),
no classifier, and a Linear + BatchNorm embedding head like insightface's feature heads.

`head_type="flatten"` is arcface_torch's own ViT head instead (final LayerNorm, every patch token flattened,
Linear + BN + Linear + BN), with their ReLU6 MLPs, bias-free qkv and patch 9 on 112x112 (the last 4 pixel rows and
columns fall outside the 12x12 patch grid): the `insightface_vit_*` models below, so a user's arcface_torch ViT
checkpoint (see `insightface_vit.py`) runs in this class unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.models.registry import register_model

_ACTIVATIONS = {"gelu": nn.GELU, "relu6": nn.ReLU6}


class FaceViT(nn.Module):
    """112x112 face -> embedding. `forward_tokens` exposes patch tokens after any block for distillation."""

    def __init__(
        self,
        embedding_dim: int = 512,
        input_size: int = 112,
        patch_size: int = 16,
        width: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        head_type: Literal["avg", "flatten"] = "avg",
        act_layer: Literal["gelu", "relu6"] = "gelu",
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        head_bn_eps: float = 1e-5,
        allow_partial_patches: bool = False,
    ):
        super().__init__()
        if input_size % patch_size and not allow_partial_patches:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if head_type not in ("avg", "flatten"):
            raise ValueError(f"head_type must be 'avg' or 'flatten', got {head_type!r}")
        if act_layer not in _ACTIVATIONS:
            raise ValueError(f"act_layer must be one of {sorted(_ACTIVATIONS)}, got {act_layer!r}")
        self.vit = VisionTransformer(
            img_size=input_size,
            patch_size=patch_size,
            embed_dim=width,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            num_classes=0,
            class_token=False,
            global_pool="avg" if head_type == "avg" else "",  # "" keeps timm's final norm in `vit.norm`
            drop_path_rate=drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=norm_eps),
            act_layer=_ACTIVATIONS[act_layer],
        )
        self.grid_size = input_size // patch_size
        if head_type == "avg":
            self.head = nn.Sequential(nn.Linear(width, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim, eps=head_bn_eps))
        else:
            self.head = nn.Sequential(  # applied to the flattened tokens; indices match arcface_torch's `feature`
                nn.Linear(width * self.grid_size * self.grid_size, width, bias=False),
                nn.BatchNorm1d(width, eps=head_bn_eps),
                nn.Linear(width, embedding_dim, bias=False),
                nn.BatchNorm1d(embedding_dim, eps=head_bn_eps),
            )
        self.head_type = head_type
        self.embedding_dim = embedding_dim
        self.width = width

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> position-embedded patch tokens (B, N, C) ready for the first block."""
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))

    def head_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final-block patch tokens (B, N, C) -> embedding: norm, then average and project ("avg") or flatten
        every token and project ("flatten", arcface_torch's head)."""
        normed = self.vit.norm(tokens)
        return self.head(normed.mean(dim=1) if self.head_type == "avg" else normed.flatten(1))

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return (embedding, tokens after every block) so distillers can tap any depth."""
        tokens = self.embed_patches(x)
        per_block: list[torch.Tensor] = []
        for block in self.vit.blocks:
            tokens = block(tokens)
            per_block.append(tokens)
        return self.head_from_tokens(tokens), per_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed_patches(x)
        return self.head_from_tokens(self.vit.blocks(tokens))


@register_model("vit_face_tiny", kwargs_to=FaceViT, sets=("width", "num_heads"))
def vit_face_tiny(embedding_dim: int = 512, input_size: int = 112, patch_size: int = 16, depth: int = 6, **kwargs) -> FaceViT:
    """ViT-Tiny width (192, 3 heads); 6 blocks by default so it trains on 2 CPU cores."""
    return FaceViT(embedding_dim, input_size, patch_size, width=192, depth=depth, num_heads=3, **kwargs)


@register_model("vit_face_small", kwargs_to=FaceViT, sets=("width", "num_heads"))
def vit_face_small(embedding_dim: int = 512, input_size: int = 112, patch_size: int = 16, depth: int = 12, **kwargs) -> FaceViT:
    """ViT-Small width (384, 6 heads), for GPU profiles."""
    return FaceViT(embedding_dim, input_size, patch_size, width=384, depth=depth, num_heads=6, **kwargs)


_INSIGHTFACE_SETS = ("input_size", "patch_size", "width", "depth", "num_heads", "head_type", "act_layer", "qkv_bias", "norm_eps",
                     "head_bn_eps", "allow_partial_patches")  # what `_insightface_vit` fixes


def _insightface_vit(width: int, depth: int, embedding_dim: int, **kwargs) -> FaceViT:
    """arcface_torch's `VisionTransformer` as their `get_model` builds it: 112x112, patch 9 (12x12 tokens), 8 heads,
    ReLU6 MLPs, qkv without bias, PyTorch's LayerNorm eps, and the flatten head with BatchNorm eps 2e-5."""
    return FaceViT(
        embedding_dim, input_size=112, patch_size=9, width=width, depth=depth, num_heads=8, head_type="flatten",
        act_layer="relu6", qkv_bias=False, norm_eps=1e-5, head_bn_eps=2e-5, allow_partial_patches=True, **kwargs,
    )


@register_model("insightface_vit_t", kwargs_to=FaceViT, sets=_INSIGHTFACE_SETS)
def insightface_vit_t(embedding_dim: int = 512, **kwargs) -> FaceViT:
    """arcface_torch `vit_t` (and `vit_t_dp005_mask0`): width 256, 12 blocks."""
    return _insightface_vit(256, 12, embedding_dim, **kwargs)


@register_model("insightface_vit_s", kwargs_to=FaceViT, sets=_INSIGHTFACE_SETS)
def insightface_vit_s(embedding_dim: int = 512, **kwargs) -> FaceViT:
    """arcface_torch `vit_s` (and `vit_s_dp005_mask_0`): width 512, 12 blocks."""
    return _insightface_vit(512, 12, embedding_dim, **kwargs)


@register_model("insightface_vit_b", kwargs_to=FaceViT, sets=_INSIGHTFACE_SETS)
def insightface_vit_b(embedding_dim: int = 512, **kwargs) -> FaceViT:
    """arcface_torch `vit_b` (and `vit_b_dp005_mask_005`): width 512, 24 blocks."""
    return _insightface_vit(512, 24, embedding_dim, **kwargs)
