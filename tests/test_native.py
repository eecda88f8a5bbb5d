"""The project's native ncnn tools, for real: libncnn built from ncnn's source archive, face_embed and face_bench on
x86 and (cross-built) under qemu-aarch64, gated against PyTorch like every backend.

The first run builds libncnn for both targets (minutes; `make native-deps` installs the Debian packages it needs);
later runs reuse build/. Nothing here is mocked but the phone: a fake adb (tests/fixtures/android/fake_adb) that
stands for an x86-64 Android emulator and runs the pushed x86 tool on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.stages import STAGES
from app.stages.native_parity_stage import native_runner_choice
from benchmarks.benchncnn import NATIVE_BACKEND, face_bench_here, parse_benchncnn_output, results_from_benchncnn, run_benchncnn_here
from deploy.export.ncnn_model import read_ncnn_model, write_ncnn_model
from deploy.native.build import build_tools, get_target
from deploy.native.tool_host import LocalHost, ToolRunError, qemu_host
from deploy.parity import per_image_cosine
from deploy.parity_run import parity_for_record, parity_subset
from deploy.runners.ncnn_native_runner import NativeNcnnRunner
from deploy.runners.ncnn_runner import NcnnRunner, read_param_layers
from pipeline.config import ParityConfig, load_config, profile_path
from pipeline.data.store import load_verification_sets
from pipeline.models.saved import load_model
from pipeline.preprocess import PreprocessSpec
from pipeline.stages.runner import StageRunner
from tests.conftest import read_json

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_ADB_DIR = REPO_ROOT / "tests" / "fixtures" / "android" / "fake_adb"
X86_EMULATOR = REPO_ROOT / "tests" / "fixtures" / "android" / "x86_emulator"
QEMU_PHONE = REPO_ROOT / "tests" / "fixtures" / "android" / "qemu_phone"
ARM_TARGETS = ["host", "arm64:max", "arm64:cortex-a53"]
FP32_GATE = ParityConfig().gates["fp32"]


@pytest.fixture(scope="module")
def host_tools():
    return build_tools(get_target("host"))


@pytest.fixture(scope="module")
def arm_tools():
    return build_tools(get_target("aarch64-linux"))


@pytest.fixture(scope="module")
def native_run(tiny_run, host_tools, arm_tools, tmp_path_factory) -> dict:
    """A copy of the tiny run with the native parity stage on x86 and two emulated ARM CPUs (every image, every precision)."""
    runs_dir = tmp_path_factory.mktemp("native-runs")
    shutil.copytree(tiny_run["run_dir"], runs_dir / "tiny")
    # The tiny student is barely trained: its int8 exports flip pair decisions and are dropped at export; kept here so
    # that ncnn's int8 kernels (dot-product on arm64:max) run too.
    # fp16 arithmetic left on in every layer (export.ncnn_fp16_arithmetic_off=[]), to see ARM's fp16 kernels at work.
    config = load_config(profile_path("tiny"), {"native_parity.targets": ARM_TARGETS, "native_parity.max_images": None,
                                                "export.int8_gate": False, "export.ncnn_fp16_arithmetic_off": []})
    runner = StageRunner(config, STAGES, runs_dir)
    outcomes = {outcome.name: outcome.status for outcome in runner.run()}
    return {"run_dir": runner.run_dir, "outcomes": outcomes, "config": config}


def _export(run_dir: Path, precision: str) -> tuple[Path, Path]:
    record = next(r for r in read_json(run_dir / "export" / "exports.json") if r["format"] == "ncnn" and r["precision"] == precision)
    return tuple(run_dir / "export" / name for name in record["files"])


def test_tools_report_what_ncnn_detects_and_what_the_build_compiled(host_tools, arm_tools):
    host = LocalHost(host_tools.embed, [], "host", "native", {})
    assert host.cpu_features()["isa"] == "x86" and "avx2" in host.cpu_features()["compiled"]
    max_cpu, a53 = qemu_host(arm_tools.embed, "max").cpu_features(), qemu_host(arm_tools.embed, "cortex-a53").cpu_features()
    assert max_cpu["isa"] == a53["isa"] == "aarch64"
    assert (max_cpu["asimdhp"], max_cpu["asimddp"]) == (1, 1) and (a53["asimdhp"], a53["asimddp"]) == (0, 0)
    assert a53["neon"] == 1 and {"arm82", "arm82dot"} <= set(max_cpu["compiled"].split())
    assert arm_tools.facts["ncnn_build_seconds"] > 0 and arm_tools.facts["static"]


def test_native_tool_matches_the_python_binding_and_pytorch_on_x86(tiny_run, host_tools):
    run_dir = tiny_run["run_dir"]
    spec = PreprocessSpec.load(run_dir / "export" / "model_manifest.json")
    faces = load_verification_sets(run_dir / "data")[0].images[:8]
    param, weights = _export(run_dir, "fp32")
    host = LocalHost(host_tools.embed, [], "ncnn-native (x86-64)", "native", {})
    native = NativeNcnnRunner(host, param, weights, spec, "fp32")
    embeddings = native.embed(faces)  # the tool's own preprocessing: from_pixels + substract_mean_normalize
    binding = NcnnRunner(param, weights, spec, "fp32")
    assert per_image_cosine(binding.embed(faces), embeddings).min() > 0.999999
    assert native.last_run["images"] == 8 and native.last_run["precision"] == "fp32"
    import torch

    from pipeline.preprocess import preprocess

    with torch.no_grad():
        reference = load_model(run_dir / "distill", "student")(torch.from_numpy(preprocess(faces, spec))).numpy()
    assert per_image_cosine(reference, embeddings).min() >= FP32_GATE.min_cosine
    host.close()


def test_native_parity_stage_rows_on_x86_and_emulated_arm(native_run):
    run_dir = native_run["run_dir"]
    assert native_run["outcomes"]["native_parity"] == "ran" and native_run["outcomes"]["report"] == "ran"
    payload = read_json(run_dir / "native_parity" / "native_parity.json")
    rows = {(r["details"]["target"], r["precision"]): r for r in payload["results"]}
    assert set(rows) == {(t, p) for t in ARM_TARGETS for p in ("fp32", "fp16", "int8")}
    for (target, precision), row in rows.items():
        gate = ParityConfig().gates[precision]
        assert row["gate"] == gate.model_dump() and row["num_images"] == 80
        assert row["cosine_min"] >= gate.min_cosine, (target, precision, row["reason"])
    # fp32 agrees everywhere, and so does fp16 where the CPU has no fp16 arithmetic (x86, ARMv8.0: storage only)
    for target, precision in [(t, "fp32") for t in ARM_TARGETS] + [("host", "fp16"), ("arm64:cortex-a53", "fp16")]:
        assert rows[(target, precision)]["status"] == "pass", (target, precision, rows[(target, precision)]["reason"])
    assert rows[("arm64:cortex-a53", "fp32")]["max_abs_diff"] < 1e-6
    # ARMv8.2 fp16 arithmetic ran on `max` only: its error is an order of magnitude above fp16 storage's. (On this
    # barely trained student every pair score is a near tie, so even that small error flips decisions: the tiny
    # int8 model and max's fp16 fail the accuracy gate, and the rows say so.)
    fp16_max, fp16_a53 = rows[("arm64:max", "fp16")], rows[("arm64:cortex-a53", "fp16")]
    assert fp16_max["max_abs_diff"] > 10 * fp16_a53["max_abs_diff"]
    assert fp16_max["backend"] == "ncnn-arm64 (emulated: max)" and fp16_max["details"]["cpu_features"]["asimdhp"] == 1
    assert "not recorded" in rows[("arm64:cortex-a53", "fp32")]["details"]["timing"]
    report = (run_dir / "report" / "report.md").read_text()
    for label in ("ncnn-native (x86-64)", "ncnn-arm64 (emulated: max)", "ncnn-arm64 (emulated: cortex-a53)"):
        assert label in report
    [max_line] = [line for line in report.splitlines() if line.startswith("| ncnn-arm64 (emulated: max) | aarch64 |")]
    [a53_line] = [line for line in report.splitlines() if line.startswith("| ncnn-arm64 (emulated: cortex-a53) | aarch64 |")]
    assert "asimdhp" in max_line and "asimddp" in max_line and "asimdhp" not in a53_line  # what ncnn detected where


def test_fp16_arithmetic_off_in_depthwise_layers_lowers_the_arm_fp16_error(native_run, arm_tools, tmp_path):
    from deploy.export.ncnn_model import mask_fp16_arithmetic

    run_dir = native_run["run_dir"]
    param, weights = _export(run_dir, "fp16")
    masked_param = tmp_path / param.name
    shutil.copyfile(param, masked_param)
    changed = mask_fp16_arithmetic(masked_param, ("ConvolutionDepthWise",))
    depthwise = [layer.layer_name for layer in read_param_layers(param) if layer.layer_type == "ConvolutionDepthWise"]
    assert depthwise and changed == depthwise
    assert all(layer.param_int(31) == (1 if layer.layer_name in changed else 0) for layer in read_param_layers(masked_param))
    spec = PreprocessSpec.load(run_dir / "export" / "model_manifest.json")
    faces = load_verification_sets(run_dir / "data")[0].images[:8]
    reference = NcnnRunner(*_export(run_dir, "fp32"), spec, "fp32").embed(faces)
    errors = {}
    for name, param_path in (("all fp16", param), ("depthwise fp32", masked_param)):
        host = qemu_host(arm_tools.embed, "max")
        errors[name] = float(np.abs(NativeNcnnRunner(host, param_path, weights, spec, "fp16").embed(faces) - reference).max())
        host.close()
    # tiny model, 8 faces: measured 6.9e-4 -> 3.9e-4 (its pointwise convolutions keep fp16 arithmetic and their share)
    assert errors["depthwise fp32"] < errors["all fp16"], errors
    with pytest.raises(ValueError, match="no layer named convdw_typo"):
        mask_fp16_arithmetic(masked_param, ("convdw_typo",))


def test_corrupted_weight_fails_the_arm_gate_and_names_the_layer(native_run, arm_tools, tmp_path):
    run_dir = native_run["run_dir"]
    param, weights = _export(run_dir, "fp32")
    model = read_ncnn_model(param, weights)
    target = [layer for layer in model.layers if layer.layer_type == "Convolution"][3]
    values = target.weights[0].values
    values[len(values) // 2] = 50.0 * np.abs(values).max()  # one weight, as a bit flip in a download might leave it
    write_ncnn_model(model, tmp_path / param.name, tmp_path / weights.name)
    spec = PreprocessSpec.load(run_dir / "export" / "model_manifest.json")
    pairs = parity_subset(load_verification_sets(run_dir / "data")[0], 16)
    student = load_model(run_dir / "distill", "student")
    import torch

    from pipeline.preprocess import preprocess

    with torch.no_grad():
        reference = student(torch.from_numpy(preprocess(pairs.images, spec))).numpy()
    record = {"format": "ncnn", "precision": "fp32", "status": "exported", "files": [param.name, weights.name]}
    host = qemu_host(arm_tools.embed, "cortex-a53")
    result = parity_for_record(tmp_path, record, spec, pairs, reference, ParityConfig(), model=student, runner=native_runner_choice(host))
    host.close()
    assert result.backend == "ncnn-arm64 (emulated: cortex-a53)" and result.status == "fail"
    assert result.first_divergent_layer["backend_layer"] == target.name
    assert f"first divergent layer: {target.name} (Convolution)" in result.reason


def test_face_bench_output_parses_into_the_benchmark_schema(tiny_run, host_tools):
    run_dir = tiny_run["run_dir"]
    param, weights = _export(run_dir, "fp32")
    output = run_benchncnn_here(host_tools.bench, param, (112, 112, 3), 5, 1, extra=(f"bin={weights}", "precision=fp32"))
    assert output.settings["loop_count"] == 5 and output.settings["num_threads"] == 1 and output.precision == "fp32"
    [row] = results_from_benchncnn(output, param.name, backend=NATIVE_BACKEND, tool="face_bench")
    assert row.backend == NATIVE_BACKEND and row.precision == "fp32" and row.threads == 1
    assert 0 < row.min_ms <= row.mean_ms <= row.max_ms
    exports = read_json(run_dir / "export" / "exports.json")
    rows, skipped = face_bench_here(run_dir / "export", exports, (112, 112, 3), [1], 3)
    exported = {r["precision"] for r in exports if r["format"] == "ncnn" and r["status"] == "exported"}
    assert not skipped and {r.precision for r in rows} == exported and {r.tool for r in rows} == {"face_bench"}


def test_face_bench_says_what_is_wrong(host_tools, tmp_path):
    completed = subprocess.run([str(host_tools.bench), "4", "1", "0", "-1", "0", f"param={tmp_path / 'missing.param'}", "shape=[112,112,3]"],
                               capture_output=True, text=True, check=False)
    assert completed.returncode == 2 and "missing.param: ncnn could not load this .param" in completed.stderr
    with pytest.raises(ValueError, match="no timing lines"):
        parse_benchncnn_output(completed.stderr, "face_bench")


def test_face_embed_rejects_bad_input_in_one_line(tiny_run, host_tools, tmp_path):
    param, weights = _export(tiny_run["run_dir"], "fp32")
    host = LocalHost(host_tools.embed, [], "host", "native", {})
    bad = tmp_path / "faces.npy"
    np.save(bad, np.zeros((2, 112, 112, 3), np.float64))
    with pytest.raises(ToolRunError, match=r"faces\.npy: dtype <f8 \(expected uint8 images or float32 tensors\)"):
        host.execute(["--param", str(param), "--bin", str(weights), "--input", str(bad), "--output", str(tmp_path / "e.npy")])
    with pytest.raises(ToolRunError, match="could not load this .param"):
        host.execute(["--param", str(weights), "--bin", str(weights), "--input", str(bad), "--output", str(tmp_path / "e.npy")])


def _fake_phone(tmp_path: Path, devices: str = "emulator-5554", qemu_cpu: str | None = None) -> dict:
    """The fake adb's environment: the x86-64 emulator, or (qemu_cpu) an arm64 phone whose programs run under qemu."""
    root = tmp_path / "phone"
    root.mkdir()
    env = {**os.environ, "PATH": f"{FAKE_ADB_DIR}{os.pathsep}{os.environ['PATH']}", "FAKE_ADB_ROOT": str(root),
           "FAKE_ADB_FIXTURES": str(QEMU_PHONE if qemu_cpu else X86_EMULATOR), "FAKE_ADB_DEVICES": devices,
           "PYTHONPATH": str(REPO_ROOT)}
    if qemu_cpu:
        env["FAKE_ADB_QEMU_CPU"] = qemu_cpu
    for name in ("ADB", "ANDROID_SERIAL", "BENCHNCNN", "ANDROID_NDK"):
        env.pop(name, None)
    return env


