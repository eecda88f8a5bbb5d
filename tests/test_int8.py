"""INT8 variants: the KL threshold, ncnn's int8 param/bin fields written by us and run by ncnn, ONNX static
QDQ quantisation, and the export-time gate that keeps an INT8 model only if it passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.stages.export_stage import keep_if_int8_gate_passes
from deploy.export.calibration import draw_calibration_images, kl_threshold, percentile_threshold
from deploy.export.ncnn_export import export_ncnn
from deploy.export.ncnn_int8 import quantise_ncnn_export, weight_scales
from deploy.export.ncnn_model import TAG_INT8, read_ncnn_model, write_ncnn_model
from deploy.export.onnx_int8 import export_onnx_int8
from deploy.parity_run import parity_for_record, parity_subset
from deploy.runners.ncnn_runner import NcnnRunner
from deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from pipeline.config import GateConfig, ParityConfig
from pipeline.data.arrays import VerificationPairs
from pipeline.preprocess import PreprocessSpec, preprocess
from pipeline.run_layout import failed_parity
from tests.conftest import input_sensitive_student

SPEC = PreprocessSpec()
INT8_GATE = ParityConfig().gates["int8"]


def _smooth_faces(count: int, seed: int) -> np.ndarray:
    """Face-sized images with spatial structure (blurred noise), closer to real activations than white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 14, 14, 3)).astype(np.float32)
    return np.clip(coarse.repeat(8, axis=1).repeat(8, axis=2) + rng.normal(0, 12, (count, 112, 112, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    return input_sensitive_student()


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    return draw_calibration_images(_smooth_faces(32, seed=1), 16)


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return _smooth_faces(12, seed=2)


@pytest.fixture(scope="module")
def torch_embeddings(student, held_out) -> np.ndarray:
    with torch.no_grad():
        return student(torch.from_numpy(preprocess(held_out, SPEC))).numpy()


@pytest.fixture(scope="module")
def ncnn_fp32(student, tmp_path_factory) -> dict:
    return export_ncnn(student, SPEC, tmp_path_factory.mktemp("ncnn-fp32"), "fp32")


@pytest.fixture(scope="module")
def ncnn_int8(ncnn_fp32, calibration, tmp_path_factory) -> dict:
    """Calibrated and written from the shared fp32 export (export_ncnn_int8 = pnnx + this; the tiny run covers it)."""
    return quantise_ncnn_export(ncnn_fp32["param"], ncnn_fp32["bin"], SPEC, tmp_path_factory.mktemp("ncnn-int8"), calibration)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_kl_threshold_keeps_a_uniform_range_and_clips_a_long_tail():
    rng = np.random.default_rng(0)
    uniform = np.abs(rng.uniform(-1, 1, 100_000))
    histogram, edges = np.histogram(uniform, 2048, (0, uniform.max()))
    assert kl_threshold(histogram, edges[1]) == pytest.approx(uniform.max(), rel=0.01)
    tailed = np.abs(rng.standard_normal(100_000))
    tailed[:20] *= 6  # a few outliers far out: int8 steps should not be spent on them
    histogram, edges = np.histogram(tailed, 2048, (0, tailed.max()))
    threshold = kl_threshold(histogram, edges[1])
    assert 2.5 < threshold < 0.5 * tailed.max()
    assert kl_threshold(np.zeros(2048), 0.5) == 1024.0


def test_percentile_threshold_ignores_the_rarest_values():
    histogram = np.zeros(2048)
    histogram[:1000] = 1000  # 1e6 values below bin 1000
    histogram[2047] = 5  # 5 in a million far out: above the 99.999th percentile
    assert percentile_threshold(histogram, 0.01) == pytest.approx(10.0)
    histogram[2047] = 50  # 50 in a million: inside it
    assert percentile_threshold(histogram, 0.01) == pytest.approx(20.48)


def test_ncnn_model_round_trips_byte_for_byte(ncnn_fp32, tmp_path):
    fp32 = ncnn_fp32
    model = read_ncnn_model(fp32["param"], fp32["bin"])
    write_ncnn_model(model, tmp_path / "copy.param", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == fp32["bin"].read_bytes()
    assert (tmp_path / "copy.param").read_text().split() == fp32["param"].read_text().split()
    (tmp_path / "short.bin").write_bytes(fp32["bin"].read_bytes()[:-4])
    with pytest.raises(ValueError, match="short.bin"):
        read_ncnn_model(fp32["param"], tmp_path / "short.bin")


def test_ncnn_int8_fields_are_written_as_ncnn_reads_them(ncnn_int8):
    model = read_ncnn_model(ncnn_int8["param"], ncnn_int8["bin"])
    quantised = [e for e in model.layers if e.layer.param_int(8)]
    assert [e.name for e in quantised] == ncnn_int8["int8_layers"] and len(quantised) >= 50
    for entry in quantised:
        scale_term = entry.layer.param_int(8)
        assert scale_term == (1 if entry.layer_type == "ConvolutionDepthWise" else 2)
        assert entry.weights[0].storage == "int8" and np.abs(entry.weights[0].values).max() <= 127
        weight_scale, bottom_scale = entry.weights[-2].values, entry.weights[-1].values
        assert len(weight_scale) == (entry.layer.param_int(7) if scale_term == 1 else entry.layer.param_int(0))
        assert bottom_scale.shape == (1,) and bottom_scale[0] > 0
        # Every channel's largest weight lands on +-127 (or +-31 for the 6-bit Winograd case).
        per_channel = np.abs(entry.weights[0].values.reshape(len(weight_scale), -1)).max(axis=1)
        assert set(per_channel) <= {127, 31}
    assert int.from_bytes(ncnn_int8["bin"].read_bytes()[:4], "little") == TAG_INT8  # first conv's weights, tagged


def test_ncnn_int8_runs_close_to_torch_and_is_smaller(ncnn_int8, ncnn_fp32, held_out, torch_embeddings):
    fp32 = ncnn_fp32
    assert ncnn_int8["bin_bytes"] < 0.4 * fp32["bin_bytes"]
    int8_runner = NcnnRunner(ncnn_int8["param"], ncnn_int8["bin"], SPEC, "int8")
    fp32_runner = NcnnRunner(fp32["param"], fp32["bin"], SPEC, "fp32")
    int8_embeddings, fp32_embeddings = int8_runner.embed(held_out), fp32_runner.embed(held_out)
    cosines = _cosines(int8_embeddings, torch_embeddings)
    assert cosines.min() >= INT8_GATE.min_cosine
    # It really runs in int8: further from PyTorch than ncnn's own fp32 run of the same weights.
    assert cosines.mean() < _cosines(fp32_embeddings, torch_embeddings).mean()
    assert np.abs(int8_embeddings - fp32_embeddings).max() > 1e-4


def test_ncnn_int8_scales_drive_the_result(ncnn_int8, held_out, tmp_path):
    """Coarser activation steps (smaller bottom scales) must hurt: ncnn really reads the scales we wrote."""
    model = read_ncnn_model(ncnn_int8["param"], ncnn_int8["bin"])
    for entry in model.layers:
        if entry.layer.param_int(8):
            entry.weights[-1].values = entry.weights[-1].values * 0.05
    write_ncnn_model(model, tmp_path / "coarse.param", tmp_path / "coarse.bin")
    faithful = NcnnRunner(ncnn_int8["param"], ncnn_int8["bin"], SPEC, "int8").embed(held_out[:4])
    coarse = NcnnRunner(tmp_path / "coarse.param", tmp_path / "coarse.bin", SPEC, "int8").embed(held_out[:4])
    assert _cosines(faithful, coarse).min() < 0.999


def test_float_layers_stay_fp32(ncnn_fp32, calibration, tmp_path):
    fp32 = ncnn_fp32
    first_conv = next(e.name for e in read_ncnn_model(fp32["param"], fp32["bin"]).layers if e.layer_type == "Convolution")
    record = quantise_ncnn_export(fp32["param"], fp32["bin"], SPEC, tmp_path, calibration[:4], float_layers=(first_conv,))
    assert first_conv in record["float_layers"] and first_conv not in record["int8_layers"]
    entry = read_ncnn_model(record["param"], record["bin"]).layer(first_conv)
    assert entry.layer.param_int(8) == 0 and entry.weights[0].storage == "fp32"
    with pytest.raises(ValueError, match="no_such_layer"):
        quantise_ncnn_export(fp32["param"], fp32["bin"], SPEC, tmp_path, calibration[:4], float_layers=("no_such_layer",))
    mixed = quantise_ncnn_export(fp32["param"], fp32["bin"], SPEC, tmp_path, calibration[:4], depthwise_fp32=True, method="kl")
    types = {e.name: e.layer_type for e in read_ncnn_model(mixed["param"], mixed["bin"]).layers}
    assert {types[name] for name in mixed["float_layers"]} == {"ConvolutionDepthWise"}
    assert {types[name] for name in mixed["int8_layers"]} == {"Convolution"}


def test_weight_scales_are_per_output_channel(ncnn_fp32):
    fp32 = ncnn_fp32
    entry = next(e for e in read_ncnn_model(fp32["param"], fp32["bin"]).layers if e.layer_type == "ConvolutionDepthWise")
    scales = weight_scales(entry)
    weights = entry.weights[0].values.reshape(len(scales), -1)
    np.testing.assert_allclose(scales, 127 / np.abs(weights).max(axis=1), rtol=1e-6)


def test_onnx_int8_is_static_qdq_and_close_to_torch(student, calibration, held_out, torch_embeddings, tmp_path):
    record = export_onnx_int8(student, SPEC, tmp_path / "student_int8.onnx", calibration, depthwise_fp32=True)
    assert record["quantize_linear_nodes"] > 50 and record["calibration"]["images"] == len(calibration)
    depthwise = [name for name, m in student.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(record["float_nodes"]) == len(depthwise)
    runner = OnnxRuntimeRunner(tmp_path / "student_int8.onnx", SPEC, "int8")
    embeddings = runner.embed(held_out)
    cosines = _cosines(embeddings, torch_embeddings)
    assert INT8_GATE.min_cosine <= cosines.min() and cosines.mean() < 0.99999
    with pytest.raises(ValueError, match="calibration method"):
        export_onnx_int8(student, SPEC, tmp_path / "x.onnx", calibration, method="minmax")


def _pairs(images: np.ndarray) -> VerificationPairs:
    return VerificationPairs(images, np.array([True, False] * (len(images) // 4)), "held-out")


@pytest.mark.parametrize(("min_cosine", "kept"), [(INT8_GATE.min_cosine, True), (0.999999, False)])
def test_export_gate_keeps_or_drops_int8(ncnn_int8, student, held_out, torch_embeddings, tmp_path, min_cosine, kept):
    folder = tmp_path / "export"
    folder.mkdir()
    files = []
    for key in ("param", "bin"):
        (folder / ncnn_int8[key].name).write_bytes(ncnn_int8[key].read_bytes())
        files.append(ncnn_int8[key].name)
    record = {"format": "ncnn", "precision": "int8", "status": "exported", "files": files, "bytes": 123}
    gates = {"int8": GateConfig(min_cosine=min_cosine, max_accuracy_delta_points=100.0)}
    parity = ParityConfig(gates=gates)
    subset, reference = parity_subset(_pairs(held_out), None), torch_embeddings
    keep_if_int8_gate_passes(folder, record, SPEC, subset, reference, parity, student)
    assert record["gate_result"]["cosine_min"] is not None
    if kept:
        assert record["status"] == "exported" and all((folder / name).is_file() for name in files)
        return
    assert record["status"] == "dropped" and record["files"] == [] and list(folder.iterdir()) == []
    assert record["reason"].startswith("failed int8 gate (cos min")
    assert "first divergent layer" in record["reason"] or "no single layer" in record["reason"]
    result = parity_for_record(folder, record, SPEC, subset, reference, parity)
    assert result.status == "dropped" and result.reason.startswith("failed int8 gate (cos min")
    assert result.cosine_min == record["gate_result"]["cosine_min"] and result.bytes == 123
    assert failed_parity({"results": [result.to_dict()]}) == []  # a dropped int8 does not fail the run


def test_export_gate_fails_an_int8_model_that_cannot_run(ncnn_int8, student, held_out, torch_embeddings, tmp_path):
    """A broken int8 file is a failed export (which fails the run), not a quiet 'dropped'."""
    (tmp_path / "student_int8.ncnn.param").write_bytes(ncnn_int8["param"].read_bytes())
    (tmp_path / "student_int8.ncnn.bin").write_bytes(ncnn_int8["bin"].read_bytes()[:1000])
    record = {"format": "ncnn", "precision": "int8", "status": "exported", "bytes": 1,
              "files": ["student_int8.ncnn.param", "student_int8.ncnn.bin"]}
    keep_if_int8_gate_passes(tmp_path, record, SPEC, parity_subset(_pairs(held_out), None), torch_embeddings,
                             ParityConfig(), student)
    assert record["status"] == "failed" and "could not load weights" in record["error"]
    result = parity_for_record(tmp_path, record, SPEC, parity_subset(_pairs(held_out), None), torch_embeddings, ParityConfig())
    assert failed_parity({"results": [result.to_dict()]}) == [result.to_dict()]
