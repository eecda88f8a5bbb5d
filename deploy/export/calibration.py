"""The INT8 calibration set, shared by every backend: which training images, preprocessed how, in what batches.

ONNX Runtime, TensorRT and ncnn quantise from the same images so their INT8 results are comparable; the images
come from the training set (never the verification set the parity gate measures on).
"""

from __future__ import annotations

import numpy as np

from pipeline.preprocess import PreprocessSpec, preprocess


def draw_calibration_images(train_images: np.ndarray, count: int) -> np.ndarray:
    """`count` images spread evenly over the training set (which is stored identity by identity)."""
    if count < 1:
        raise ValueError(f"calibration needs at least one image, asked for {count}")
    step = max(1, len(train_images) // count)
    return np.asarray(train_images[::step][:count])


def calibration_batches(images_rgb: np.ndarray, spec: PreprocessSpec, batch_size: int) -> list[np.ndarray]:
    """Preprocessed float32 batches of exactly `batch_size` (TensorRT's calibrator needs a fixed size).

    Images that do not fill a last batch are left out rather than repeated, so no image weighs twice.
    """
    if batch_size < 1:
        raise ValueError(f"calibration batch size must be >= 1, got {batch_size}")
    usable = len(images_rgb) - len(images_rgb) % batch_size
    if usable == 0:
        raise ValueError(f"{len(images_rgb)} calibration images cannot fill one batch of {batch_size}")
    return [preprocess(images_rgb[start : start + batch_size], spec) for start in range(0, usable, batch_size)]


def ort_calibration_reader(input_name: str, batches: list[np.ndarray]):
    """ONNX Runtime's quantize_static input: `batches` (preprocessed float32 arrays) one per get_next, then None."""
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return BatchReader()


def percentile_threshold(histogram: np.ndarray, bin_width: float, percentile: float = 99.999) -> float:
    """The |x| below which `percentile` % of the histogram's mass lies (upper edge of that bin)."""
    histogram = np.asarray(histogram, np.float64)
    total = histogram.sum()
    if total == 0:
        return bin_width * len(histogram)
    index = int(np.searchsorted(np.cumsum(histogram), total * percentile / 100.0))
    return (min(index, len(histogram) - 1) + 1) * bin_width


def kl_threshold(histogram: np.ndarray, bin_width: float, target_bins: int = 128, coarse_step: int = 8) -> float:
    """The clipping threshold for |x| that minimises KL(P || Q) of the histogram quantised to `target_bins`.

    TensorRT's entropy calibration (ncnn2table uses the same idea): for each candidate threshold, P is the
    histogram clipped there (outliers added to the last bin); Q is the same slice *without* the outliers, merged
    into `target_bins` levels and spread evenly back over the slice's non-empty bins, so clipped mass and coarse
    levels both cost divergence; the threshold with the smallest divergence wins. The divergence varies smoothly
    with the threshold, so candidates are searched every `coarse_step` bins, then bin by bin around the best.
    """
    histogram = np.asarray(histogram, np.float64)
    size = len(histogram)
    if histogram.sum() == 0 or size <= target_bins:
        return bin_width * size
    coarse = list(range(target_bins, size + 1, coarse_step))
    best = min(coarse, key=lambda bins: _clipping_divergence(histogram, bins, target_bins))
    fine = range(max(target_bins, best - coarse_step + 1), min(size, best + coarse_step - 1) + 1)
    best = min(fine, key=lambda bins: _clipping_divergence(histogram, bins, target_bins))
    return (best + 0.5) * bin_width


def _clipping_divergence(histogram: np.ndarray, bins: int, target_bins: int) -> float:
    sliced = histogram[:bins]
    reference = sliced.copy()
    reference[-1] += histogram[bins:].sum()
    groups = np.minimum(np.arange(bins) * target_bins // bins, target_bins - 1)
    nonempty = sliced > 0
    group_sums = np.bincount(groups, weights=sliced, minlength=target_bins)
    group_counts = np.bincount(groups, weights=nonempty, minlength=target_bins)
    expanded = np.where(nonempty, group_sums[groups] / np.maximum(group_counts[groups], 1), 0.0)
    p = reference / reference.sum()
    q = expanded / max(expanded.sum(), 1e-300)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