def test_android_parity_pushes_runs_pulls_and_joins_the_report(native_run, host_tools, tmp_path):
    run_dir = native_run["run_dir"]
    env = _fake_phone(tmp_path)
    command = [sys.executable, "-m", "app.device_parity", "--run-dir", str(run_dir), "--profile", "tiny",
               "android", "--tool", str(host_tools.embed)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    # the tiny int8 model fails its gate wherever it runs (see native_run): the command exits 1 and says so
    assert completed.returncode == 1 and "int8: fail" in completed.stdout, completed.stderr[-2000:]
    document = read_json(run_dir / "devices" / "parity" / "android_emulator-5554.json")
    assert document["device"]["model"] == "sdk_gphone64_x86_64" and document["device"]["abi"] == "x86_64"
    assert {r["precision"]: r["status"] for r in document["results"]} == {"fp32": "pass", "fp16": "pass", "int8": "fail"}
    assert all(r["backend"].startswith("ncnn-android (Google sdk_gphone64_x86_64, x86_64") for r in document["results"])
    assert document["cpu_features"]["isa"] == "x86"
    calls = [json.loads(line) for line in (tmp_path / "phone" / "calls.jsonl").read_text().splitlines()]
    assert any(call[2] == "push" and call[3].endswith("face_embed") for call in calls if len(call) > 3)
    assert any(call[2] == "pull" for call in calls if len(call) > 2)
    assert not (tmp_path / "phone" / "device" / "data" / "local" / "tmp" / "face-distill-parity").exists()  # cleaned up
    assert "ncnn-android (Google sdk_gphone64_x86_64" in (run_dir / "report" / "report.md").read_text()


def test_android_benchmark_runs_face_bench_through_adb(native_run, host_tools, tmp_path):
    env = _fake_phone(tmp_path)
    command = [sys.executable, "-m", "benchmarks.android", "--run-dir", str(native_run["run_dir"]), "--benchncnn", str(host_tools.bench),
               "--threads", "1", "--loops", "3", "--no-cooling-down", "--out", str(tmp_path / "latency.json")]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    [row] = read_json(tmp_path / "latency.json")["results"]
    assert row["threads"] == 1 and row["runs"] == 3 and row["mean_ms"] > 0 and row["tool"] == "benchncnn"


def test_both_android_flows_run_the_static_arm_tools_on_an_emulated_arm64_phone(native_run, arm_tools, tmp_path):
    """Issue 20: no NDK, no phone: the default tools are the static aarch64 build (the same one arm_tools built), pushed
    to a phone whose programs run under qemu-aarch64 -cpu max: its rows must say what the native parity stage's
    `arm64:max` rows say (fp16 arithmetic in every layer fails this barely trained student's gate there too)."""
    run_dir = native_run["run_dir"]
    env = _fake_phone(tmp_path, devices="qemu-arm64", qemu_cpu="max")
    parity = subprocess.run([sys.executable, "-m", "app.device_parity", "--run-dir", str(run_dir), "--profile", "tiny", "android"],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    assert parity.returncode == 1 and "int8: fail" in parity.stdout, parity.stderr[-2000:]  # the tiny int8 model: see native_run
    document = read_json(run_dir / "devices" / "parity" / "android_qemu-arm64.json")
    assert document["device"]["emulated"] is True and document["device"]["abi"] == "arm64-v8a"
    assert document["cpu_features"]["isa"] == "aarch64"
    stage_rows = {r["precision"]: r["status"] for r in read_json(run_dir / "native_parity" / "native_parity.json")["results"]
                  if r["details"]["target"] == "arm64:max"}
    assert {r["precision"]: r["status"] for r in document["results"]} == stage_rows and stage_rows["fp32"] == "pass"
    assert all("-cpu max, emulated)" in r["backend"] for r in document["results"])
    calls = [json.loads(line) for line in (tmp_path / "phone" / "calls.jsonl").read_text().splitlines()]
    [pushed_tool] = [call[3] for call in calls if len(call) > 3 and call[2] == "push" and call[3].endswith("face_embed")]
    assert Path(pushed_tool).resolve() == arm_tools.embed.resolve()  # the default: the static aarch64 build

    bench = subprocess.run([sys.executable, "-m", "benchmarks.android", "--run-dir", str(run_dir), "--threads", "1", "--loops", "2",
                            "--no-cooling-down", "--out", str(tmp_path / "latency.json")],
                           capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    assert bench.returncode == 0 and "EMULATED" in bench.stdout, bench.stderr[-2000:]
    latency = read_json(tmp_path / "latency.json")
    [row] = latency["results"]
    assert latency["device"]["emulated"] is True and row["runs"] == 2 and row["mean_ms"] > 0


def test_android_parity_without_a_device_says_so(native_run, host_tools, tmp_path):
    env = _fake_phone(tmp_path, devices="")
    command = [sys.executable, "-m", "app.device_parity", "--run-dir", str(native_run["run_dir"]), "--profile", "tiny",
               "android", "--tool", str(host_tools.embed)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert completed.returncode == 2 and "no Android device" in completed.stderr


def test_jetson_parity_without_tensorrt_writes_skipped_rows_in_the_same_schema(native_run):
    run_dir = native_run["run_dir"]
    command = [sys.executable, "-m", "app.device_parity", "--run-dir", str(run_dir), "--profile", "tiny", "here",
               "--formats", "tensorrt", "--name", "jetson-test"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    document = read_json(run_dir / "devices" / "parity" / "jetson-test.json")
    assert {r["status"] for r in document["results"]} == {"skipped"}
    assert all(r["backend"] == "tensorrt (jetson-test)" and r["reason"] for r in document["results"])
