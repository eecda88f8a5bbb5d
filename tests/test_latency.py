"""The latency matrix on a real (small) ONNX model: timing, percentiles, memory, the result schema, comparison,
FLOPs, and the device-image path that runs without torch. Fast: no pipeline run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from benchmarks.benchncnn import BENCHNCNN_BACKEND, NOT_FOUND_REASON, benchncnn_here
from benchmarks.compare import compare_results, format_comparison
from benchmarks.compare import main as compare_main
from benchmarks.latency import (
    EXPORTS_FILE,
    MODEL_MANIFEST,
    SCHEMA_VERSION,
    BenchmarkTarget,
    benchmark_target,
    latency_document,
    load_latency_document,
    summarise_timings,
    time_batches,
    usable_thread_counts,
)
from benchmarks.memory import peak_memory
from deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from pipeline.artifacts import write_json_atomic
from pipeline.config import BenchmarkConfig
from pipeline.errors import DataError
from pipeline.preprocess import PreprocessSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = PreprocessSpec(height=16, width=16, embedding_dim=8)


def write_small_onnx(path: Path) -> Path:
    """Conv 3->8 (3x3) -> global average pool -> flatten: a real graph ONNX Runtime runs, batch dimension dynamic."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], np.random.default_rng(0).standard_normal(216).astype(np.float32))
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["embedding"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder as the export stage leaves it: the model, exports.json and model_manifest.json."""
    folder = tmp_path_factory.mktemp("export")
    write_small_onnx(folder / "student_fp32.onnx")
    write_json_atomic(folder / EXPORTS_FILE, [
        {"format": "onnx", "precision": "fp32", "status": "exported", "files": ["student_fp32.onnx"], "bytes": (folder / "student_fp32.onnx").stat().st_size},
        {"format": "ncnn", "precision": "fp32", "status": "failed", "files": [], "error": "RuntimeError: pnnx crashed"},
    ])
    write_json_atomic(folder / MODEL_MANIFEST, {"model": "small", "preprocess": SPEC.to_dict()})
    return folder


def faces(count: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)


class CountingRunner(OnnxRuntimeRunner):
    """The real ONNX Runtime runner, counting its calls and closes."""

    calls = 0
    closed = 0

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        CountingRunner.calls += 1
        return super()._infer(batch)

    def close(self) -> None:
        CountingRunner.closed += 1
        super().close()


def test_summary_statistics_are_those_of_the_timings() -> None:
    timings = np.random.default_rng(2).gamma(4.0, 0.5, 500)
    result = summarise_timings(timings, "onnx", "fp32", 2, 8, warmup_runs=3)
    p50, p90, p99 = np.percentile(timings, [50, 90, 99])
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == pytest.approx((p50, p90, p99), abs=1e-4)
    assert result.min_ms <= result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert result.std_ms == pytest.approx(timings.std(), abs=1e-4) and result.runs == 500
    assert result.images_per_s == pytest.approx(8 * 1000 / p50, rel=1e-3)


def test_timed_runs_are_a_floor_and_min_seconds_adds_runs(export_dir: Path) -> None:
    runner = CountingRunner(export_dir / "student_fp32.onnx", SPEC)
    batch = np.zeros((1, 3, 16, 16), np.float32)
    CountingRunner.calls = 0
    assert len(time_batches(runner, batch, warmup_runs=2, timed_runs=5)) == 5 and CountingRunner.calls == 7
    timings = time_batches(runner, batch, warmup_runs=0, timed_runs=5, min_seconds=0.2)
    assert 5 < len(timings) <= 5 * 20 and (timings.sum() >= 100 or len(timings) == 5 * 20)  # ms; loop overhead not counted
    capped = time_batches(runner, batch, warmup_runs=0, timed_runs=100_000, max_seconds=0.05)
    assert 5 <= len(capped) < 100_000  # a starved row stops on time, with its floor of runs
    assert len(time_batches(runner, batch, warmup_runs=0, timed_runs=100, max_seconds=1e-9)) == 5


def test_each_row_gets_a_fresh_runner_and_a_memory_figure(export_dir: Path) -> None:
    CountingRunner.calls = CountingRunner.closed = 0
    made = []

    def make_runner(threads: int) -> CountingRunner:
        made.append(threads)
        return CountingRunner(export_dir / "student_fp32.onnx", SPEC, "fp32", threads)

    settings = BenchmarkConfig(threads=[1], warmup_runs=2, timed_runs=5, min_timed_seconds=0, throughput_batch=4, throughput_runs=3)
    rows = benchmark_target(BenchmarkTarget("onnx", "fp32", make_runner, 1234), faces(4), [1], settings)
    assert [(r.batch, r.runs, r.warmup_runs) for r in rows] == [(1, 5, 2), (4, 3, 1)]
    assert made == [1, 1] and CountingRunner.closed == 2 and CountingRunner.calls == 5 + 2 + 3 + 1
    for row in rows:
        assert row.model_bytes == 1234 and row.backend == "onnx" and row.threads == 1
        assert row.peak_rss_mb >= row.rss_before_mb > 0


def test_peak_memory_counts_native_allocations() -> None:
    with peak_memory() as memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MB from C's allocator, touched
        del block
    assert memory.rise_mb >= 60


def test_thread_counts_above_the_cores_are_left_out() -> None:
    assert usable_thread_counts([4, 1, 2], 2) == ([1, 2], [4])
    assert usable_thread_counts([8], 2) == ([1], [8])


def test_result_file_round_trip_and_one_line_errors(tmp_path: Path) -> None:
    result = summarise_timings(np.array([1.0, 2.0, 3.0]), "onnx", "fp32", 1, 1, 0)
    document = latency_document([result], [{"backend": "coreml", "precision": "fp32", "reason": "needs macOS"}],
                                {"kind": "host"}, {"python": "3"}, None, {})
    path = write_json_atomic(tmp_path / "latency.json", document)
    loaded = load_latency_document(path)
    assert loaded["schema_version"] == SCHEMA_VERSION == 1 and loaded["results"][0]["p50_ms"] == 2.0
    for payload, problem in (({**document, "schema_version": 2}, "schema_version 2"), ({"kind": "parity"}, "not a latency result file"),
                             ({**document, "results": [{"backend": "onnx"}]}, "results\\[0\\] lacks precision")):
        write_json_atomic(path, payload)
        with pytest.raises(DataError, match=f"^{path}: .*{problem}"):
            load_latency_document(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not JSON"):
        load_latency_document(path)


def _document(p50_by_key: dict[tuple[str, int], float]) -> dict:
    rows = [summarise_timings(np.full(5, p50), backend, "fp32", threads, 1, 0) for (backend, threads), p50 in p50_by_key.items()]
    return latency_document(rows, [], {"kind": "host", "cpu": "x"}, {}, None, {})


def test_comparison_pairs_rows_and_reports_ratios(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _document({("onnx", 1): 2.0, ("ncnn", 1): 4.0, ("pytorch", 1): 9.0})
    b = _document({("onnx", 1): 5.0, ("ncnn", 1): 2.0, ("ncnn", 4): 1.0})
    matched, only_a, only_b = compare_results(a, b)
    ratios = {item.key[0]: item.ratio("p50_ms") for item in matched}
    assert ratios == {"onnx": 2.5, "ncnn": 0.5}
    assert only_a == [("pytorch", "fp32", 1, 1)] and only_b == [("ncnn", "fp32", 4, 1)]
    assert "2.50x" in format_comparison(a, b) and "only in A: pytorch/fp32/1/1" in format_comparison(a, b)
    across = compare_results(a, b, ("precision", "threads", "batch"))[0]
    assert len(across) == 1  # first row of each file pairs when backends are ignored
    write_json_atomic(tmp_path / "a.json", a)
    write_json_atomic(tmp_path / "b.json", b)
    assert compare_main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "B/A p50_ms" in capsys.readouterr().out
    assert compare_main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--backend-a", "pytorch", "--backend-b", "ncnn"]) == 0
    assert "| fp32 | 1 | 1 | 9.00 | 2.00 |" in capsys.readouterr().out  # A's pytorch row against B's ncnn row
    assert compare_main([str(tmp_path / "a.json"), str(tmp_path / "missing.json")]) == 2
    assert "missing.json: cannot read latency results" in capsys.readouterr().err


def test_desktop_benchncnn_row_is_skipped_with_the_reason(export_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ncnn_export = [{"format": "ncnn", "precision": "fp32", "status": "exported", "files": ["m.param", "m.bin"]}]
    monkeypatch.delenv("BENCHNCNN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert benchncnn_here(export_dir, [], (16, 16, 3), [1], 4) == ([], [])  # no ncnn export: nothing to say
    assert benchncnn_here(export_dir, ncnn_export, (16, 16, 3), [1], 4) == (
        [], [{"backend": BENCHNCNN_BACKEND, "precision": "fp16", "reason": NOT_FOUND_REASON}])
    monkeypatch.setenv("BENCHNCNN", str(tmp_path / "nowhere"))
    [skipped] = benchncnn_here(export_dir, ncnn_export, (16, 16, 3), [1], 4)[1]
    assert skipped["reason"] == f"benchncnn at {tmp_path / 'nowhere'} is missing or not executable"


def test_device_image_command_runs_without_torch(export_dir: Path, tmp_path: Path) -> None:
    """What docker/ images run: `python -m benchmarks.latency EXPORT_DIR --out FILE`, with torch made unimportable."""
    out = tmp_path / "device.json"
    code = ("import sys; sys.modules['torch'] = None; from benchmarks.latency import main; "
            f"sys.exit(main([{str(export_dir)!r}, '--out', {str(out)!r}, '--threads', '1', '--timed-runs', '5', "
            "'--warmup-runs', '1', '--min-timed-seconds', '0', '--throughput-batch', '2', '--throughput-runs', '2']))")
    env = {k: v for k, v in os.environ.items() if k != "BENCHNCNN"}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    document = load_latency_document(out)
    assert [(r["backend"], r["batch"]) for r in document["results"]] == [("onnx", 1), ("onnx", 2)]
    assert document["skipped"][0] == {"backend": "ncnn", "precision": "fp32", "reason": "export failed: RuntimeError: pnnx crashed"}
    assert {s["backend"] for s in document["skipped"][1:]} <= {"tensorrt-trtexec"}  # no trtexec here: said so, per precision
    assert document["device"]["kind"] == "host" and document["device"]["cpu_count"] >= 1


def test_flops_are_counted_by_running_the_model() -> None:
    import torch

    from benchmarks.model_stats import model_complexity
    from pipeline.models.registry import create_model

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    counted = model_complexity(conv, (1, 3, 16, 16))
    assert counted["macs"] == 16 * 16 * 8 * 3 * 3 * 3 and counted["flops"] == 2 * counted["macs"] and counted["parameters"] == 216
    student = model_complexity(create_model("mobilefacenet"), (1, 3, 112, 112))
    assert 0.20e9 < student["macs"] < 0.24e9  # MobileFaceNet: about 0.22 GMACs at 112x112
    assert 1.0e6 < student["parameters"] < 1.4e6 and "convolution" in student["flops_by_op"]


def test_trtexec_summary_becomes_a_row_and_other_latency_lines_are_not_mistaken_for_it() -> None:
    from benchmarks.trtexec import TRTEXEC_BACKEND, parse_trtexec_latency, result_from_trtexec

    text = (REPO_ROOT / "tests" / "fixtures" / "trtexec" / "trtexec_fp16_batch1.log").read_text()
    [line] = [line for line in text.splitlines() if "] Latency: min" in line]
    stated = dict(part.strip().rsplit(" = ", 1) for part in line.split("Latency:")[1].split(","))  # independent reading
    summary = parse_trtexec_latency(text)
    assert summary["median_ms"] == float(stated["median"].removesuffix(" ms")) and summary["queries"] == 2874
    assert summary["percentiles"] == {90.0: 1.06714, 95.0: 1.09131, 99.0: 1.31079}
    row = result_from_trtexec(summary, "fp16", 1, 4096)
    assert (row.backend, row.p50_ms, row.p90_ms, row.p99_ms, row.runs) == (TRTEXEC_BACKEND, summary["median_ms"], 1.06714, 1.31079, 2874)
    with pytest.raises(ValueError, match="no 'Latency: min"):
        parse_trtexec_latency("[I] GPU Compute Time: min = 1 ms, max = 2 ms, mean = 1 ms, median = 1 ms\n")


def test_trtexec_builds_once_then_loads_and_is_skipped_with_the_reason_where_absent(export_dir: Path, tmp_path: Path) -> None:
    from benchmarks.trtexec import NOT_FOUND_REASON as TRT_NOT_FOUND
    from benchmarks.trtexec import find_trtexec, trtexec_arguments, trtexec_here

    build = trtexec_arguments(Path("m.onnx"), Path("m.engine"), "input", (3, 112, 112), 1, 32, "fp16", build=True)
    assert "--fp16" in build and "--maxShapes=input:32x3x112x112" in build and "--shapes=input:1x3x112x112" in build
    fp32 = trtexec_arguments(Path("m.onnx"), Path("m.engine"), "input", (3, 112, 112), 1, 32, "fp32", build=True)
    assert "--noTF32" in fp32 and "--fp16" not in fp32 and "--noTF32" not in build  # fp32 rows time fp32, not TF32
    load = trtexec_arguments(Path("m.onnx"), Path("m.engine"), "input", (3, 112, 112), 32, 32, "fp16", build=False)
    assert load[0] == "--loadEngine=m.engine" and "--shapes=input:32x3x112x112" in load and not any(a.startswith("--onnx") for a in load)
    if find_trtexec()[0] is not None:
        pytest.skip("trtexec is installed here: the absence path cannot be shown")
    records = json.loads((export_dir / EXPORTS_FILE).read_text())
    results, skipped = trtexec_here(export_dir, records, "input", (3, 16, 16), [1, 4], tmp_path / "engines")
    assert results == [] and [s["reason"] for s in skipped] == [TRT_NOT_FOUND, TRT_NOT_FOUND]
