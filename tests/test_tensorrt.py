"""TensorRT: what can be checked without TensorRT (the probe and its reason, the build plan per version, the profiles,
the ONNX sources, the builder's calls against a stand-in `tensorrt` module, the timing cache, the device-side engine
folder, that nothing is built where it cannot run), and a real engine where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from deploy.export import tensorrt_export
from deploy.export.calibration import calibration_batches
from deploy.export.tensorrt_export import (
    NO_CUDA_DEVICE,
    NOT_INSTALLED,
    ProfileShapes,
    attach_timing_cache,
    build_engine,
    calibration_profile_shapes,
    cuda_device_count,
    engines_here,
    export_tensorrt,
    onnx_is_fp16,
    profile_shapes,
    tensorrt_available,
    tensorrt_build_plan,
    tensorrt_qdq_problems,
    write_fp16_onnx,
    write_tensorrt_qdq_onnx,
)
from pipeline.artifacts import write_json_atomic
from pipeline.models.registry import create_model
from pipeline.preprocess import PreprocessSpec, preprocess
from pipeline.run_layout import EXPORTS_FILE, MODEL_MANIFEST

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


@pytest.mark.parametrize(("precision", "min_cosine"), [("fp32", 0.9999), ("fp16", 0.999), ("int8", 0.95)])
def test_engine_matches_torch(tmp_path, precision, min_cosine):
    available, reason = tensorrt_available()
    if not available:
        pytest.skip(f"skipped: {reason}")
    from deploy.runners.tensorrt_runner import TensorRTRunner

    torch.manual_seed(0)
    model = create_model("mobilefacenet", width=0.25).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    calibration = rng.integers(0, 256, (16, SPEC.height, SPEC.width, 3), dtype=np.uint8) if precision == "int8" else None
    record = export_tensorrt(model, SPEC, tmp_path, precision, calibration, max_batch=4)
    assert (tmp_path / f"student_{precision}.engine.timing").is_file()
    runner = TensorRTRunner(tmp_path / record["files"][0], SPEC, precision)
    embeddings = runner.embed(images)  # 6 images through a max-batch-4 profile: two chunks
    with torch.no_grad():
        expected = model(torch.from_numpy(preprocess(images, SPEC))).numpy()
    cosines = (embeddings * expected).sum(1) / np.linalg.norm(embeddings, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= min_cosine  # int8: ONNX Runtime runs the same Q/DQ graph at 0.99 on CPU
    rebuilt = export_tensorrt(model, SPEC, tmp_path, precision, calibration, max_batch=4)  # the saved timing cache is reused
    assert rebuilt["build_plan"] == record["build_plan"]


# --- The build plan per TensorRT version -----------------------------------------------------------------------

PLANS = {  # (version, precision) -> (source ONNX, strongly typed, network flags, builder flags set, cleared)
    ("10.3.0.26", "fp32"): ("fp32", True, ("STRONGLY_TYPED",), (), ("TF32",)),
    ("10.3.0.26", "fp16"): ("fp32", False, (), ("FP16",), ()),  # weak typing not yet deprecated: the FP16 flag
    ("10.3.0.26", "int8"): ("int8-qdq", True, ("STRONGLY_TYPED",), (), ()),
    ("10.12.0", "fp32"): ("fp32", True, ("STRONGLY_TYPED",), (), ("TF32",)),
    ("10.12.0", "fp16"): ("fp16", True, ("STRONGLY_TYPED",), (), ()),  # weak typing deprecated: the fp16 copy
    ("10.12.0", "int8"): ("int8-qdq", True, ("STRONGLY_TYPED",), (), ()),
    ("11.0.0", "fp32"): ("fp32", True, (), (), ("TF32",)),  # always strongly typed; the flag is ignored
    ("11.0.0", "fp16"): ("fp16", True, (), (), ()),
    ("11.0.0", "int8"): ("int8-qdq", True, (), (), ()),
    ("8.6.1", "int8"): ("int8-qdq", False, ("EXPLICIT_BATCH",), ("INT8", "FP16"), ()),  # Q/DQ, weakly typed
}


@pytest.mark.parametrize(("version", "precision"), list(PLANS))
def test_build_plan_follows_the_version(version, precision):
    plan = tensorrt_build_plan(version, precision)
    assert (plan.source, plan.strongly_typed, plan.network_flags, plan.builder_flags, plan.cleared_flags) == PLANS[version, precision]
    assert not plan.calibrator


@pytest.mark.parametrize("version", ["11.0.0", "11.4"])
def test_tensorrt_11_plans_use_no_removed_api(version):
    for precision in ("fp32", "fp16", "int8"):
        plan = tensorrt_build_plan(version, precision)
        assert not {"FP16", "INT8"} & set(plan.builder_flags) and not plan.calibrator
    with pytest.raises(ValueError, match="no implicit INT8 calibration"):
        tensorrt_build_plan(version, "int8", qdq_onnx=False)


@pytest.mark.parametrize("version", ["10.3.0", "10.12.0"])
def test_implicit_calibration_only_where_there_is_no_qdq_onnx(version):
    plan = tensorrt_build_plan(version, "int8", qdq_onnx=False)
    assert plan.calibrator and plan.builder_flags == ("INT8", "FP16") and not plan.strongly_typed


@pytest.mark.parametrize(("version", "precision"), [("8.4.3", "fp32"), ("10.3", "bf16"), ("ten", "fp32")])
def test_build_plan_refuses_what_it_cannot_build(version, precision):
    with pytest.raises(ValueError):
        tensorrt_build_plan(version, precision)


def test_calibration_profile_is_the_calibrators_batch():
    """TensorRT calibrates at the calibration profile's opt shape: it must be the batch the calibrator hands over."""
    batches = [np.zeros((8, 3, 96, 80), np.float32)] * 3
    assert calibration_profile_shapes(batches) == ProfileShapes(*[(8, 3, 96, 80)] * 3)
    assert profile_shapes(PreprocessSpec(height=96, width=80), 64).opt == (1, 3, 96, 80)  # the main profile: not for calibration
    with pytest.raises(ValueError, match="one shape"):
        calibration_profile_shapes([np.zeros((8, 3, 4, 4), np.float32), np.zeros((4, 3, 4, 4), np.float32)])


