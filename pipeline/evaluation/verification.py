"""Face verification metrics in the LFW / insightface protocol, scored on cosine similarity (higher = same).

Accuracy is the 10-fold cross-validated accuracy: for each fold the threshold that maximises accuracy on the other
nine folds is applied to the held-out fold, so the reported number never sees its own threshold. Folds are
unshuffled and stratified (sklearn ``StratifiedKFold(shuffle=False)``): each fold holds the same share of same and
different pairs, in file order. On the official lfw.bin (10 blocks of 300 same + 300 different pairs) this gives
exactly the LFW View-2 folds; on a set ordered differently (e.g. 2 blocks of 600) plain contiguous folds would be
all-same or all-different and the accuracy meaningless. Sets too small for that fall back to contiguous folds. TAR@FAR and the ROC curve are computed once over all pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import auc as area_under_curve
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold, StratifiedKFold

DEFAULT_FAR_TARGETS: tuple[float, ...] = (1e-3, 1e-4)
MAX_STORED_ROC_POINTS = 200
_NORM_EPSILON = 1e-12


@dataclass(frozen=True)
class VerificationResult:
    """Everything a report or a gate needs about one model on one pair set; plain floats and lists so it is JSON-able."""

    accuracy: float  # mean k-fold accuracy (threshold chosen on the other folds, applied on the held-out fold)
    accuracy_std: float  # population std over folds, as insightface reports it
    best_threshold: float  # mean of the per-fold chosen thresholds, in cosine-similarity units
    tar_at_far: dict[str, float | None]  # {"1e-3": tar or None}; None = too few different pairs to resolve it
    roc_fpr: list[float]  # ROC over all pairs, downsampled to <= MAX_STORED_ROC_POINTS points
    roc_tpr: list[float]
    auc: float
    num_pairs: int
    num_folds: int = 10  # folds actually used: fewer than asked when there are fewer pairs than folds
    notes: tuple[str, ...] = field(default=())  # why a TAR@FAR is None, or why fewer folds were used
    fold_thresholds: tuple[float, ...] = field(default=())  # threshold applied to each held-out fold, in fold order

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["notes"] = list(self.notes)
        payload["fold_thresholds"] = list(self.fold_thresholds)
        return payload


def far_key(far: float) -> str:
    """Short, stable dict key for a FAR target: 1e-3 -> "1e-3", 2.5e-4 -> "2.5e-4"."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def pair_similarities(embeddings: np.ndarray, num_pairs: int | None = None) -> np.ndarray:
    """Cosine similarity of rows 2i and 2i+1, the insightface .bin pair layout.

    Rows are L2-normalised in float64 first; an all-zero row stays zero (similarity 0) instead of producing NaN.
    `num_pairs`, when given, must match the rows exactly: a mismatch means embeddings and labels came apart.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (2P, D), got shape {embeddings.shape}")
    num_rows = embeddings.shape[0]
    if num_rows % 2:
        raise ValueError(f"embeddings have {num_rows} rows; pairs need an even number (rows 2i and 2i+1)")
    if num_pairs is not None and num_rows != 2 * num_pairs:
        raise ValueError(f"embeddings have {num_rows} rows but {num_pairs} pairs need {2 * num_pairs}")
    as_float = embeddings.astype(np.float64, copy=False)
    if not np.isfinite(as_float).all():
        raise ValueError("embeddings contain NaN or inf")
    norms = np.linalg.norm(as_float, axis=1, keepdims=True)
    unit = as_float / np.maximum(norms, _NORM_EPSILON)
    return np.einsum("ij,ij->i", unit[0::2], unit[1::2])


def evaluate_verification(
    embeddings: np.ndarray,
    issame: np.ndarray,
    num_folds: int = 10,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    fold_thresholds: Sequence[float] | None = None,
) -> VerificationResult:
    """Verification metrics from (2P, D) embeddings laid out as pairs (see `pair_similarities`)."""
    issame = _validate_issame(issame)
    similarities = pair_similarities(embeddings, num_pairs=len(issame))
    return evaluate_similarities(
        similarities, issame, num_folds=num_folds, far_targets=far_targets, fold_thresholds=fold_thresholds
    )


def evaluate_similarities(
    similarities: np.ndarray,
    issame: np.ndarray,
    num_folds: int = 10,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    fold_thresholds: Sequence[float] | None = None,
) -> VerificationResult:
    """Verification metrics from per-pair scores (higher = more likely the same person).

    Uses min(num_folds, num_pairs) folds (never fewer than 2). TAR@FAR is None when there are fewer than
    ~1/FAR different pairs: with N negatives the smallest non-zero FAR is 1/N, so a lower target cannot be resolved.
    `fold_thresholds` (another model's `fold_thresholds` on the same pairs) fixes each fold's threshold instead
    of choosing it: parity scores a backend at the reference's decisions, so re-tuning on near-tied pairs cannot
    move the accuracy of an export whose scores barely changed.
    """
    issame = _validate_issame(issame)
    similarities = np.asarray(similarities, dtype=np.float64)
    if similarities.shape != issame.shape:
        raise ValueError(f"similarities shape {similarities.shape} does not match issame shape {issame.shape}")
    if not np.isfinite(similarities).all():
        raise ValueError("similarities contain NaN or inf")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2 so thresholds are chosen on held-out data, got {num_folds}")
    for far in far_targets:
        if not 0.0 < far < 1.0:
            raise ValueError(f"FAR targets must be in (0, 1), got {far}")

    num_pairs = len(issame)
    notes: list[str] = []
    folds_used = min(num_folds, num_pairs)
    if folds_used < num_folds:
        notes.append(f"only {num_pairs} pairs: used {folds_used} folds instead of {num_folds}")

    if fold_thresholds is not None and len(fold_thresholds) != folds_used:
        raise ValueError(f"{len(fold_thresholds)} fixed fold thresholds given for {folds_used} folds")
    fold_accuracies, chosen_thresholds = _cross_validated_accuracy(similarities, issame, folds_used, fold_thresholds)

    fpr, tpr, _ = roc_curve(issame, similarities, drop_intermediate=False)
    num_different = int(np.count_nonzero(~issame))
    tar_at_far: dict[str, float | None] = {}
    for far in far_targets:
        needed = math.ceil(1.0 / far - 1e-9)
        if num_different < needed:
            tar_at_far[far_key(far)] = None
            notes.append(
                f"TAR@FAR={far_key(far)} unresolved: {num_different} different pairs, need >= {needed}"
            )
        else:
            tar_at_far[far_key(far)] = float(tpr[fpr <= far].max())

    stored_fpr, stored_tpr = _downsample_roc(fpr, tpr, MAX_STORED_ROC_POINTS)
    return VerificationResult(
        accuracy=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        best_threshold=float(np.mean(chosen_thresholds)),
        tar_at_far=tar_at_far,
        roc_fpr=stored_fpr.tolist(),
        roc_tpr=stored_tpr.tolist(),
        auc=float(area_under_curve(fpr, tpr)),
        num_pairs=num_pairs,
        num_folds=folds_used,
        notes=tuple(notes),
        fold_thresholds=tuple(float(t) for t in chosen_thresholds),
    )


def accuracy_delta_points(a: VerificationResult, b: VerificationResult) -> float:
    """How much b gains over a, in percentage points (negative = b is worse), for distill/export gates."""
    return (b.accuracy - a.accuracy) * 100.0


def best_threshold_on(similarities: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Exact accuracy-maximising threshold (predict same when similarity >= threshold) and that accuracy.

    Accuracy only changes between consecutive distinct scores, so the candidates are the midpoints between
    them plus one threshold below all scores (all "same") and one above (all "different"): every achievable
    split is tried and the chosen threshold sits in the middle of its gap, away from the training scores.
    Ties go to the lowest threshold, so the choice is deterministic.
    """
    distinct = np.unique(similarities)
    candidates = np.concatenate(
        [[distinct[0]], (distinct[:-1] + distinct[1:]) / 2.0, [np.nextafter(distinct[-1], np.inf)]]
    )
    same_sorted = np.sort(similarities[issame])
    different_sorted = np.sort(similarities[~issame])
    # searchsorted(..., "left") counts scores strictly below each candidate.
    true_accepts = len(same_sorted) - np.searchsorted(same_sorted, candidates, side="left")
    true_rejects = np.searchsorted(different_sorted, candidates, side="left")
    accuracies = (true_accepts + true_rejects) / len(similarities)
    best = int(np.argmax(accuracies))
    return float(candidates[best]), float(accuracies[best])


def _cross_validated_accuracy(
    similarities: np.ndarray, issame: np.ndarray, num_folds: int, fixed_thresholds: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold held-out accuracy and the threshold each fold chose on its training folds (or was given)."""
    accuracies = np.empty(num_folds)
    thresholds = np.empty(num_folds)
    for fold, (train, test) in enumerate(_fold_splits(issame, num_folds)):
        if fixed_thresholds is None:
            thresholds[fold], _ = best_threshold_on(similarities[train], issame[train])
        else:
            thresholds[fold] = fixed_thresholds[fold]
        predicted_same = similarities[test] >= thresholds[fold]
        accuracies[fold] = np.mean(predicted_same == issame[test])
    return accuracies, thresholds


def _fold_splits(issame: np.ndarray, num_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays per fold: stratified in file order, contiguous when a class is too small."""
    smallest_class = int(min(issame.sum(), (~issame).sum()))
    if smallest_class >= num_folds:
        splitter = StratifiedKFold(n_splits=num_folds, shuffle=False)
    else:
        splitter = KFold(n_splits=num_folds, shuffle=False)
    return list(splitter.split(np.zeros(len(issame)), issame))


def pair_thresholds(issame: np.ndarray, fold_thresholds: Sequence[float]) -> np.ndarray:
    """The threshold each pair is decided at: its held-out fold's entry of a result's `fold_thresholds`."""
    thresholds = np.empty(len(issame))
    for fold, (_, test) in enumerate(_fold_splits(np.asarray(issame, dtype=bool), len(fold_thresholds))):
        thresholds[test] = fold_thresholds[fold]
    return thresholds


def _downsample_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most `max_points` ROC points, spread evenly in log-FAR and in linear FAR.

    Plots use a log FAR axis, so uniform index sampling would throw away the low-FAR region that matters most.
    Each kept point is the highest-TPR corner at or below its FAR target, so the stored curve never overstates TAR.
    """
    if len(fpr) <= max_points:
        return fpr, tpr
    positive_fpr = fpr[fpr > 0]
    lowest = positive_fpr.min() if len(positive_fpr) else 1.0
    for grid_size in range(max_points // 2, 1, -1):
        targets = np.concatenate(
            [np.geomspace(lowest, 1.0, grid_size), np.linspace(0.0, 1.0, grid_size)]
        )
        # Last point with fpr <= target = highest TPR reachable at that FAR.
        indices = np.searchsorted(fpr, targets, side="right") - 1
        indices = np.unique(np.concatenate([[0, len(fpr) - 1], np.clip(indices, 0, len(fpr) - 1)]))
        if len(indices) <= max_points:
            return fpr[indices], tpr[indices]
    return fpr[[0, -1]], tpr[[0, -1]]


def _validate_issame(issame: np.ndarray) -> np.ndarray:
    """Boolean (P,) labels with both classes present: accuracy and ROC are meaningless otherwise."""
    labels = np.asarray(issame)
    if labels.ndim != 1:
        raise ValueError(f"issame must be 1-D (P,), got shape {labels.shape}")
    if labels.dtype != np.bool_:
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError("issame must be boolean (or 0/1)")
        labels = labels.astype(bool)
    if len(labels) < 2:
        raise ValueError(f"need at least 2 pairs to evaluate verification, got {len(labels)}")
    if labels.all() or not labels.any():
        kind = "same" if labels.all() else "different"
        raise ValueError(f"issame is all '{kind}': need both same and different pairs to evaluate verification")
    return labels
