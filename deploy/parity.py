"""Parity of a backend against the PyTorch reference: numeric (per-image cosine, max abs) and accuracy.

Tensor agreement alone can hide a metric change and vice versa (mmdeploy's lesson), so both gates apply:
cosine >= min_cosine on every image, and |verification accuracy delta| <= max_accuracy_delta_points.

The backend's accuracy is its 10-fold accuracy at the reference's per-fold thresholds: the delta then counts
only same/different decisions the backend's own scores changed. Re-choosing thresholds on the backend's scores
(measured on a barely trained default student: -2.0 points for an fp32 ONNX export with cosine 0.99999+) lets a
near-tie shift a whole fold's threshold, which is threshold noise, not an export fault. The re-tuned accuracy is
kept in `details` for the report, and the number of flipped pair decisions in `pairs_flipped`.

Flips in both directions cancel in the accuracy, so the accuracy gate also bounds the flips themselves: at most
max_accuracy_delta_points % of the pairs may change their decision. Measured on the tiny profile: a runner fed
BGR instead of RGB kept cosine 0.9999996 and a net accuracy delta of 0.00 while 14 of 40 decisions flipped.

Statuses: "pass", "fail" (could run, missed a gate), "error" (could not export or run), "skipped" (cannot run
on this machine; the reason says why), and "dropped": an INT8 variant that missed its gate when it was
exported and so was not kept (the issue's "kept only if it passes"); a dropped variant does not fail the run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.config import GateConfig
from pipeline.data.arrays import VerificationPairs
from pipeline.evaluation.verification import (
    accuracy_delta_points,
    evaluate_similarities,
    pair_similarities,
    pair_thresholds,
)

WORST_IMAGES_LISTED = 5


@dataclass
class ParityResult:
    backend: str
    precision: str
    status: str  # "pass" | "fail" | "skipped" | "error" | "dropped"
    reason: str = ""
    num_images: int = 0
    cosine_min: float | None = None
    cosine_mean: float | None = None
    max_abs_diff: float | None = None
    accuracy_reference: float | None = None
    accuracy_backend: float | None = None
    accuracy_delta_points: float | None = None
    worst_images: list[dict] = field(default_factory=list)
    gate: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    pairs_flipped: int | None = None  # pairs whose same/different decision differs from the reference's
    bytes: int | None = None  # size of the exported files
    first_divergent_layer: dict | None = None  # deploy.localize.Divergence.to_dict() when numeric parity failed

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"

    def to_dict(self) -> dict:
        return asdict(self)


def per_image_cosine(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    if reference.shape != candidate.shape:
        raise ValueError(f"embedding shapes differ: reference {reference.shape}, backend {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    return (ref * cand).sum(axis=1) / np.maximum(norms, 1e-12)


def check_parity(
    backend: str,
    precision: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    pairs: VerificationPairs,
    gate: GateConfig,
    image_names: list[str] | None = None,
) -> ParityResult:
    """Compare `candidate` embeddings with `reference` on the pairs' images and apply both gates.

    A NaN or Inf in either side fails the row and names those images: no figure computed from it would mean anything.
    """
    for side, embeddings in (("the backend", candidate), ("the PyTorch reference", reference)):
        rows = np.flatnonzero(~np.isfinite(np.asarray(embeddings).reshape(len(embeddings), -1)).all(axis=1))
        if len(rows):
            return non_finite_result(backend, precision, side, rows, len(embeddings), gate, image_names)
    cosines = per_image_cosine(reference, candidate)
    order = np.argsort(cosines)[:WORST_IMAGES_LISTED]
    worst = [{"image": image_names[i] if image_names else int(i), "cosine": float(cosines[i])} for i in order]
    num_pairs = len(candidate) // 2
    issame = pairs.issame[:num_pairs]
    reference_scores = pair_similarities(reference[: 2 * num_pairs], num_pairs)
    candidate_scores = pair_similarities(candidate[: 2 * num_pairs], num_pairs)
    reference_accuracy = evaluate_similarities(reference_scores, issame)
    backend_accuracy = evaluate_similarities(candidate_scores, issame, fold_thresholds=reference_accuracy.fold_thresholds)
    retuned_accuracy = evaluate_similarities(candidate_scores, issame)
    delta = accuracy_delta_points(reference_accuracy, backend_accuracy)
    # Decisions at the reference's thresholds; the pairs whose decision differs are the flips.
    thresholds = pair_thresholds(issame, reference_accuracy.fold_thresholds)
    flipped = int(np.count_nonzero((reference_scores >= thresholds) != (candidate_scores >= thresholds)))
    failures = []
    if cosines.min() < gate.min_cosine:
        below = int((cosines < gate.min_cosine).sum())
        failures.append(
            f"cosine {cosines.min():.6f} < {gate.min_cosine} on {below} of {len(cosines)} images "
            f"(worst: {', '.join(str(w['image']) for w in worst[:3])})"
        )
    allowed_flips = math.floor(gate.max_accuracy_delta_points / 100.0 * num_pairs + 1e-9)
    if flipped > allowed_flips:
        failures.append(
            f"{flipped} of {num_pairs} pair decisions flipped at the reference thresholds; the gate allows "
            f"{allowed_flips} (±{gate.max_accuracy_delta_points} points; net accuracy delta {delta:+.2f})"
        )
    elif abs(delta) > gate.max_accuracy_delta_points:
        failures.append(
            f"accuracy delta {delta:+.2f} points exceeds ±{gate.max_accuracy_delta_points} "
            f"({flipped} of {num_pairs} pair decisions flipped at the reference thresholds)"
        )
    return ParityResult(
        backend=backend,
        precision=precision,
        status="fail" if failures else "pass",
        reason="; ".join(failures),
        num_images=len(cosines),
        cosine_min=float(cosines.min()),
        cosine_mean=float(cosines.mean()),
        max_abs_diff=float(np.abs(reference - candidate).max()),
        accuracy_reference=reference_accuracy.accuracy,
        accuracy_backend=backend_accuracy.accuracy,
        accuracy_delta_points=delta,
        pairs_flipped=flipped,
        worst_images=worst,
        gate=gate.model_dump(),
        details={"accuracy_backend_retuned": retuned_accuracy.accuracy},
    )


NAMED_IMAGES = 10


def non_finite_result(backend: str, precision: str, side: str, rows: np.ndarray, num_images: int, gate: GateConfig,
                      image_names: list[str] | None = None) -> ParityResult:
    """A failed row for embeddings holding NaN/Inf: names the images; its figures are NaN (not a number, and so no pass)."""
    names = [image_names[i] if image_names else int(i) for i in rows]
    listed = ", ".join(str(name) for name in names[:NAMED_IMAGES]) + (", ..." if len(names) > NAMED_IMAGES else "")
    nan = float("nan")
    return ParityResult(
        backend=backend, precision=precision, status="fail",
        reason=f"{side} gave non-finite embeddings (NaN/Inf) for {len(rows)} of {num_images} images: {listed}",
        num_images=num_images, cosine_min=nan, cosine_mean=nan, max_abs_diff=nan, accuracy_delta_points=nan,
        worst_images=[{"image": name, "cosine": None} for name in names[:WORST_IMAGES_LISTED]], gate=gate.model_dump(),
        details={"non_finite_images": names, "non_finite_side": side},
    )


def skipped(backend: str, precision: str, reason: str) -> ParityResult:
    return ParityResult(backend, precision, "skipped", reason)
