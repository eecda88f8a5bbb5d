"""Verification pairs drawn from a labelled image folder (<root>/<identity>/<image>), for real faces without a pair list.

A folder of identities (an aligned CelebA subset, a user's own people) becomes a verification set: `num_pairs` pairs,
half two distinct images of one identity and half images of two identities, shuffled, the same for the same seed.
Same pairs are drawn without repeats, and a folder too small for that is an error rather than a set that scores
some pairs twice. `sample_pair_rows` is the draw itself over any labels array; the synthetic generator's pairs use it
too (`pipeline.data.synthetic.dataset.sample_pair_indices`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.arrays import VerificationPairs
from pipeline.data.image_decode import ALIGNED_SIZE
from pipeline.data.image_folder import load_image_folder
from pipeline.errors import DataError


def load_folder_pairs(
    root: str | Path,
    num_pairs: int,
    seed: int = 0,
    size: tuple[int, int] | None = ALIGNED_SIZE,
    max_bad_fraction: float = 0.01,
    name: str | None = None,
) -> VerificationPairs:
    """Decode every image of `root` once and draw `num_pairs` pairs over them; name = `name` or the folder's name."""
    root = Path(root)
    labels_and_images = load_image_folder(root, size, max_bad_fraction).faces
    problem = pair_draw_problem(labels_and_images.labels, num_pairs)
    if problem is not None:
        raise DataError(root, problem)
    first, second, issame = sample_pair_rows(labels_and_images.labels, num_pairs, np.random.default_rng(seed))
    rows = np.stack([first, second], axis=1).reshape(-1)  # pair i at rows 2i, 2i+1, as in a .bin set
    return VerificationPairs(images=labels_and_images.images[rows], issame=issame, name=name or root.name)


def pair_draw_problem(labels: np.ndarray, num_pairs: int) -> str | None:
    """Why `num_pairs` pairs cannot be drawn from these labels without repeating a pair (None when they can)."""
    if num_pairs < 2 or num_pairs % 2:
        return f"num_pairs must be even and at least 2 (half same, half different), got {num_pairs}"
    _, _, counts = _identity_groups(labels)
    half = num_pairs // 2
    if len(counts) < 2:
        return f"{len(counts)} identity, but different-identity pairs need at least 2"
    same_pool = int((counts * (counts - 1) // 2).sum())
    if same_pool == 0:
        return "no identity has 2 or more images, so no same-identity pair can be drawn"
    if same_pool < half:
        return (f"only {same_pool} distinct same-identity pairs (from {int((counts >= 2).sum())} identities with 2+ images), "
                f"fewer than the {half} that num_pairs={num_pairs} needs")
    different_pool = int((counts.sum() ** 2 - (counts**2).sum()) // 2)
    if different_pool < half:
        return f"only {different_pool} distinct different-identity pairs, fewer than the {half} that num_pairs={num_pairs} needs"
    return None


def sample_pair_rows(labels: np.ndarray, num_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (first, second) into `labels` and issame for `num_pairs` pairs, exactly half same-identity.

    Same pairs are distinct row pairs of one identity, drawn uniformly from all of them without repeats while there are
    enough (with repeats only when there are fewer than num_pairs/2: `pair_draw_problem` says so first). Different
    pairs take a uniform identity, a uniform other identity and a uniform image of each, drawn independently (so a
    pair can recur by chance, as in any draw with replacement). The order is shuffled so issame is not a block pattern.
    """
    if num_pairs < 2 or num_pairs % 2:
        raise ValueError(f"num_pairs must be even and at least 2, got {num_pairs}")
    rows_by_identity, starts, counts = _identity_groups(labels)
    if len(counts) < 2 or counts.max() < 2:
        raise ValueError(f"pairs need 2+ identities and an identity with 2+ images ({len(counts)} identities, "
                         f"at most {counts.max() if len(counts) else 0} images each)")
    half = num_pairs // 2
    pairs_per_identity = counts * (counts - 1) // 2
    pair_ends = np.cumsum(pairs_per_identity)
    same_pool = int(pair_ends[-1])
    pick = rng.choice(same_pool, size=half, replace=half > same_pool)
    same_identity = np.searchsorted(pair_ends, pick, side="right")
    within_first, within_second = _upper_triangle_pair(pick - (pair_ends - pairs_per_identity)[same_identity], counts[same_identity])
    same = np.stack([rows_by_identity[starts[same_identity] + within_first],
                     rows_by_identity[starts[same_identity] + within_second]], axis=1)  # fmt: skip
    num_identities = len(counts)
    identity_a = rng.integers(0, num_identities, half)
    identity_b = (identity_a + rng.integers(1, num_identities, half)) % num_identities
    different = np.stack([rows_by_identity[starts[identity_a] + rng.integers(0, counts[identity_a])],
                          rows_by_identity[starts[identity_b] + rng.integers(0, counts[identity_b])]], axis=1)  # fmt: skip
    pairs = np.concatenate([same, different])
    issame = np.concatenate([np.ones(half, bool), np.zeros(half, bool)])
    order = rng.permutation(num_pairs)
    return pairs[order, 0], pairs[order, 1], issame[order]


def _identity_groups(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by identity (file order within one), where each identity's rows start there, and how many it has."""
    labels = np.asarray(labels)
    rows_by_identity = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[rows_by_identity], return_index=True, return_counts=True)
    return rows_by_identity, starts, counts


def _upper_triangle_pair(rank: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j, of the rank-th pair of 0..size-1 in `np.triu_indices(size, k=1)` order, element-wise."""
    def row_start(i: np.ndarray) -> np.ndarray:  # pairs before row i: (n-1) + (n-2) + ... + (n-i)
        return i * size - i * (i + 1) // 2

    # the root of row_start(i) = rank, then exact integer steps for the float's rounding
    i = np.floor(((2 * size - 1) - np.sqrt(np.maximum((2 * size - 1) ** 2 - 8 * rank, 0))) / 2).astype(np.int64)
    i = np.clip(i, 0, np.maximum(size - 2, 0))
    for _ in range(2):
        i = np.where(row_start(i) > rank, i - 1, i)
        i = np.where((i + 1 <= size - 2) & (row_start(i + 1) <= rank), i + 1, i)
    return i, rank - row_start(i) + i + 1