# --- The ONNX sources ------------------------------------------------------------------------------------------

SMALL = PreprocessSpec(height=16, width=16, embedding_dim=8)


def write_small_onnx(path: Path) -> Path:
    """Conv 3->8 with bias -> Relu -> global average pool -> flatten, batch dynamic: a graph ONNX Runtime runs and quantises."""
    rng = np.random.default_rng(0)
    weights = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], rng.standard_normal(216).astype(np.float32))
    bias = helper.make_tensor("b", TensorProto.FLOAT, [8], rng.standard_normal(8).astype(np.float32))
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["embedding"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])], [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def small_batches(count: int = 2) -> list[np.ndarray]:
    return [np.random.default_rng(i).standard_normal((8, 3, 16, 16)).astype(np.float32) for i in range(count)]


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]


def test_fp16_copy_keeps_float32_io_and_is_in_topological_order(tmp_path):
    fp32 = write_small_onnx(tmp_path / "m.onnx")
    fp16 = write_fp16_onnx(fp32, tmp_path / "m.fp16.onnx")
    model = onnx.load(str(fp16))
    onnx.checker.check_model(model)  # the checker, like TensorRT's parser, wants producers before consumers
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [TensorProto.FLOAT] * 2
    assert onnx_is_fp16(fp16) and not onnx_is_fp16(fp32)
    batch = small_batches(1)[0]
    expected, got = run_onnx(fp32, batch), run_onnx(fp16, batch)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)


