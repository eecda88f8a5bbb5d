"""The parity gate on real embeddings: fp32-level noise passes with no flipped decision, a real change fails."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.parity import check_parity
from pipeline.config import GateConfig
from pipeline.data.arrays import VerificationPairs

GATE = GateConfig(min_cosine=0.99999, max_accuracy_delta_points=0.1)


def _pairs_and_embeddings(num_pairs: int = 300, seed: int = 0) -> tuple[VerificationPairs, np.ndarray]:
    """Overlapping same/different score distributions, so many pairs sit near the thresholds."""
    rng = np.random.default_rng(seed)
    issame = np.arange(num_pairs) % 2 == 0
    first = rng.normal(size=(num_pairs, 64))
    noise_scale = np.where(issame, 1.2, 3.0)[:, None]
    second = first + noise_scale * rng.normal(size=(num_pairs, 64))
    embeddings = np.empty((2 * num_pairs, 64), dtype=np.float32)
    embeddings[0::2], embeddings[1::2] = first, second
    images = np.zeros((2 * num_pairs, 1, 1, 3), dtype=np.uint8)
    return VerificationPairs(images, issame, "toy"), embeddings


def test_float32_rounding_noise_passes_with_no_flipped_decision() -> None:
    pairs, reference = _pairs_and_embeddings()
    candidate = reference * (1 + 1e-7 * np.random.default_rng(1).standard_normal(reference.shape)).astype(np.float32)
    result = check_parity("onnx", "fp32", reference, candidate, pairs, GATE)
    assert result.status == "pass", result.reason
    assert result.pairs_flipped == 0
    assert result.accuracy_delta_points == 0.0
    assert "accuracy_backend_retuned" in result.details


def test_a_changed_embedding_fails_and_counts_the_flipped_pairs() -> None:
    pairs, reference = _pairs_and_embeddings()
    candidate = reference.copy()
    rng = np.random.default_rng(2)
    candidate[::7] = rng.normal(size=candidate[::7].shape)  # every 7th image replaced: a broken export
    result = check_parity("onnx", "fp32", reference, candidate, pairs, GATE)
    assert result.status == "fail"
    assert result.pairs_flipped and result.pairs_flipped > 0
    assert "pair decisions flipped" in result.reason and "cosine" in result.reason


def test_parity_subset_of_a_block_ordered_set_holds_both_classes_in_file_order() -> None:
    from deploy.parity_run import parity_image_rows, parity_subset

    issame = np.array([True] * 300 + [False] * 300 + [True] * 300 + [False] * 300)  # lfw/dev.bin's layout
    images = np.arange(2 * len(issame), dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(3, axis=3)
    pairs = VerificationPairs(images, issame, "blocks")
    subset = parity_subset(pairs, 400)
    assert len(subset.images) == 400 and subset.issame.sum() == 100 and (~subset.issame).sum() == 100
    rows = parity_image_rows(issame, 400)
    assert np.all(np.diff(rows) > 0)  # file order kept
    assert np.array_equal(subset.images, images[rows])
    assert np.array_equal(subset.issame, issame[rows[0::2] // 2])
    assert len(parity_subset(pairs, None).images) == len(images)


def test_flips_that_cancel_in_the_accuracy_still_fail_the_gate() -> None:
    """One wrong decision made right and one right decision made wrong: accuracy unchanged, two flips."""
    from pipeline.evaluation.verification import evaluate_verification, pair_similarities, pair_thresholds

    pairs, reference = _pairs_and_embeddings()
    issame = pairs.issame
    threshold = pair_thresholds(issame, evaluate_verification(reference, issame).fold_thresholds)
    correct = (pair_similarities(reference) >= threshold) == issame
    fixed = int(np.flatnonzero(issame & ~correct)[0])  # a same pair the reference rejects: make it identical
    broken = int(np.flatnonzero(issame & correct)[0])  # a same pair the reference accepts: make it opposite
    candidate = reference.copy()
    candidate[2 * fixed + 1] = reference[2 * fixed]
    candidate[2 * broken + 1] = -reference[2 * broken]
    result = check_parity("onnx", "fp32", reference, candidate, pairs, GateConfig(min_cosine=-1.0, max_accuracy_delta_points=0.1))
    assert result.pairs_flipped == 2
    assert result.accuracy_delta_points == pytest.approx(0.0, abs=1e-9)
    assert result.status == "fail" and "2 of 300 pair decisions flipped" in result.reason
