"""The ViT teacher: a timm VisionTransformer sized for 112x112 aligned faces with a 512-d embedding head.

timm supplies the transformer (patch embedding, blocks, norms); this module only fixes the face-specific
choices: 112x112 input, no class token (tokens are averaged, as arcface_torch's ViTs keep every patch),
no classifier, and a Linear + BatchNorm embedding head like insightface's feature heads.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.models.registry import register_model


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
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        self.vit = VisionTransformer(
            img_size=input_size,
            patch_size=patch_size,
            embed_dim=width,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=0,
            class_token=False,
            global_pool="avg",
            drop_path_rate=drop_path_rate,
        )
        self.head = nn.Sequential(nn.Linear(width, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim))
        self.embedding_dim = embedding_dim
        self.grid_size = input_size // patch_size
        self.width = width

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> position-embedded patch tokens (B, N, C) ready for the first block."""
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))

    def head_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final-block tokens (B, N, C) -> embedding: norm, average the patch tokens, project."""
        return self.head(self.vit.norm(tokens).mean(dim=1))

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


@register_model("vit_face_tiny")
def vit_face_tiny(embedding_dim: int = 512, input_size: int = 112, patch_size: int = 16, depth: int = 6, **kwargs) -> FaceViT:
    """ViT-Tiny width (192, 3 heads); 6 blocks by default so it trains on 2 CPU cores."""
    return FaceViT(embedding_dim, input_size, patch_size, width=192, depth=depth, num_heads=3, **kwargs)


@register_model("vit_face_small")
def vit_face_small(embedding_dim: int = 512, input_size: int = 112, patch_size: int = 16, depth: int = 12, **kwargs) -> FaceViT:
    """ViT-Small width (384, 6 heads), for GPU profiles."""
    return FaceViT(embedding_dim, input_size, patch_size, width=384, depth=depth, num_heads=6, **kwargs)