def test_qdq_for_tensorrt_is_symmetric_int8_without_bias_quantisation(tmp_path):
    fp32 = write_small_onnx(tmp_path / "m.onnx")
    qdq = write_tensorrt_qdq_onnx(fp32, tmp_path / "m.qdq.onnx", "input", small_batches())
    model = onnx.load(str(qdq))
    assert tensorrt_qdq_problems(model) == []
    assert {n.op_type for n in model.graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Conv"}
    batch = small_batches(1)[0]
    assert np.corrcoef(run_onnx(qdq, batch).ravel(), run_onnx(fp32, batch).ravel())[0, 1] > 0.99


def test_qdq_problems_name_what_tensorrt_refuses(tmp_path):
    """ONNX Runtime's defaults (asymmetric activations, int32 biases), as the onnx:int8 export uses, are not TensorRT's."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(small_batches())

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {"input": batch}

    fp32 = write_small_onnx(tmp_path / "m.onnx")
    quantize_static(str(fp32), str(tmp_path / "ort.onnx"), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": False})
    problems = " ".join(tensorrt_qdq_problems(onnx.load(str(tmp_path / "ort.onnx"))))
    assert "not 0 (asymmetric" in problems and "int32 biases" in problems
    assert tensorrt_qdq_problems(onnx.load(str(fp32))) == ["no QuantizeLinear nodes (not a Q/DQ model)"]


# --- The builder's calls, against a stand-in `tensorrt` module ---------------------------------------------------

FOREIGN_CACHE = b"timing cache of another GPU"


class FakeCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+timings"


class FakeProfile:
    def set_shape(self, name, low, opt, high) -> None:
        self.shape = (name, tuple(low), tuple(opt), tuple(high))


class FakeConfig:
    """IBuilderConfig as far as build_engine uses it; a cache from another GPU is refused as TensorRT does."""

    def __init__(self) -> None:
        self.flags, self.cleared, self.profiles = set(), set(), []
        self.cache = self.calibration_profile = self.int8_calibrator = None

    def set_memory_pool_limit(self, pool, size) -> None:
        self.workspace = size

    def create_timing_cache(self, data: bytes) -> FakeCache:
        return FakeCache(bytes(data))

    def set_timing_cache(self, cache: FakeCache, ignore_mismatch: bool) -> bool:
        refused = cache.data == FOREIGN_CACHE and not ignore_mismatch
        self.cache = None if refused else cache
        return not refused

    def get_timing_cache(self):
        return self.cache

    def add_optimization_profile(self, profile) -> None:
        self.profiles.append(profile)

    def set_calibration_profile(self, profile) -> None:
        self.calibration_profile = profile

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag) -> None:
        self.cleared.add(flag)


def fake_tensorrt(version: str) -> types.ModuleType:
    """A `tensorrt` module with the members of `version`: 11 has no FP16/INT8 flags, no EXPLICIT_BATCH, no calibrators."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.built = []
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**({"EXPLICIT_BATCH": 0} if major < 10 else {"STRONGLY_TYPED": 1}))
    trt.BuilderFlag = types.SimpleNamespace(**{name: name for name in ("TF32", *(("FP16", "INT8") if major < 11 else ()))})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")

    class Builder:
        def __init__(self, logger) -> None:
            self.config = FakeConfig()
            trt.built.append(self)

        def create_network(self, flags: int):
            self.network_flags = flags
            return types.SimpleNamespace()

        def create_builder_config(self) -> FakeConfig:
            return self.config

        def create_optimization_profile(self) -> FakeProfile:
            return FakeProfile()

        def build_serialized_network(self, network, config) -> bytes:
            return b"engine built by " + version.encode()

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            trt.built[-1].parsed = onnx.load_from_string(data)
            return True

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version: str) -> types.ModuleType:
        module = fake_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        return module

    return install


def build_with(trt, tmp_path: Path, precision: str, onnx_path: Path, **kwargs) -> tuple[dict, object]:
    facts = build_engine(onnx_path, tmp_path / f"student_{precision}.engine", "input", profile_shapes(SMALL, 32, 4), precision,
                         tmp_path / f"student_{precision}.engine.timing", **kwargs)
    return facts, trt.built[-1]


@pytest.mark.parametrize(("version", "precision"), [key for key in PLANS if not key[0].startswith("8")])
def test_builder_is_configured_by_the_plan(fake_trt, tmp_path, version, precision):
    trt = fake_trt(version)
    plan = tensorrt_build_plan(version, precision)
    fp32 = write_small_onnx(tmp_path / "student_fp32.onnx")
    source = write_tensorrt_qdq_onnx(fp32, tmp_path / "student_int8.trt.onnx", "input", small_batches()) if precision == "int8" else fp32
    facts, builder = build_with(trt, tmp_path, precision, source)
    assert builder.network_flags == sum(1 << getattr(trt.NetworkDefinitionCreationFlag, n) for n in plan.network_flags)
    assert builder.config.flags == set(plan.builder_flags) and builder.config.cleared == set(plan.cleared_flags)
    assert [p.shape for p in builder.config.profiles] == [("input", (1, 3, 16, 16), (4, 3, 16, 16), (32, 3, 16, 16))]
    assert builder.config.calibration_profile is None and builder.config.int8_calibrator is None
    parsed_fp16 = any(t.data_type == TensorProto.FLOAT16 for t in builder.parsed.graph.initializer)
    assert parsed_fp16 == (plan.source == "fp16")  # from 10.12 the fp16 copy is what TensorRT parses
    assert any(n.op_type == "QuantizeLinear" for n in builder.parsed.graph.node) == (precision == "int8")
    assert (tmp_path / f"student_{precision}.engine").read_bytes() == b"engine built by " + version.encode()
    assert facts["build_plan"] == plan.describe() and facts["tensorrt_version"] == version


def test_implicit_int8_calibrates_on_a_profile_of_its_batch(fake_trt, tmp_path, monkeypatch):
    trt = fake_trt("10.3.0")
    monkeypatch.setattr(tensorrt_export, "make_entropy_calibrator", lambda batches, cache: ("calibrator", len(batches)))
    _, builder = build_with(trt, tmp_path, "int8", write_small_onnx(tmp_path / "m.onnx"), calibration=small_batches(3))
    assert builder.config.calibration_profile.shape == ("input", (8, 3, 16, 16), (8, 3, 16, 16), (8, 3, 16, 16))
    assert [p.shape for p in builder.config.profiles] == [("input", (1, 3, 16, 16), (4, 3, 16, 16), (32, 3, 16, 16))]
    assert builder.config.int8_calibrator == ("calibrator", 3) and builder.config.flags == {"INT8", "FP16"}
    assert builder.network_flags == 0  # weakly typed: the only way an fp32 graph becomes int8


