"""Data sets of one configuration: the training set, verification pairs over disjoint identities, and a preview grid.

Parameters come from the validated `SyntheticDataConfig` (pipeline/config.py) plus the run's image size and seed,
which the config holds elsewhere (`data.image_size`, `seed`) because every data source shares them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pipeline.config import SyntheticDataConfig
from pipeline.data.arrays import FaceArrays, VerificationPairs
from pipeline.data.folder_pairs import sample_pair_rows
from pipeline.data.synthetic.identity import sample_identity
from pipeline.data.synthetic.render import render_identity_images
from pipeline.data.synthetic.seeds import PAIR_STREAM, VERIFICATION_ID_OFFSET, identity_image_seed
from pipeline.errors import ConfigError

VERIFICATION_PAIRS_NAME = "synthetic-verify"
MIN_IMAGE_SIZE = 16  # below this the eyes and mouth are a pixel or two: no face left to learn


def train_identity_ids(config: SyntheticDataConfig) -> range:
    """Global ids of the training identities; label k is id k."""
    return range(config.num_train_identities)


def verification_identity_ids(config: SyntheticDataConfig) -> range:
    """Global ids of the verification identities: a separate range, so they never coincide with training ones."""
    return range(VERIFICATION_ID_OFFSET, VERIFICATION_ID_OFFSET + config.num_verification_identities)


def _progress(items: Sequence[int], enabled: bool, description: str) -> Iterable[int]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="id")


def _render_identities(
    config: SyntheticDataConfig, identity_ids: Sequence[int], images_each: int, image_size: int, seed: int, progress: bool,
    description: str,
) -> np.ndarray:  # fmt: skip
    """All images of the given identities, identity-major: identity k occupies rows k*images_each onwards."""
    if image_size < MIN_IMAGE_SIZE:  # data.image_size is shared by every source, so the generator checks its own floor
        raise ConfigError(f"synthetic: image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    images = np.empty((len(identity_ids) * images_each, image_size, image_size, 3), np.uint8)
    for position, identity_id in enumerate(_progress(identity_ids, progress, description)):
        identity = sample_identity(identity_id, seed)
        images[position * images_each : (position + 1) * images_each] = render_identity_images(
            identity, images_each, identity_image_seed(seed, identity_id), image_size,
            config.nuisance_strength, config.occlusion_probability,
        )  # fmt: skip
    return images


def generate_training_set(config: SyntheticDataConfig, *, image_size: int, seed: int, progress: bool = False) -> FaceArrays:
    """Training faces with labels 0..num_train_identities-1 (label = training identity id)."""
    identity_ids = train_identity_ids(config)
    images = _render_identities(config, identity_ids, config.images_per_identity, image_size, seed, progress, "synthetic train")
    labels = np.repeat(np.arange(len(identity_ids), dtype=np.int64), config.images_per_identity)
    return FaceArrays(images=images, labels=labels)


def sample_pair_indices(
    num_identities: int, images_per_identity: int, num_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image-row indices (first, second) and issame for num_pairs pairs over identity-major rows, exactly half
    same-identity: `sample_pair_rows` (pipeline/data/folder_pairs.py) on the pair stream of `seed`."""
    labels = np.repeat(np.arange(num_identities), images_per_identity)
    return sample_pair_rows(labels, num_pairs, np.random.default_rng([seed, PAIR_STREAM]))


def generate_verification_pairs(
    config: SyntheticDataConfig, *, image_size: int, seed: int, progress: bool = False
) -> VerificationPairs:
    """Pairs over identities disjoint from training, in the insightface .bin layout, named "synthetic-verify"."""
    per_identity = config.images_per_verification_identity
    identity_ids = verification_identity_ids(config)
    images = _render_identities(config, identity_ids, per_identity, image_size, seed, progress, "synthetic verify")
    first, second, issame = sample_pair_indices(config.num_verification_identities, per_identity, config.num_pairs, seed)
    interleaved = np.stack([first, second], axis=1).reshape(-1)
    return VerificationPairs(images=images[interleaved], issame=issame, name=VERIFICATION_PAIRS_NAME)


def generate_dataset(
    config: SyntheticDataConfig, *, image_size: int, seed: int, progress: bool = False
) -> tuple[FaceArrays, VerificationPairs]:
    """The training set and the verification pairs of one configuration."""
    return (generate_training_set(config, image_size=image_size, seed=seed, progress=progress),
            generate_verification_pairs(config, image_size=image_size, seed=seed, progress=progress))  # fmt: skip


def preview_grid(config: SyntheticDataConfig, *, image_size: int, seed: int, identities: int = 8, images_each: int = 6) -> np.ndarray:
    """A (identities*H, images_each*W, 3) RGB mosaic of training identities, one row per person, for eyeballing."""
    identity_ids = train_identity_ids(config)[:identities]
    images = _render_identities(config, identity_ids, images_each, image_size, seed, False, "preview")
    rows = images.reshape(identities, images_each, image_size, image_size, 3)
    return rows.transpose(0, 2, 1, 3, 4).reshape(identities * image_size, images_each * image_size, 3)
