"""TensorRT: what can be checked without TensorRT (the probe and its reason, the profile, the calibration
batches, that nothing is built where it cannot run), and a real engine where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from deploy.export.calibration import calibration_batches
from deploy.export.tensorrt_export import (
    NO_CUDA_DEVICE, NOT_INSTALLED, cuda_device_count, export_tensorrt, profile_shapes, tensorrt_available,
)
from deploy.preprocess import PreprocessSpec, preprocess
from pipeline.models.registry import create_model

SPEC = PreprocessSpec()


def test_probe_reason_names_exactly_what_is_missing():
    available, reason = tensorrt_available()
    expected = [m for m, absent in ((NO_CUDA_DEVICE, cuda_device_count() == 0),
                                    (NOT_INSTALLED, importlib.util.find_spec("tensorrt") is None)) if absent]
    assert available == (not expected)
    assert reason == "; ".join(expected)


def test_profile_shapes_follow_the_spec():
    spec = PreprocessSpec(height=96, width=80)
    shapes = profile_shapes(spec, max_batch=32, opt_batch=8)
    assert shapes.min == (1, 3, 96, 80)
    assert shapes.opt == (8, 3, 96, 80)
    assert shapes.max == (32, 3, 96, 80)


@pytest.mark.parametrize(("max_batch", "opt_batch"), [(4, 8), (4, 0)])
def test_profile_rejects_opt_outside_range(max_batch, opt_batch):
    with pytest.raises(ValueError, match="opt_batch"):
        profile_shapes(SPEC, max_batch, opt_batch)


def test_profile_rejects_nhwc():
    with pytest.raises(ValueError, match="NCHW"):
        profile_shapes(PreprocessSpec(layout="NHWC"), 8)


def test_calibration_batches_are_fixed_size_and_preprocessed():
    images = np.random.default_rng(0).integers(0, 256, (21, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    batches = calibration_batches(images, SPEC, batch_size=8)
    assert [b.shape for b in batches] == [(8, 3, SPEC.height, SPEC.width)] * 2  # the 5 left over are not repeated
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), preprocess(images[:16], SPEC))


def test_calibration_needs_one_full_batch():
    images = np.zeros((3, SPEC.height, SPEC.width, 3), np.uint8)
    with pytest.raises(ValueError, match="cannot fill one batch of 8"):
        calibration_batches(images, SPEC, batch_size=8)


def test_export_builds_nothing_where_tensorrt_cannot_run(tmp_path):
    available, reason = tensorrt_available()
    if available:
        pytest.skip("TensorRT can run here; the engine test below covers it")
    model = create_model("mobilefacenet", width=0.25).eval()
    with pytest.raises(RuntimeError, match=reason):
        export_tensorrt(model, SPEC, tmp_path, "fp16")
    assert list(tmp_path.iterdir()) == []


def test_engine_matches_torch(tmp_path):
    available, reason = tensorrt_available()
    if not available:
        pytest.skip(f"skipped: {reason}")
    from deploy.runners.tensorrt_runner import TensorRTRunner

    torch.manual_seed(0)
    model = create_model("mobilefacenet", width=0.25).eval()
    images = np.random.default_rng(0).integers(0, 256, (6, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    record = export_tensorrt(model, SPEC, tmp_path, "fp32", max_batch=4)
    assert (tmp_path / "student_fp32.engine.timing").is_file()
    runner = TensorRTRunner(tmp_path / record["files"][0], SPEC, "fp32")
    embeddings = runner.embed(images)  # 6 images through a max-batch-4 profile: two chunks
    with torch.no_grad():
        expected = model(torch.from_numpy(preprocess(images, SPEC))).numpy()
    cosines = (embeddings * expected).sum(1) / np.linalg.norm(embeddings, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.9999
