"""Verification pairs drawn from a labelled image folder (`kind: folder_pairs`): balance, validity, seeds, errors."""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.stages.data_stage import load_user_verification_sets
from pipeline.config import DataConfig, VerificationSetConfig, load_config, profile_path
from pipeline.data.folder_pairs import load_folder_pairs, pair_draw_problem, sample_pair_rows
from pipeline.data.image_folder import load_image_folder
from pipeline.data.real_data import default_real_data_root, expected_real_data_root
from pipeline.data.source_listing import data_source_paths
from pipeline.errors import ConfigError, DataError
from pipeline.inputs import check_input_paths, configured_inputs

# 0 + 1 + 3 + 10 + 6 = 20 distinct same-identity pairs; "ann" gives none
COUNTS = {"ann": 1, "bob": 2, "cid": 3, "dee": 5, "eve": 4}


def identity_folder(root: Path, counts: dict[str, int]) -> Path:
    """<root>/<identity>/<n>.jpg, 112x112 JPEGs, each a flat colour of its own (so a drawn image names its file)."""
    for identity_index, (identity, count) in enumerate(counts.items()):
        (root / identity).mkdir(parents=True)
        for number in range(count):
            colour = (20 + 40 * identity_index, 20 + 30 * number, 128)
            Image.new("RGB", (112, 112), colour).save(root / identity / f"{number}.jpg", quality=95)
    return root


def labels_of_drawn(root: Path, images: np.ndarray) -> np.ndarray:
    """The folder label of each drawn image, and its row in the folder, found by its decoded bytes."""
    folder = load_image_folder(root).faces
    row_of = {hashlib.sha1(image.tobytes()).hexdigest(): row for row, image in enumerate(folder.images)}
    assert len(row_of) == len(folder.images)
    rows = np.array([row_of[hashlib.sha1(image.tobytes()).hexdigest()] for image in images])
    return np.stack([folder.labels[rows], rows], axis=1)


def test_pairs_are_half_same_distinct_images_of_one_identity_and_half_two_identities(tmp_path: Path) -> None:
    root = identity_folder(tmp_path / "people", COUNTS)
    pairs = load_folder_pairs(root, num_pairs=40, seed=0)
    assert pairs.images.shape == (80, 112, 112, 3) and pairs.images.dtype == np.uint8
    assert pairs.name == "people" and pairs.issame.sum() == 20
    drawn = labels_of_drawn(root, pairs.images).reshape(40, 2, 2)  # pair, side, (label, row)
    labels, rows = drawn[..., 0], drawn[..., 1]
    same, different = pairs.issame, ~pairs.issame
    assert np.all(labels[same, 0] == labels[same, 1]) and np.all(rows[same, 0] != rows[same, 1])
    assert np.all(labels[different, 0] != labels[different, 1])
    assert len({tuple(sorted(pair)) for pair in rows[same].tolist()}) == 20  # no same pair twice
    assert load_folder_pairs(root, num_pairs=2, name="mine").name == "mine"


def test_the_same_seed_draws_the_same_pairs_and_another_seed_others(tmp_path: Path) -> None:
    root = identity_folder(tmp_path / "people", COUNTS)
    first, again, other = (load_folder_pairs(root, num_pairs=30, seed=seed) for seed in (3, 3, 4))
    assert np.array_equal(first.images, again.images) and np.array_equal(first.issame, again.issame)
    assert not (np.array_equal(first.images, other.images) and np.array_equal(first.issame, other.issame))


def test_same_and_different_pairs_are_interleaved_not_in_blocks() -> None:
    labels = np.repeat(np.arange(40), np.arange(40) % 7 + 1)
    _, _, issame = sample_pair_rows(labels, 400, np.random.default_rng(0))
    assert issame.sum() == 200 and 0.35 < issame[:200].mean() < 0.65
    assert max(len(list(run)) for _, run in itertools.groupby(issame.tolist())) < 15


def test_drawing_every_same_pair_yields_each_pair_of_each_identity_once() -> None:
    """With num_pairs/2 = the whole same-pair pool, the draw is a permutation of it: no pair missed or invented,
    whatever the order of the labels."""
    counts = np.array([1, 2, 3, 7, 1, 5])
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(len(counts)), counts))
    pool = {(a, b) for a in range(len(labels)) for b in range(a + 1, len(labels)) if labels[a] == labels[b]}
    first, second, issame = sample_pair_rows(labels, 2 * len(pool), np.random.default_rng(5))
    assert {tuple(sorted(pair)) for pair in zip(first[issame].tolist(), second[issame].tolist())} == pool
    assert np.all(labels[first[~issame]] != labels[second[~issame]])


