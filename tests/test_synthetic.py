"""The synthetic face set: shapes, determinism, disjoint identity streams, balanced pairs, and sane difficulty."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config import SyntheticDataConfig, load_config
from pipeline.data.synthetic import (
    ARCFACE_LANDMARKS_112,
    VERIFICATION_ID_OFFSET,
    VERIFICATION_PAIRS_NAME,
    generate_dataset,
    generate_training_set,
    generate_verification_pairs,
    identity_image_seed,
    preview_grid,
    render_identity_images,
    sample_identity,
    sample_pair_indices,
    train_identity_ids,
    verification_identity_ids,
)
from pipeline.data.synthetic.nuisance import OCCLUSION_KINDS
from pipeline.data.synthetic.occluders import OCCLUDER_DRAWERS
from pipeline.errors import ConfigError

RED = (255.0, 0.0, 0.0)
GREEN = (0.0, 255.0, 0.0)
SIZE = 112
SEED = 7
SMALL = SyntheticDataConfig(
    num_train_identities=4,
    images_per_identity=3,
    num_verification_identities=5,
    images_per_verification_identity=3,
    num_pairs=12,
)
# sample_pair_indices(4, 3, 8, seed=11) as the generator drew it before it became a package (issue 21)
PINNED_PAIRS = ([9, 8, 2, 0, 3, 1, 9, 11], [10, 10, 6, 1, 6, 2, 11, 4], [True, False, False, True, False, True, True, False])


def _digests(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(image.tobytes()).hexdigest() for image in images}


def _identity_images(config: SyntheticDataConfig, identity_id: int, count: int, seed: int = SEED) -> np.ndarray:
    identity = sample_identity(identity_id, seed)
    return render_identity_images(
        identity, count, identity_image_seed(seed, identity_id), SIZE, config.nuisance_strength, config.occlusion_probability
    )


def _pair_cosines(images: np.ndarray) -> np.ndarray:
    """Cosine similarity of raw pixels, centred as a network input would be ((x - 127.5) / 128)."""
    vectors = images.reshape(len(images), -1).astype(np.float64) - 127.5
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", vectors[0::2], vectors[1::2])


def _best_threshold_accuracy(scores: np.ndarray, issame: np.ndarray) -> float:
    """Verification accuracy at the best threshold: an upper bound on the 10-fold figure."""
    return max(float(((scores >= threshold) == issame).mean()) for threshold in np.unique(scores))


@pytest.fixture(scope="module")
def small_dataset():
    return generate_dataset(SMALL, image_size=SIZE, seed=SEED)


def test_training_set_shapes_dtypes_and_labels(small_dataset) -> None:
    train, _ = small_dataset
    assert train.images.shape == (12, 112, 112, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert train.num_identities == 4


def test_verification_pairs_layout_and_balance(small_dataset) -> None:
    _, pairs = small_dataset
    assert pairs.images.shape == (24, 112, 112, 3) and pairs.images.dtype == np.uint8
    assert pairs.issame.dtype == np.bool_ and pairs.issame.shape == (12,)
    assert pairs.issame.sum() == 6
    assert pairs.name == VERIFICATION_PAIRS_NAME == "synthetic-verify"


def test_other_image_sizes_render() -> None:
    config = SyntheticDataConfig(
        num_train_identities=2, images_per_identity=2, num_verification_identities=2, images_per_verification_identity=2, num_pairs=2
    )
    assert generate_training_set(config, image_size=64, seed=0).images.shape == (4, 64, 64, 3)


def test_same_arguments_give_identical_arrays(small_dataset) -> None:
    train, pairs = small_dataset
    train_again, pairs_again = generate_dataset(SMALL, image_size=SIZE, seed=SEED, progress=True)
    assert np.array_equal(train.images, train_again.images) and np.array_equal(train.labels, train_again.labels)
    assert np.array_equal(pairs.images, pairs_again.images) and np.array_equal(pairs.issame, pairs_again.issame)


def test_different_seed_gives_different_arrays(small_dataset) -> None:
    train, pairs = small_dataset
    other_train, other_pairs = generate_dataset(SMALL, image_size=SIZE, seed=SEED + 1)
    assert not np.array_equal(train.images, other_train.images)
    assert not np.array_equal(pairs.images, other_pairs.images)


def test_images_do_not_depend_on_generation_order_or_count(small_dataset) -> None:
    train, _ = small_dataset
    identity_two = _identity_images(SMALL, 2, SMALL.images_per_identity)
    assert np.array_equal(identity_two, train.images[6:9])
    assert np.array_equal(_identity_images(SMALL, 2, 1)[0], identity_two[0])


def test_opencv_thread_count_does_not_change_pixels() -> None:
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        single = _identity_images(SMALL, 0, 3)
        cv2.setNumThreads(max(threads, 2))
        multi = _identity_images(SMALL, 0, 3)
    finally:
        cv2.setNumThreads(threads)
    assert np.array_equal(single, multi)


def test_train_and_verification_identities_are_disjoint(small_dataset) -> None:
    train, pairs = small_dataset
    assert set(train_identity_ids(SMALL)).isdisjoint(verification_identity_ids(SMALL))
    verification_images = np.concatenate(
        [_identity_images(SMALL, identity_id, SMALL.images_per_verification_identity)
         for identity_id in verification_identity_ids(SMALL)]
    )  # fmt: skip
    assert _digests(pairs.images) <= _digests(verification_images)
    assert _digests(train.images).isdisjoint(_digests(verification_images))
    train_people = {sample_identity(i, SEED) for i in train_identity_ids(SMALL)}
    assert train_people.isdisjoint(sample_identity(i, SEED) for i in verification_identity_ids(SMALL))


def test_identity_parameters_are_per_id_and_per_seed() -> None:
    assert sample_identity(3, seed=0) == sample_identity(3, seed=0)
    assert sample_identity(3, seed=0) != sample_identity(4, seed=0)
    assert sample_identity(3, seed=0) != sample_identity(3, seed=1)


def test_pair_indices_are_valid_and_exactly_half_same() -> None:
    identities, per_identity, num_pairs = 20, 6, 300
    first, second, issame = sample_pair_indices(identities, per_identity, num_pairs, seed=0)
    assert len(first) == len(second) == len(issame) == num_pairs and issame.sum() == num_pairs // 2
    same_identity = first // per_identity == second // per_identity
    assert np.array_equal(same_identity, issame)
    assert np.all(first != second)
    same_pairs = {tuple(sorted(pair)) for pair in zip(first[issame], second[issame])}
    assert len(same_pairs) == num_pairs // 2  # no repeats while the pool (20 * 15) is big enough
    assert 0.2 < issame[: num_pairs // 2].mean() < 0.8  # shuffled, not one block of each


def test_images_of_one_identity_differ() -> None:
    images = _identity_images(SMALL, 1, 6).astype(np.int16)
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            assert np.abs(images[a] - images[b]).mean() > 8.0


def _marker_centroids(identity_id: int) -> np.ndarray:
    """Centres of the left iris, right iris and lips of a clean face whose irises are pure red and lips pure green."""
    identity = replace(sample_identity(identity_id), iris_rgb=RED, lip_rgb=GREEN, moles=(), glasses="none")
    face = render_identity_images(identity, 1, identity_id, nuisance_strength=0.0, occlusion_probability=0.0)[0]
    face = face.astype(np.int16)
    red = (face[..., 0] > 180) & (face[..., 1] < 60) & (face[..., 2] < 60)
    green = (face[..., 1] > 180) & (face[..., 0] < 60) & (face[..., 2] < 60)
    red_y, red_x = np.nonzero(red)
    green_y, green_x = np.nonzero(green)
    left = red_x < face.shape[1] / 2
    return np.array([[red_x[left].mean(), red_y[left].mean()], [red_x[~left].mean(), red_y[~left].mean()],
                     [green_x.mean(), green_y.mean()]])  # fmt: skip


def test_clean_faces_sit_on_the_arcface_template() -> None:
    """Eyes and mouth land on the insightface 112x112 template on average, and near it for every identity."""
    template = np.stack([ARCFACE_LANDMARKS_112[0], ARCFACE_LANDMARKS_112[1], ARCFACE_LANDMARKS_112[3:].mean(axis=0)])
    centroids = np.stack([_marker_centroids(identity_id) for identity_id in range(12)])
    assert np.abs(centroids.mean(axis=0) - template).max() < 1.0
    assert np.abs(centroids - template).max() < 5.0


def test_raw_pixels_carry_identity_but_do_not_solve_verification() -> None:
    config = SyntheticDataConfig(num_verification_identities=30, images_per_verification_identity=6, num_pairs=400)
    pairs = generate_verification_pairs(config, image_size=SIZE, seed=0)
    scores = _pair_cosines(pairs.images)
    assert scores[pairs.issame].mean() > scores[~pairs.issame].mean()
    assert 0.52 < _best_threshold_accuracy(scores, pairs.issame) < 0.85


def test_preview_grid_is_identities_by_images(tmp_path) -> None:
    grid = preview_grid(SyntheticDataConfig(), image_size=SIZE, seed=0, identities=8, images_each=6)
    assert grid.shape == (8 * 112, 6 * 112, 3) and grid.dtype == np.uint8
    path = tmp_path / "synthetic_grid.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    assert cv2.imread(str(path)).shape == grid.shape


def test_pair_draws_are_pinned() -> None:
    """The pair stream is pure integer draws from numpy's PCG64: pinned, so a refactor cannot reshuffle a benchmark."""
    first, second, issame = sample_pair_indices(4, 3, 8, seed=11)
    assert first.tolist() == PINNED_PAIRS[0] and second.tolist() == PINNED_PAIRS[1] and issame.tolist() == PINNED_PAIRS[2]


def test_every_occlusion_kind_has_a_drawer() -> None:
    assert tuple(OCCLUDER_DRAWERS) == OCCLUSION_KINDS


@pytest.mark.parametrize(
    "bad",
    [{"num_pairs": 11}, {"num_pairs": 0}, {"num_verification_identities": 1}, {"images_per_verification_identity": 1},
     {"num_train_identities": VERIFICATION_ID_OFFSET + 1}, {"occlusion_probability": 1.5}, {"nuisance_strength": -1.0}],
)  # fmt: skip
def test_bad_config_is_refused(bad) -> None:
    with pytest.raises(ValidationError):
        SyntheticDataConfig(**bad)


def test_bad_synthetic_profile_fails_at_load_on_one_line(tmp_path) -> None:
    path = tmp_path / "odd_pairs.yaml"
    path.write_text("data:\n  synthetic:\n    num_pairs: 11\n")
    problem = r"data\.synthetic\.num_pairs: .*num_pairs must be even \(half same, half different\), got 11"
    with pytest.raises(ConfigError, match=problem) as error:
        load_config(path)
    assert "\n" not in str(error.value)


def test_tiny_image_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="image_size must be >= 16, got 8"):
        generate_training_set(SMALL, image_size=8, seed=0)
