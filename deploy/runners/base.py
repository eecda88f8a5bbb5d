"""One runner interface for every backend (Polygraphy's idea): parity and benchmarks never ask which backend."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from tqdm import tqdm

from deploy.preprocess import PreprocessSpec, preprocess


class Runner(ABC):
    """Runs one exported model. Subclasses implement `infer` on an already preprocessed batch."""

    backend: str = "base"

    def __init__(self, spec: PreprocessSpec, precision: str = "fp32", threads: int = 1) -> None:
        self.spec = spec
        self.precision = precision
        self.threads = threads

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed float32 batch in the spec's layout -> (N, D) float32 embeddings (not normalised)."""

    def embed(self, images_rgb: np.ndarray, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB aligned faces -> (N, D) float32 embeddings, preprocessing as the spec says."""
        outputs = []
        starts = range(0, len(images_rgb), batch_size)
        for start in tqdm(starts, desc=f"embed {self.label}", disable=not progress, leave=False):
            batch = preprocess(images_rgb[start : start + batch_size], self.spec)
            outputs.append(np.asarray(self.infer(batch), dtype=np.float32).reshape(len(batch), -1))
        return np.concatenate(outputs, axis=0) if outputs else np.zeros((0, self.spec.embedding_dim), np.float32)

    def close(self) -> None:
        """Release backend resources (sessions, nets); safe to call twice."""