def test_int8_from_a_float_graph_needs_calibration_or_fails_on_11(fake_trt, tmp_path):
    fake_trt("10.12.0")
    with pytest.raises(ValueError, match="no Q/DQ nodes"):
        build_with(sys.modules["tensorrt"], tmp_path, "int8", write_small_onnx(tmp_path / "m.onnx"))
    trt = fake_trt("11.0.0")
    with pytest.raises(ValueError, match="no implicit INT8 calibration"):
        build_with(trt, tmp_path, "int8", write_small_onnx(tmp_path / "m.onnx"), calibration=small_batches())


def test_timing_cache_from_another_gpu_is_replaced_not_crashed_on(fake_trt, tmp_path, caplog):
    trt = fake_trt("10.3.0")
    (tmp_path / "student_fp32.engine.timing").write_bytes(FOREIGN_CACHE)
    with caplog.at_level(logging.WARNING, logger=tensorrt_export.__name__):
        _, builder = build_with(trt, tmp_path, "fp32", write_small_onnx(tmp_path / "m.onnx"))
    assert "another GPU" in caplog.text
    assert builder.config.cache.data == b""  # a fresh cache was attached and built with
    assert (tmp_path / "student_fp32.engine.timing").read_bytes() == b"+timings"
    (tmp_path / "student_fp32.engine.timing").write_bytes(b"ours")
    assert attach_timing_cache(FakeConfig(), tmp_path / "student_fp32.engine.timing").data == b"ours"  # this GPU's is reused


# --- Engines built on the device from the run's export folder ----------------------------------------------------


def write_export_dir(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_small_onnx(folder / "student_fp32.onnx")
    (folder / "student_fp16.engine").write_bytes(b"built on the host's GPU")
    write_json_atomic(folder / EXPORTS_FILE, records)
    write_json_atomic(folder / MODEL_MANIFEST, {"model": "small", "preprocess": SMALL.to_dict()})
    return folder


RUN_RECORDS = [
    {"format": "onnx", "precision": "fp32", "status": "exported", "files": ["student_fp32.onnx"]},
    {"format": "tensorrt", "precision": "fp16", "status": "exported", "files": ["student_fp16.engine"]},
    {"format": "tensorrt", "precision": "int8", "status": "skipped", "files": [], "reason": NO_CUDA_DEVICE},
]


def test_engines_are_built_here_never_taken_from_the_host(tmp_path, monkeypatch):
    export_dir = write_export_dir(tmp_path / "export", RUN_RECORDS)
    built = []

    def fake_build(onnx_path, engine_path, input_name, shapes, precision, timing_cache_path, **kwargs):
        built.append((Path(onnx_path).name, precision, shapes.max))
        engine_path.write_bytes(b"built here")
        return {"engine_bytes": 10, "tensorrt_version": "10.3.0"}

    monkeypatch.setattr(tensorrt_export, "tensorrt_available", lambda: (True, ""))
    monkeypatch.setattr(tensorrt_export, "installed", lambda module: True)
    monkeypatch.setattr(tensorrt_export, "build_engine", fake_build)
    records = engines_here(export_dir, tmp_path / "here", max_batch=16)
    assert built == [("student_fp32.onnx", "fp16", (16, 3, 16, 16))]  # from the run's ONNX export, on this machine
    fp16, int8 = records[1], records[2]
    assert fp16["status"] == "exported" and fp16["built_here"] and (tmp_path / "here" / "student_fp16.engine").read_bytes() == b"built here"
    assert int8["status"] == "skipped" and "no Q/DQ ONNX TensorRT reads" in int8["reason"]
    assert (tmp_path / "here" / "student_fp32.onnx").resolve() == (export_dir / "student_fp32.onnx").resolve()
    assert json.loads((tmp_path / "here" / EXPORTS_FILE).read_text()) == records


def test_engines_here_says_why_nothing_was_built(tmp_path):
    available, reason = tensorrt_available()
    if available:
        pytest.skip("TensorRT can run here")
    export_dir = write_export_dir(tmp_path / "export", RUN_RECORDS)
    records = engines_here(export_dir, tmp_path / "here")
    assert [(r["status"], r.get("reason")) for r in records[1:]] == [("skipped", reason)] * 2
    assert not (tmp_path / "here" / "student_fp16.engine").exists()  # the host's engine is not offered for timing