@pytest.mark.parametrize(
    ("counts", "num_pairs", "problem"),
    [
        ({"solo": 4}, 4, "1 identity, but different-identity pairs need at least 2"),
        ({"a": 1, "b": 1, "c": 1}, 2, "no identity has 2 or more images"),
        (COUNTS, 42, "only 20 distinct same-identity pairs (from 4 identities with 2+ images), fewer than the 21 that num_pairs=42 needs"),
        ({"a": 2, "b": 2}, 6, "only 2 distinct same-identity pairs"),
    ],
)
def test_a_folder_that_cannot_give_the_pairs_is_one_line_naming_it(tmp_path: Path, counts: dict, num_pairs: int, problem: str) -> None:
    root = identity_folder(tmp_path / "faces", counts)
    with pytest.raises(DataError) as error:
        load_folder_pairs(root, num_pairs=num_pairs)
    assert str(error.value).startswith(f"{root}: ") and problem in str(error.value) and "\n" not in str(error.value)


def test_too_few_different_pairs_is_an_error_too() -> None:
    labels = np.array([0, 0, 0, 1])  # 3 same pairs, 3 different pairs
    assert pair_draw_problem(labels, 6) is None
    assert pair_draw_problem(np.array([0, 0, 0, 0, 1]), 10) == "only 4 distinct different-identity pairs, fewer than the 5 that num_pairs=10 needs"


def test_config_requires_num_pairs_for_folder_pairs_only() -> None:
    entry = VerificationSetConfig(kind="folder_pairs", path="faces", num_pairs=100, pair_seed=2)
    assert (entry.num_pairs, entry.pair_seed) == (100, 2)
    for fields, message in [
        ({"kind": "folder_pairs"}, "kind folder_pairs needs num_pairs"),
        ({"kind": "folder_pairs", "num_pairs": 7}, "num_pairs must be even"),
        ({"kind": "folder_pairs", "num_pairs": 0}, "greater than or equal to 2"),
        ({"kind": "folder_pairs", "num_pairs": 4, "image_root": "x"}, "image_root is for kind pairs_txt"),
        ({"kind": "bin", "num_pairs": 100}, "num_pairs only apply to kind folder_pairs, not bin"),
        ({"kind": "pairs_txt", "pair_seed": 1, "image_root": "x"}, "pair_seed only apply to kind folder_pairs, not pairs_txt"),
    ]:
        with pytest.raises(ValueError, match=message):
            VerificationSetConfig(path="faces", **fields)


def test_a_profile_without_num_pairs_is_one_config_line_naming_the_key() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(profile_path("tiny"), {"data.verification": [{"kind": "folder_pairs", "path": "faces"}]})
    message = str(error.value)
    assert "data.verification.0" in message and "needs num_pairs" in message and "\n" not in message


def test_the_data_stage_loads_the_set_and_lists_and_checks_its_folder(tmp_path: Path) -> None:
    root = identity_folder(tmp_path / "people", COUNTS)
    data = DataConfig(source="image_folder", train_path=str(root),
                      verification=[VerificationSetConfig(kind="folder_pairs", path=str(root), num_pairs=10, name="held_out")])
    (pairs,) = load_user_verification_sets(data, (112, 112))
    assert pairs.name == "held_out" and pairs.num_pairs == 10 and pairs.issame.sum() == 5
    assert root in data_source_paths(data)  # its folder's listing decides whether the data stage reruns
    config = load_config(profile_path("tiny"), {"data.verification": [{"kind": "folder_pairs", "path": str(root), "num_pairs": 10}]})
    assert ("verification set folder", str(root), "folder") in configured_inputs(config)
    check_input_paths(config)  # a folder, as this kind expects: no "is a folder, not a file"


def test_celeba299_gives_3000_real_face_pairs() -> None:
    root = (default_real_data_root() or expected_real_data_root()) / "celeba299"
    if not root.is_dir():
        pytest.skip(f"real CelebA subset not present at {root}")
    started = time.perf_counter()
    pairs = load_folder_pairs(root, num_pairs=3000, seed=0)
    seconds = time.perf_counter() - started
    assert pairs.images.shape == (6000, 112, 112, 3) and pairs.issame.sum() == 1500 and pairs.name == "celeba299"
    print(f"celeba299: 3000 pairs in {seconds:.1f} s")
