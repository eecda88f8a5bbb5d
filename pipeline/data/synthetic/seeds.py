"""Seed streams: every array is a pure function of (seed, identity id, image index), whatever the generation order.

Identities, images and pairs draw from separate numpy SeedSequence branches, so they never share draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IDENTITY_STREAM = 1
IMAGE_STREAM = 2
PAIR_STREAM = 3
VERIFICATION_ID_OFFSET = 1 << 30  # verification identity ids start here; training ids are 0..N-1


def identity_image_seed(seed: int, identity_id: int) -> tuple[int, int, int]:
    """Seed words of one identity's image stream; image i draws from default_rng([*words, i])."""
    return (seed, IMAGE_STREAM, identity_id)


def seed_words(rng_seed: int | Sequence[int]) -> list[int]:
    """One seed or a sequence of seed words as a list, so a per-image index can be appended to it."""
    return [int(rng_seed)] if np.isscalar(rng_seed) else [int(word) for word in rng_seed]
