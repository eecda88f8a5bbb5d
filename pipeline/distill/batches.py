"""Deterministic mini-batches over in-memory faces, addressable by (epoch, step) so training can resume exactly.

Order and flips derive from (seed, epoch) alone: resuming at step k of epoch e replays the same batches an
uninterrupted run would have seen, with no data-loader state to save.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from deploy.preprocess import PreprocessSpec, preprocess


@dataclass(frozen=True)
class Batch:
    step_in_epoch: int
    indices: np.ndarray  # dataset rows
    flipped: np.ndarray  # bool per row: horizontally mirrored


def steps_per_epoch(num_items: int, batch_size: int) -> int:
    """Full batches only: a ragged last batch would change BatchNorm statistics from epoch to epoch."""
    return max(1, num_items // batch_size)


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, hflip: bool, start_step: int = 0) -> Iterator[Batch]:
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_items)
    flips = rng.random(num_items) < 0.5 if hflip else np.zeros(num_items, dtype=bool)
    batch_size = min(batch_size, num_items)
    for step in range(start_step, steps_per_epoch(num_items, batch_size)):
        rows = order[step * batch_size : (step + 1) * batch_size]
        yield Batch(step, rows, flips[rows])


def images_to_tensor(images: np.ndarray, flipped: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 NHWC RGB faces -> normalised NCHW tensor through the same `preprocess` every runner uses."""
    if flipped.any():
        images = images.copy()
        images[flipped] = images[flipped, :, ::-1]
    return torch.from_numpy(preprocess(images, spec))
