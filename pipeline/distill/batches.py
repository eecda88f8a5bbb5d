"""Deterministic mini-batches over in-memory faces, addressable by (epoch, step) so training can resume exactly.

Order and flips derive from (seed, epoch) alone: resuming at step k of epoch e replays the same batches an
uninterrupted run would have seen, with no data-loader state to save.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import AugmentConfig
from pipeline.distill.augment import augment_pixels
from pipeline.preprocess import PreprocessSpec, preprocess


@dataclass(frozen=True)
class Batch:
    step_in_epoch: int
    indices: np.ndarray  # dataset rows
    flipped: np.ndarray  # bool per row: horizontally mirrored
    augment_seeds: np.ndarray  # uint64 per row: the seed of the row's augmentation (`augment.augment_pixels`)


def steps_per_epoch(num_items: int, batch_size: int) -> int:
    """Full batches only: a ragged last batch would change BatchNorm statistics from epoch to epoch."""
    return max(1, num_items // batch_size)


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, hflip: bool, start_step: int = 0,
                  rows: np.ndarray | None = None) -> Iterator[Batch]:
    """The epoch's batches over `rows` (default: every item), in an order and with flips that (seed, epoch) fix."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_items)
    flips = rng.random(num_items) < 0.5 if hflip else np.zeros(num_items, dtype=bool)
    augment_seeds = rng.integers(0, 2**63, num_items, dtype=np.uint64)  # drawn last: order and flips stay as before
    batch_size = min(batch_size, num_items)
    for step in range(start_step, steps_per_epoch(num_items, batch_size)):
        picked = order[step * batch_size : (step + 1) * batch_size]
        yield Batch(step, picked if rows is None else rows[picked], flips[picked], augment_seeds[picked])


def images_to_tensor(images: np.ndarray, flipped: np.ndarray, spec: PreprocessSpec, augment: AugmentConfig | None = None,
                     augment_seeds: np.ndarray | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC RGB faces -> normalised NCHW tensor on `device`, as `preprocess` (which every runner uses) makes it;
    mirrored where `flipped`, then augmented on `device` (`augment.augment_pixels`, row i from augment_seeds[i]) when
    `augment` is given."""
    if flipped.any():
        images = images.copy()
        images[flipped] = images[flipped, :, ::-1]
    if augment is None:
        return torch.from_numpy(preprocess(images, spec)).to(device)
    if spec.layout != "NCHW":
        raise ValueError(f"training takes NCHW input, the preprocessing spec says {spec.layout}")
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return normalise_pixels(augment_pixels(pixels, augment_seeds, augment), spec)


def normalise_pixels(pixels: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB faces -> float32 in the spec's colour order and normalisation: `preprocess`'s arithmetic
    (same operations, same float32 rounding) for faces already on the training device."""
    if pixels.shape[2:] != (spec.height, spec.width):
        raise ValueError(f"images are {pixels.shape[2]}x{pixels.shape[3]}, the model expects {spec.height}x{spec.width}")
    if spec.color_order != "RGB":
        pixels = pixels.flip(1)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return ((pixels.float() - mean) / std).contiguous()
