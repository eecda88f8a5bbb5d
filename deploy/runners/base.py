"""One runner interface for every backend (Polygraphy's idea): parity and benchmarks never ask which backend."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Self

import numpy as np
from tqdm import tqdm

from deploy.model_check import manifest_input_shape
from pipeline.preprocess import PreprocessSpec, preprocess


class Runner(ABC):
    """Runs one exported model. Subclasses implement `_infer`; `infer` checks what goes in and comes out, once for all.

    A context manager (`with format.make_runner(...) as runner:`) so callers need no try/finally to release it.
    """

    backend: str = "base"

    def __init__(self, spec: PreprocessSpec, precision: str = "fp32", threads: int = 1) -> None:
        self.spec = spec
        self.precision = precision
        self.threads = threads

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"

    def __enter__(self) -> Self:
        """The runner itself: `with` only adds the release at the end."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Release the backend also when the body raised (the exception goes on)."""
        self.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed float32 batch in the spec's layout -> (N, D) float32 embeddings (not normalised).

        Checked here for every backend: a batch of the wrong dtype, size or layout would otherwise fail deep in a
        backend, or (convolutions take any size) give embeddings of the wrong thing without a word.
        """
        problem = batch_problem(batch, self.spec)
        if problem:
            raise ValueError(f"{self.label}: {problem}")
        embeddings = np.asarray(self._infer(batch), dtype=np.float32)
        expected = (len(batch), self.spec.embedding_dim)
        if embeddings.shape != expected:
            raise RuntimeError(f"{self.label}: the backend returned embeddings of shape {embeddings.shape}, expected {expected}")
        return embeddings

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """The backend's own inference on a batch `infer` has checked; the embeddings' shape is checked after."""

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
            outputs.append(self.infer(preprocess(images_rgb[start : start + batch_size], self.spec)))
        return np.concatenate(outputs, axis=0) if outputs else np.zeros((0, self.spec.embedding_dim), np.float32)

    def close(self) -> None:
        """Release backend resources (sessions, nets); safe to call twice."""


def batch_problem(batch: object, spec: PreprocessSpec) -> str | None:
    """What makes `batch` no input for a model of `spec` (one short phrase), or None; the O(N) finite scan last."""
    if not isinstance(batch, np.ndarray):
        return f"the batch must be a numpy ndarray, got {type(batch).__name__}"
    if batch.dtype != np.float32:
        return f"the batch is {batch.dtype}, expected float32 (as preprocess() returns it)"
    image = manifest_input_shape(spec)
    expected = f"(N, {', '.join(map(str, image))}) ({spec.layout})"
    if batch.ndim != 4:
        return f"the batch has {batch.ndim} dimensions {batch.shape}, expected 4: {expected}"
    if batch.shape[1:] != image:
        other = "NHWC" if spec.layout == "NCHW" else "NCHW"
        hint = f": that is the {other} layout" if batch.shape[1:] == manifest_input_shape(replace(spec, layout=other)) else ""
        return f"the batch has shape {batch.shape}, expected {expected}{hint}"
    if len(batch) == 0:
        return "the batch is empty"
    finite = np.isfinite(batch)
    return None if finite.all() else f"the batch holds {finite.size - int(finite.sum())} NaN/Inf values"


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
