"""ncnn and CoreML exports of a small student: numeric parity (ncnn), package validation (CoreML on Linux)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.export.coreml_export import export_coreml
from deploy.export.ncnn_export import export_ncnn
from deploy.runners.coreml_runner import CoreMLRunner, coreml_prediction_available, validate_coreml_package
from deploy.runners.ncnn_runner import NcnnRunner, io_blob_names, list_blobs, read_param_layers
from pipeline.models.registry import create_model
from pipeline.preprocess import PreprocessSpec, preprocess

SPEC = PreprocessSpec()


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    """A small student whose BatchNorm and PReLU are not at their init values, so folding them is tested."""
    torch.manual_seed(0)
    model = create_model("mobilefacenet", width=0.25)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.05, 0.4)
    return model.eval()


@pytest.fixture(scope="module")
def face_images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (8, SPEC.height, SPEC.width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def torch_embeddings(student: torch.nn.Module, face_images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return student(torch.from_numpy(preprocess(face_images, SPEC))).numpy()


@pytest.fixture(scope="module")
def ncnn_exports(student: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out_dir = tmp_path_factory.mktemp("ncnn")
    return {precision: export_ncnn(student, SPEC, out_dir, precision) for precision in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def coreml_exports(student: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out_dir = tmp_path_factory.mktemp("coreml")
    return {
        precision: export_coreml(student, SPEC, out_dir / f"student_{precision}.mlpackage", precision)
        for precision in ("fp32", "fp16")
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(("precision", "min_cosine", "max_abs"), [("fp32", 0.9999, 1e-4), ("fp16", 0.999, 1e-2)])
def test_ncnn_matches_torch(ncnn_exports, face_images, torch_embeddings, precision, min_cosine, max_abs):
    export = ncnn_exports[precision]
    runner = NcnnRunner(export["param"], export["bin"], SPEC, precision=precision)
    embeddings = runner.embed(face_images, batch_size=3)  # uneven batches exercise the per-image loop
    runner.close()
    assert embeddings.shape == torch_embeddings.shape
    assert _cosines(embeddings, torch_embeddings).min() >= min_cosine
    assert np.abs(embeddings - torch_embeddings).max() <= max_abs


def test_ncnn_export_writes_only_param_and_bin(ncnn_exports):
    out_dir = Path(ncnn_exports["fp32"]["param"]).parent
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "student_fp16.ncnn.bin", "student_fp16.ncnn.param", "student_fp32.ncnn.bin", "student_fp32.ncnn.param",
    ]
    # fp16 stores weights as fp16: the weights file is about half the size.
    assert ncnn_exports["fp16"]["bin_bytes"] < 0.6 * ncnn_exports["fp32"]["bin_bytes"]


def test_ncnn_blobs_parse_and_extract(ncnn_exports, face_images):
    export = ncnn_exports["fp32"]
    layers = list_blobs(export["param"])
    assert layers[0][0] == "Input" and layers[0][2] == [export["input_blob"]]
    assert (export["input_blob"], export["output_blob"]) == io_blob_names(export["param"])
    assert len(layers) == export["layers"]
    runner = NcnnRunner(export["param"], export["bin"], SPEC)
    first_conv_output = next(outputs[0] for layer_type, _, outputs in layers if layer_type == "Convolution")
    image = preprocess(face_images[:1], SPEC)[0]
    blobs = runner.extract_blobs(image, [first_conv_output, export["output_blob"]])
    assert blobs[first_conv_output].ndim == 3 and blobs[first_conv_output].shape[1:] == (56, 56)
    np.testing.assert_allclose(blobs[export["output_blob"]].reshape(1, -1), runner.infer(image[None]), atol=1e-6)


def test_ncnn_layer_params_parse(ncnn_exports, student):
    layers = read_param_layers(ncnn_exports["fp32"]["param"])
    first_conv = next(layer for layer in layers if layer.layer_type == "Convolution")
    torch_conv = student.stem[0][0]
    assert first_conv.param_int(0) == torch_conv.out_channels  # num_output
    assert first_conv.param_int(6) == torch_conv.weight.numel()  # weight_data_size
    assert first_conv.param_int(3) == torch_conv.stride[0]
    assert first_conv.param_int(8) == 0 and first_conv.param_int(8, 7) == 7  # absent: ncnn's default applies


def test_ncnn_runner_rejects_unknown_precision(ncnn_exports):
    export = ncnn_exports["fp32"]
    with pytest.raises(ValueError, match="bf16"):
        NcnnRunner(export["param"], export["bin"], SPEC, precision="bf16")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_coreml_package_validates(coreml_exports, precision):
    export = coreml_exports[precision]
    facts = validate_coreml_package(export["path"], SPEC, precision)
    assert facts["precision"] == precision
    assert facts["input_shape"][1:] == [3, SPEC.height, SPEC.width]
    assert facts["output_shape"][-1] == SPEC.embedding_dim
    assert PreprocessSpec.from_dict(facts["preprocess"]) == SPEC
    if export["flexible_batch"]:
        assert facts["batch_range"] == export["batch_range"]


@pytest.mark.parametrize(
    ("wrong_spec", "named_field"),
    [(PreprocessSpec(embedding_dim=128), "embedding_dim"), (PreprocessSpec(height=96), "height"),
     (PreprocessSpec(mean=(0.0, 0.0, 0.0)), "mean")],
)
def test_coreml_package_mismatch_names_path(coreml_exports, wrong_spec, named_field):
    path = coreml_exports["fp32"]["path"]
    with pytest.raises(ValueError, match=named_field) as raised:
        validate_coreml_package(path, wrong_spec)
    assert str(path) in str(raised.value)


def test_coreml_precision_mismatch_raises(coreml_exports):
    with pytest.raises(ValueError, match="computes in fp16, expected fp32"):
        validate_coreml_package(coreml_exports["fp16"]["path"], SPEC, "fp32")


def test_coreml_prediction(coreml_exports, face_images, torch_embeddings):
    available, reason = coreml_prediction_available()
    runner = CoreMLRunner(coreml_exports["fp32"]["path"], SPEC, "fp32")
    if not available:
        with pytest.raises(RuntimeError, match=re.escape(reason)):
            runner.infer(preprocess(face_images[:1], SPEC))
        pytest.skip(reason)
    embeddings = runner.embed(face_images)
    assert _cosines(embeddings, torch_embeddings).min() >= 0.9999


class _PackageWriter:
    """Stands in for an MLModel: `save` writes a folder, or fails halfway like a full disk would."""

    def __init__(self, content: str, fail: bool = False) -> None:
        self.content, self.fail = content, fail

    def save(self, path: str) -> None:
        Path(path).mkdir()
        (Path(path) / "weights.bin").write_text(self.content)
        if self.fail:
            raise OSError("disk full")


def test_coreml_package_replaced_only_when_complete(tmp_path):
    from deploy.export.coreml_export import _save_package_atomic

    target = tmp_path / "student_fp32.mlpackage"
    _save_package_atomic(_PackageWriter("old"), target)
    with pytest.raises(OSError, match="disk full"):
        _save_package_atomic(_PackageWriter("half", fail=True), target)
    assert (target / "weights.bin").read_text() == "old"
    _save_package_atomic(_PackageWriter("new"), target)
    assert (target / "weights.bin").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no staging folders left behind


def test_the_ncnn_layer_type_list_is_the_installed_ncnns_registry():
    import ncnn

    from pipeline.ncnn_layer_types import NCNN_LAYER_TYPES

    assert [ncnn.layer_to_index(name) for name in NCNN_LAYER_TYPES] == list(range(len(NCNN_LAYER_TYPES)))
    assert ncnn.layer_to_index("Convolutoin") == -1


def test_a_direct_fp16_export_runs_depthwise_layers_without_fp16_arithmetic_as_a_run_would(ncnn_exports):
    from deploy.export.ncnn_model import FEATMASK_KEY, FEATMASK_NO_FP16_ARITHMETIC

    layers = read_param_layers(ncnn_exports["fp16"]["param"])
    masked = [layer.layer_type for layer in layers if layer.param_int(FEATMASK_KEY) & FEATMASK_NO_FP16_ARITHMETIC]
    assert masked and set(masked) == {"ConvolutionDepthWise"}
    assert ncnn_exports["fp16"]["fp16_arithmetic_off_layers"]


def test_masking_a_mistyped_layer_type_fails_naming_the_param(ncnn_exports, tmp_path):
    import shutil

    from deploy.export.ncnn_model import mask_fp16_arithmetic

    param = tmp_path / "student_fp16.ncnn.param"
    shutil.copyfile(ncnn_exports["fp16"]["param"], param)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(param))}: unknown ncnn layer type 'Convolutoin' \(did you mean 'Convolution'\?\)"):
        mask_fp16_arithmetic(param, ("Convolutoin",))
    assert mask_fp16_arithmetic(param, ("LayerNorm",)) == []  # a real type this model lacks masks nothing


@pytest.mark.parametrize(("release", "runs"), [("12.7.4", False), ("", False), ("13.0", True), ("15.1", True)])
def test_coreml_prediction_needs_a_macos_that_runs_ios16_models(monkeypatch, release, runs):
    """On macOS 12 the iOS16-spec exports cannot predict: skip with that reason, never fail in predict()."""
    import platform

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "mac_ver", lambda: (release, ("", "", ""), "arm64"))
    available, reason = coreml_prediction_available()
    if runs:  # past the version check: on Linux the native bridge is what is missing, which says so
        assert "macOS 13" not in reason
    else:
        assert not available and "needs macOS 13 or newer" in reason and (release or "unknown") in reason
