"""Small helpers several stages share: the preprocessing contract of a run, and loading the prepared data."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.artifacts import write_json_atomic
from pipeline.config import RunConfig
from pipeline.preprocess import PreprocessSpec


def run_preprocess_spec(config: RunConfig, embedding_dim: int = 512) -> PreprocessSpec:
    """Training and every runner normalise faces the same way: RGB, (pixel - 127.5) / 127.5, NCHW."""
    size = config.data.image_size
    return PreprocessSpec(height=size, width=size, embedding_dim=embedding_dim)


def write_json(folder: Path, name: str, payload: object) -> Path:
    return write_json_atomic(folder / name, payload)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
