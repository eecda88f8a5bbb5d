"""Verification metrics: fold/threshold protocol, TAR@FAR resolvability, ROC shape, and the ROC plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.evaluation.roc_plot import plot_roc_curves
from pipeline.evaluation.verification import (
    MAX_STORED_ROC_POINTS,
    VerificationResult,
    accuracy_delta_points,
    best_threshold_on,
    evaluate_similarities,
    evaluate_verification,
    far_key,
    pair_similarities,
)


def _separable_scores(num_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    issame = np.arange(num_pairs) % 2 == 0
    similarities = np.where(issame, rng.uniform(0.6, 1.0, num_pairs), rng.uniform(-0.2, 0.4, num_pairs))
    return similarities, issame


def test_perfect_separation_gives_full_accuracy() -> None:
    similarities, issame = _separable_scores(600)
    result = evaluate_similarities(similarities, issame)
    assert result.accuracy == 1.0
    assert result.accuracy_std == 0.0
    assert result.auc == pytest.approx(1.0)
    assert 0.4 < result.best_threshold < 0.6
    assert result.num_pairs == 600 and result.num_folds == 10


def test_random_scores_give_chance_accuracy() -> None:
    rng = np.random.default_rng(1234)
    similarities = rng.uniform(-1.0, 1.0, 2000)
    issame = rng.random(2000) < 0.5
    result = evaluate_similarities(similarities, issame)
    assert abs(result.accuracy - 0.5) < 0.05
    assert abs(result.auc - 0.5) < 0.05


def test_hand_computed_folds_and_thresholds() -> None:
    """3 contiguous folds of 2 pairs; thresholds are gap midpoints, ties go to the lowest one.

    fold 0 test {0,1}: train 0.4F 0.5T 0.6F 0.7T -> best 3/4 at 0.45 (tie with 0.65); test 0.9T, 0.2F -> 1.0
    fold 1 test {2,3}: train 0.2F 0.5T 0.6F 0.9T -> best 3/4 at 0.35 (tie with 0.75); test 0.7T ok, 0.4F wrong -> 0.5
    fold 2 test {4,5}: train 0.2F 0.4F 0.7T 0.9T -> 4/4 at 0.55; test 0.6F wrong, 0.5T wrong -> 0.0
    """
    similarities = np.array([0.9, 0.2, 0.7, 0.4, 0.6, 0.5])
    issame = np.array([True, False, True, False, False, True])
    result = evaluate_similarities(similarities, issame, num_folds=3)
    assert result.num_folds == 3
    assert result.accuracy == pytest.approx(0.5)
    assert result.accuracy_std == pytest.approx(math.sqrt(1 / 6))
    assert result.best_threshold == pytest.approx((0.45 + 0.35 + 0.55) / 3)


def test_best_threshold_covers_all_same_and_all_different() -> None:
    # Negatives scoring above positives: predicting everything "different" (3/4) beats any split.
    threshold, accuracy = best_threshold_on(np.array([0.1, 0.9, 0.8, 0.7]), np.array([True, False, False, False]))
    assert accuracy == pytest.approx(0.75)
    assert threshold > 0.9
    threshold, accuracy = best_threshold_on(np.array([0.1, 0.9, 0.8, 0.7]), np.array([False, True, True, True]))
    assert accuracy == pytest.approx(1.0)
    assert threshold == pytest.approx(0.4)


def test_fewer_pairs_than_folds_uses_fewer_folds() -> None:
    result = evaluate_similarities(np.array([0.9, 0.1, 0.8]), np.array([True, False, True]), num_folds=10)
    assert result.num_folds == 3
    assert any("3 folds" in note for note in result.notes)
    assert 0.0 <= result.accuracy <= 1.0


def test_pair_similarities_on_known_vectors() -> None:
    embeddings = np.array(
        [
            [1.0, 0.0], [0.0, 1.0],  # orthogonal -> 0
            [1.0, 1.0], [2.0, 2.0],  # same direction, different norm -> 1
            [1.0, 0.0], [-3.0, 0.0],  # opposite -> -1
            [3.0, 4.0], [4.0, 3.0],  # 24/25
            [0.0, 0.0], [1.0, 0.0],  # zero norm is guarded -> 0, not NaN
        ],
        dtype=np.float32,
    )
    similarities = pair_similarities(embeddings, num_pairs=5)
    np.testing.assert_allclose(similarities, [0.0, 1.0, -1.0, 24 / 25, 0.0], atol=1e-12)
    assert similarities.dtype == np.float64


def test_pair_similarities_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="even"):
        pair_similarities(np.ones((3, 4)))
    with pytest.raises(ValueError, match="need 4"):
        pair_similarities(np.ones((6, 4)), num_pairs=2)
    with pytest.raises(ValueError, match=r"\(2P, D\)"):
        pair_similarities(np.ones(6))
    with pytest.raises(ValueError, match="NaN"):
        pair_similarities(np.array([[np.nan, 1.0], [1.0, 0.0]]))


def test_evaluate_verification_from_embeddings() -> None:
    rng = np.random.default_rng(7)
    identities = rng.normal(size=(400, 64))
    noise = 0.3
    first = identities + noise * rng.normal(size=identities.shape)
    issame = np.arange(400) % 2 == 0
    other = np.roll(identities, 1, axis=0)
    second = np.where(issame[:, None], identities, other) + noise * rng.normal(size=identities.shape)
    embeddings = np.empty((800, 64))
    embeddings[0::2], embeddings[1::2] = first, second
    result = evaluate_verification(embeddings, issame)
    assert result.accuracy > 0.99
    with pytest.raises(ValueError, match="rows"):
        evaluate_verification(embeddings[:-2], issame)


def test_tar_at_far_needs_enough_different_pairs() -> None:
    # 1000 different pairs in [-1, 0]; positives: 8 at 0.5 and 2 below most negatives.
    negatives = np.linspace(-1.0, 0.0, 1000)
    positives = np.array([0.5] * 8 + [-0.5, -0.9])
    similarities = np.concatenate([negatives, positives])
    issame = np.concatenate([np.zeros(1000, bool), np.ones(10, bool)])
    result = evaluate_similarities(similarities, issame, far_targets=(1e-2, 1e-3, 1e-4))
    assert set(result.tar_at_far) == {"1e-2", "1e-3", "1e-4"}
    assert result.tar_at_far["1e-3"] == pytest.approx(0.8)
    assert result.tar_at_far["1e-2"] == pytest.approx(0.8)
    assert result.tar_at_far["1e-4"] is None  # 1000 negatives cannot resolve 1 in 10,000
    assert any("1e-4" in note and "1000" in note for note in result.notes)

    fewer = evaluate_similarities(similarities[1:], issame[1:], far_targets=(1e-3,))
    assert fewer.tar_at_far["1e-3"] is None  # 999 < 1000 negatives


def test_far_key_format() -> None:
    assert far_key(1e-3) == "1e-3"
    assert far_key(1e-4) == "1e-4"
    assert far_key(2.5e-4) == "2.5e-4"


def test_roc_is_monotone_and_downsampled() -> None:
    rng = np.random.default_rng(3)
    issame = rng.random(6000) < 0.5
    similarities = rng.normal(size=6000) + 1.5 * issame
    result = evaluate_similarities(similarities, issame)
    fpr, tpr = np.array(result.roc_fpr), np.array(result.roc_tpr)
    assert 2 <= len(fpr) <= MAX_STORED_ROC_POINTS and len(fpr) == len(tpr)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.count_nonzero((fpr > 0) & (fpr < 1e-2)) >= 10  # low-FAR region kept for log plots
    assert 0.8 < result.auc < 0.9


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="at least 2 pairs"):
        evaluate_similarities(np.array([0.5]), np.array([True]))
    with pytest.raises(ValueError, match="all 'same'"):
        evaluate_similarities(np.array([0.5, 0.6]), np.array([True, True]))
    with pytest.raises(ValueError, match="all 'different'"):
        evaluate_similarities(np.array([0.5, 0.6]), np.array([0, 0]))
    with pytest.raises(ValueError, match="does not match"):
        evaluate_similarities(np.array([0.5, 0.6, 0.7]), np.array([True, False]))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_similarities(np.array([0.5, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="boolean"):
        evaluate_similarities(np.array([0.5, 0.6]), np.array([1, 2]))
    with pytest.raises(ValueError, match="num_folds"):
        evaluate_similarities(np.array([0.5, 0.6]), np.array([True, False]), num_folds=1)
    with pytest.raises(ValueError, match="FAR"):
        evaluate_similarities(np.array([0.5, 0.6]), np.array([True, False]), far_targets=(0.0,))


def test_to_dict_is_json_and_delta_in_points() -> None:
    similarities, issame = _separable_scores(200)
    perfect = evaluate_similarities(similarities, issame)
    flipped = evaluate_similarities(np.where(np.arange(200) < 20, -similarities, similarities), issame)
    payload = json.loads(json.dumps(perfect.to_dict()))
    assert payload["accuracy"] == 1.0 and payload["tar_at_far"] == {"1e-3": None, "1e-4": None}
    assert len(payload["notes"]) == 2
    assert accuracy_delta_points(perfect, flipped) == pytest.approx((flipped.accuracy - 1.0) * 100)
    assert accuracy_delta_points(perfect, flipped) < 0
    assert accuracy_delta_points(perfect, perfect) == 0.0


def test_plot_writes_png(tmp_path) -> None:
    rng = np.random.default_rng(5)
    issame = rng.random(3000) < 0.5
    curves: dict[str, VerificationResult] = {
        "teacher": evaluate_similarities(rng.normal(size=3000) + 3.0 * issame, issame),
        "student": evaluate_similarities(rng.normal(size=3000) + 1.5 * issame, issame),
    }
    target = tmp_path / "plots" / "roc.png"
    written = plot_roc_curves(curves, target, title="LFW (synthetic)")
    assert written == target
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert [p.name for p in target.parent.iterdir()] == ["roc.png"]  # no temp file left behind
    with pytest.raises(ValueError):
        plot_roc_curves({}, tmp_path / "empty.png", title="none")


def test_folds_are_stratified_so_block_ordered_sets_score_like_interleaved_ones():
    """lfw/dev.bin-style order (300 same, 300 different, ...) must not leave folds with a single class."""
    rng = np.random.default_rng(3)
    same_scores = rng.normal(0.6, 0.15, 600)
    different_scores = rng.normal(0.2, 0.15, 600)
    blocks = np.concatenate([same_scores[:300], different_scores[:300], same_scores[300:], different_scores[300:]])
    block_labels = np.repeat([True, False, True, False], 300)
    interleaved = np.empty(1200)
    interleaved[0::2], interleaved[1::2] = same_scores, different_scores
    interleaved_labels = np.tile([True, False], 600)
    by_blocks = evaluate_similarities(blocks, block_labels)
    by_interleaving = evaluate_similarities(interleaved, interleaved_labels)
    assert by_blocks.accuracy == pytest.approx(by_interleaving.accuracy)
    assert by_blocks.accuracy > 0.85 and by_blocks.accuracy_std < 0.05


def test_fixed_fold_thresholds_reproduce_the_reference_and_count_only_changed_decisions() -> None:
    rng = np.random.default_rng(3)
    issame = np.arange(600) % 2 == 0
    similarities = np.where(issame, rng.normal(0.5, 0.2, 600), rng.normal(0.2, 0.2, 600))
    reference = evaluate_similarities(similarities, issame)
    assert len(reference.fold_thresholds) == 10
    again = evaluate_similarities(similarities, issame, fold_thresholds=reference.fold_thresholds)
    assert again.accuracy == reference.accuracy
    # Push one correctly-accepted same pair just below its fold's threshold: exactly one decision changes.
    from pipeline.evaluation.verification import pair_thresholds

    thresholds = pair_thresholds(issame, reference.fold_thresholds)
    index = int(np.flatnonzero(issame & (similarities >= thresholds))[0])
    moved = similarities.copy()
    moved[index] = thresholds[index] - 1e-9
    shifted = evaluate_similarities(moved, issame, fold_thresholds=reference.fold_thresholds)
    assert shifted.accuracy == pytest.approx(reference.accuracy - 1 / 600)


def test_wrong_number_of_fixed_thresholds_is_refused() -> None:
    similarities, issame = _separable_scores(100)
    with pytest.raises(ValueError, match="3 fixed fold thresholds given for 10 folds"):
        evaluate_similarities(similarities, issame, fold_thresholds=[0.1, 0.2, 0.3])
