"""One runner interface for every backend (Polygraphy's idea): parity and benchmarks never ask which backend."""

from __future__ import annotations

import hashlib
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
        """(N, H, W, 3) uint8 RGB aligned faces -> (N, D) float32 embeddings, preprocessing as the spec says.

        A face that occurs several times is embedded once: a verification .bin stores both faces of every pair, so a
        face in k pairs is there k times (the default set: 6,000 rows, 800 faces)."""
        images_rgb = np.asarray(images_rgb)
        first, inverse = unique_rows(images_rgb)
        if len(first) == len(images_rgb):
            return self.embed_rows(images_rgb, batch_size, progress)
        return self.embed_rows(images_rgb[first], batch_size, progress)[inverse]

    def embed_rows(self, images_rgb: np.ndarray, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Every row embedded as given, `batch_size` faces per `infer` call."""
        outputs = []
        starts = range(0, len(images_rgb), batch_size)
        for start in tqdm(starts, desc=f"embed {self.label}", disable=not progress, leave=False):
            batch = preprocess(images_rgb[start : start + batch_size], self.spec)
            outputs.append(np.asarray(self.infer(batch), dtype=np.float32).reshape(len(batch), -1))
        return np.concatenate(outputs, axis=0) if outputs else np.zeros((0, self.spec.embedding_dim), np.float32)

    def close(self) -> None:
        """Release backend resources (sessions, nets); safe to call twice."""


def unique_rows(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of each distinct row's first occurrence, for every row the position of its row among them)."""
    positions: dict[bytes, int] = {}
    first, inverse = [], np.empty(len(images), dtype=np.int64)
    for index, row in enumerate(images):
        key = hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest()
        if key not in positions:
            positions[key] = len(first)
            first.append(index)
        inverse[index] = positions[key]
    return np.asarray(first, dtype=np.int64), inverse
