"""First-divergent-layer localisation: every layer aligns on a faithful export, and a wrong weight injected into
one converted layer (ncnn .bin, ONNX initializer) is named, with the PyTorch module it stands for."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from deploy.export.ncnn_export import export_ncnn
from deploy.export.ncnn_model import read_ncnn_model, write_ncnn_model
from deploy.export.onnx_export import export_onnx
from deploy.localize import (
    align, first_divergent_layer, ncnn_layer_outputs, onnx_layer_outputs, onnx_module_path, torch_layer_outputs,
)
from deploy.parity_run import parity_for_record, parity_subset
from pipeline.config import ParityConfig
from pipeline.data.arrays import VerificationPairs
from pipeline.preprocess import PreprocessSpec, preprocess
from tests.conftest import input_sensitive_student

SPEC = PreprocessSpec()
FP32_COSINE = ParityConfig().gates["fp32"].min_cosine


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    return input_sensitive_student()


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, SPEC.height, SPEC.width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ncnn_fp32(student, tmp_path_factory) -> dict:
    return export_ncnn(student, SPEC, tmp_path_factory.mktemp("ncnn"), "fp32")


@pytest.fixture(scope="module")
def onnx_fp32(student, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "student_fp32.onnx"
    export_onnx(student, SPEC, path)
    return path


def _conv_modules(model: torch.nn.Module) -> list[str]:
    """Conv2d module names in definition order, which is this network's execution order."""
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]


def _batch(faces: np.ndarray) -> np.ndarray:
    return preprocess(faces[:1], SPEC)


def test_torch_outputs_fold_batchnorm_and_name_residual_adds(student, faces):
    outputs = torch_layer_outputs(student, torch.from_numpy(_batch(faces)))
    convs = [o for o in outputs if o.kind == "conv"]
    assert [o.name.split("+")[0] for o in convs] == _conv_modules(student)
    assert all(o.op == "Conv2d+BatchNorm2d" for o in convs)  # every conv here is followed by its BatchNorm
    residual_blocks = [name for name, m in student.named_modules() if getattr(m, "use_residual", False)]
    assert [o.name for o in outputs if o.kind == "add"] == residual_blocks
    assert outputs[-1].kind == "flatten" and outputs[-1].value.shape == (1, SPEC.embedding_dim)


@pytest.mark.parametrize("backend", ["onnx", "ncnn"])
def test_faithful_export_aligns_every_layer_and_agrees(backend, student, faces, ncnn_fp32, onnx_fp32):
    batch = _batch(faces)
    reference = torch_layer_outputs(student, torch.from_numpy(batch))
    candidate = (onnx_layer_outputs(onnx_fp32, batch) if backend == "onnx"
                 else ncnn_layer_outputs(ncnn_fp32["param"], ncnn_fp32["bin"], SPEC, "fp32", batch))
    assert len(align(reference, candidate)) == len(reference)
    layers = (lambda b: onnx_layer_outputs(onnx_fp32, b)) if backend == "onnx" else (
        lambda b: ncnn_layer_outputs(ncnn_fp32["param"], ncnn_fp32["bin"], SPEC, "fp32", b))
    divergence = first_divergent_layer(student, layers, faces[0], SPEC, FP32_COSINE)
    assert not divergence.found and divergence.layers_compared == len(reference)


def test_onnx_node_names_match_the_aligned_torch_modules(student, faces, onnx_fp32):
    batch = _batch(faces)
    pairs = align(torch_layer_outputs(student, torch.from_numpy(batch)), onnx_layer_outputs(onnx_fp32, batch))
    for torch_output, onnx_output in pairs:
        assert onnx_module_path(onnx_output.name) == torch_output.name.split("+")[0], (torch_output.name, onnx_output.name)


@pytest.mark.parametrize("conv_index", [0, 9, 30])
def test_wrong_ncnn_weight_is_localised(conv_index, student, faces, ncnn_fp32, tmp_path):
    model = read_ncnn_model(ncnn_fp32["param"], ncnn_fp32["bin"])
    convs = [e for e in model.layers if e.layer_type in ("Convolution", "ConvolutionDepthWise")]
    target = convs[conv_index]
    weights = target.weights[0].values
    weights[: len(weights) // 4] *= -1.0  # a sign error in a quarter of the kernel, as a bad converter might make
    write_ncnn_model(model, tmp_path / "bad.param", tmp_path / "bad.bin")
    divergence = first_divergent_layer(
        student, lambda b: ncnn_layer_outputs(tmp_path / "bad.param", tmp_path / "bad.bin", SPEC, "fp32", b), faces[0], SPEC,
        FP32_COSINE,
    )
    assert divergence.found
    assert divergence.backend_layer == target.name and divergence.backend_op == target.layer_type
    conv_module = _conv_modules(student)[conv_index]
    assert divergence.torch_module.split("+")[0] == conv_module and divergence.cosine < FP32_COSINE
    torch_names = [o.name.split("+")[0] for o in torch_layer_outputs(student, torch.from_numpy(_batch(faces)))]
    assert divergence.position == 1 + torch_names.index(conv_module)  # every layer before it agreed
    assert (divergence.last_agreeing_layer is None) == (conv_index == 0)


def test_wrong_onnx_initializer_is_localised(student, faces, onnx_fp32, tmp_path):
    graph = onnx.load(str(onnx_fp32))
    conv_nodes = [node for node in graph.graph.node if node.op_type == "Conv"]
    target = conv_nodes[17]
    initializer = next(i for i in graph.graph.initializer if i.name == target.input[1])
    weights = numpy_helper.to_array(initializer).copy()
    weights[0] = np.random.default_rng(1).normal(0, np.abs(weights).max(), weights[0].shape)  # one wrong output channel
    initializer.CopyFrom(numpy_helper.from_array(weights, initializer.name))
    bad_path = tmp_path / "bad.onnx"
    onnx.save(graph, str(bad_path))
    divergence = first_divergent_layer(student, lambda b: onnx_layer_outputs(bad_path, b), faces[0], SPEC, FP32_COSINE)
    assert divergence.found and divergence.backend_layer == target.name and divergence.backend_op == "Conv"
    assert divergence.torch_module.split("+")[0] == _conv_modules(student)[17]
    assert target.name in divergence.summary() and "cosine" in divergence.summary()


def test_parity_failure_reason_names_the_layer(student, faces, ncnn_fp32, tmp_path):
    model = read_ncnn_model(ncnn_fp32["param"], ncnn_fp32["bin"])
    target = [e for e in model.layers if e.layer_type == "Convolution"][20]
    weights = target.weights[0].values
    weights[:] = np.random.default_rng(2).normal(0, 3 * weights.std(), weights.shape)  # weights from the wrong tensor
    write_ncnn_model(model, tmp_path / "student_fp32.ncnn.param", tmp_path / "student_fp32.ncnn.bin")
    record = {"format": "ncnn", "precision": "fp32", "status": "exported", "bytes": 1,
              "files": ["student_fp32.ncnn.param", "student_fp32.ncnn.bin"]}
    with torch.no_grad():
        reference = student(torch.from_numpy(preprocess(faces, SPEC))).numpy()
    subset = parity_subset(VerificationPairs(faces, np.array([True, False]), "faces"), None)
    result = parity_for_record(tmp_path, record, SPEC, subset, reference, ParityConfig(), model=student)
    assert result.status == "fail"
    assert result.first_divergent_layer["backend_layer"] == target.name
    assert f"first divergent layer: {target.name} (Convolution)" in result.reason
