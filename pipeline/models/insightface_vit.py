"""insightface arcface_torch ViT checkpoints -> the project's `FaceViT` teacher, key by key, every shape checked.

Why: users hold ViT teachers trained on WebFace42M / Glint360K with insightface's `recognition/arcface_torch`;
mapping their backbone weights onto the `insightface_vit_*` models (same architecture on timm, see
`vit_teacher.py`) lets the pipeline use such a teacher as is, with no retraining and no insightface install.

Accepted files (loaded with `torch.load(weights_only=True)` or safetensors, never a bare pickle): the `model.pt`
their training writes (the backbone's state_dict), a `checkpoint_gpu_N.pt` (its `state_dict_backbone`), either
with DDP's `module.` prefix. Their names (backbones/vit.py) -> ours:

    patch_embed.proj.{weight,bias}                               -> vit.patch_embed.proj.*
    pos_embed (1, 144, C), no class token                        -> vit.pos_embed
    blocks.i.{norm1, attn.qkv (no bias), attn.proj, norm2,
              mlp.fc1, mlp.fc2}.*                                -> vit.blocks.i.* (timm uses the same names)
    norm.*                                                       -> vit.norm.*
    feature.{0,1,2,3}.* (Linear, BN, Linear, BN)                 -> head.{0,1,2,3}.*
    mask_token                                                   -> dropped: only random token masking in training uses it
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from pipeline.distill.checkpoint import load_module_weights
from pipeline.errors import ConfigError, DataError
from pipeline.models.registry import create_model
from pipeline.models.saved import load_external_weights
from pipeline.models.vit_teacher import FaceViT

# arcface_torch `get_model` names (their WebFace42M aliases differ only in training-time dropout/masking) -> ours.
INSIGHTFACE_VIT_VARIANTS: dict[str, str] = {
    "vit_t": "insightface_vit_t", "vit_t_dp005_mask0": "insightface_vit_t",
    "vit_s": "insightface_vit_s", "vit_s_dp005_mask_0": "insightface_vit_s",
    "vit_b": "insightface_vit_b", "vit_b_dp005_mask_005": "insightface_vit_b",
}
INSIGHTFACE_VIT_MODELS: tuple[str, ...] = tuple(sorted(set(INSIGHTFACE_VIT_VARIANTS.values())))
_SHAPES_OF_MODEL = {(256, 12): "insightface_vit_t", (512, 12): "insightface_vit_s", (512, 24): "insightface_vit_b"}
_TRAINING_ONLY_KEYS = frozenset({"mask_token"})
_DDP_PREFIX = "module."


def insightface_model_name(variant: str) -> str:
    """An arcface_torch name (`vit_t`, `vit_s_dp005_mask_0`, ...) or one of ours -> the registered model name."""
    if variant in INSIGHTFACE_VIT_MODELS:
        return variant
    if variant in INSIGHTFACE_VIT_VARIANTS:
        return INSIGHTFACE_VIT_VARIANTS[variant]
    known = ", ".join([*INSIGHTFACE_VIT_VARIANTS, *INSIGHTFACE_VIT_MODELS])
    raise ConfigError(f"unknown arcface_torch ViT variant {variant!r}; known: {known}")


def map_insightface_vit_keys(state: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """Rename an arcface_torch ViT state_dict to `FaceViT` names (see the module docstring); shapes are untouched."""
    if state and all(key.startswith(_DDP_PREFIX) for key in state):
        state = {key[len(_DDP_PREFIX):]: value for key, value in state.items()}
    if any(re.fullmatch(r"blocks\.\d+\.norm1\.bn\..+", key) for key in state):
        raise DataError(source, "arcface_torch ViT with norm_layer='bn' (BatchNorm over tokens) is not supported; "
                                "only the LayerNorm ViTs (vit_t/vit_s/vit_b) are")
    if "pos_embed" not in state or "feature.0.weight" not in state:
        raise DataError(source, "not an arcface_torch ViT checkpoint (no pos_embed / feature.0.weight; "
                                f"keys start {', '.join(list(state)[:3])})")
    mapped = {}
    for key, value in state.items():
        if key in _TRAINING_ONLY_KEYS:
            continue
        mapped["head." + key[len("feature."):] if key.startswith("feature.") else "vit." + key] = value
    return mapped


def describe_insightface_vit(state: dict[str, torch.Tensor]) -> str:
    """What an arcface_torch ViT state_dict holds, in words: width, depth, feature size and the matching model."""
    state = {key.removeprefix(_DDP_PREFIX): value for key, value in state.items()}
    width = int(state["pos_embed"].shape[-1]) if "pos_embed" in state else None
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    features = int(state["feature.3.weight"].shape[0]) if "feature.3.weight" in state else None
    model = _SHAPES_OF_MODEL.get((width, depth), "no registered insightface_vit_* model")
    return f"width {width}, {depth} blocks, {features}-d features ({model})"


def load_insightface_weights(model: FaceViT, path: str | Path) -> FaceViT:
    """Load an arcface_torch ViT checkpoint into `model` (an `insightface_vit_*` FaceViT) in place; returns it in eval mode."""
    path = Path(path)
    if not isinstance(model, FaceViT) or model.head_type != "flatten":
        raise ConfigError(f"{path}: an arcface_torch ViT checkpoint needs teacher.model one of {', '.join(INSIGHTFACE_VIT_MODELS)}")
    state = load_external_weights(path)
    mapped = map_insightface_vit_keys(state, path)
    try:
        load_module_weights(model, mapped, path)
    except DataError as exc:
        raise DataError(path, f"{exc.problem}; the checkpoint holds {describe_insightface_vit(state)}") from None
    return model.eval()


def load_insightface_vit(path: str | Path, variant: str = "vit_t", **model_args: Any) -> FaceViT:
    """Build the `FaceViT` of an arcface_torch ViT variant and load its checkpoint; e.g. `load_insightface_vit("model.pt", "vit_s")`.

    `model_args` go to the model builder (e.g. `embedding_dim=256` for a teacher trained with num_features 256).
    """
    model = create_model(insightface_model_name(variant), **model_args)
    return load_insightface_weights(model, path)
