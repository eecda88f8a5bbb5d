"""The preprocessing contract that travels with every exported model (timm's pretrained_cfg idea).

Deployment accuracy drops most often because a runtime normalised differently from training; so the spec
is written beside each model, and every runner reads it instead of assuming.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw aligned face pixels become the model's input tensor: (pixel - mean) / std per channel."""

    color_order: str = "RGB"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    height: int = 112
    width: int = 112
    layout: str = "NCHW"
    input_name: str = "input"
    output_name: str = "embedding"
    embedding_dim: int = 512
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> "PreprocessSpec":
        return cls.from_dict(json.loads(Path(path).read_text())["preprocess"])


def preprocess(images_rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB faces -> float32 tensor in the spec's colour order, normalisation and layout."""
    if images_rgb.ndim != 4 or images_rgb.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got {images_rgb.shape}")
    if images_rgb.shape[1:3] != (spec.height, spec.width):
        raise ValueError(
            f"images are {images_rgb.shape[1]}x{images_rgb.shape[2]}, the model expects {spec.height}x{spec.width}"
        )
    pixels = images_rgb if spec.color_order == "RGB" else images_rgb[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    tensor = (pixels.astype(np.float32) - mean) / std
    if spec.layout == "NCHW":
        tensor = tensor.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(tensor, dtype=np.float32)
