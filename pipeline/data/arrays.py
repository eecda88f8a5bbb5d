"""The two in-memory shapes every data source is turned into, so stages never care where faces came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FaceArrays:
    """Aligned training faces: images (N, H, W, 3) uint8 RGB and labels (N,) int64 in 0..num_identities-1."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {self.labels.shape}")

    @property
    def num_identities(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


@dataclass(frozen=True)
class VerificationPairs:
    """Same/different face pairs as in insightface .bin sets: images[2i] and images[2i+1] form pair i."""

    images: np.ndarray  # (2P, H, W, 3) uint8 RGB
    issame: np.ndarray  # (P,) bool
    name: str = "pairs"

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (2P, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}")
        if self.images.shape[0] != 2 * len(self.issame):
            raise ValueError(f"{self.images.shape[0]} images for {len(self.issame)} pairs (need 2 per pair)")

    @property
    def num_pairs(self) -> int:
        return len(self.issame)
