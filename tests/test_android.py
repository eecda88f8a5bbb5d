"""The phone path without a phone: benchncnn's output formats, and the adb driver against a fake adb on PATH.

The fake (tests/fixtures/android/fake_adb/adb) stands in for the device only; the driver and the parser are the
real code, run as a user runs them (`python -m benchmarks.android`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.android import REMOTE_DIR, AdbError, choose_device, describe_android_device, elf_abis, parse_getprop
from benchmarks.benchncnn import BENCHNCNN_BACKEND, benchncnn_arguments, parse_benchncnn_output, results_from_benchncnn
from benchmarks.latency import load_latency_document

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "android"
FAKE_ADB_DIR = FIXTURES / "fake_adb"
PHONE = FIXTURES / "phone"
PARAM_NAME = "student_fp16.ncnn.param"


def timed_lines(text: str) -> list[list[str]]:
    """The fixture's timing lines split on whitespace: an independent reading to check the parser against."""
    return [line.split() for line in text.splitlines() if " min = " in line]


@pytest.mark.parametrize("name", ["benchncnn_cpu_default_models.txt", "benchncnn_gpu_vulkan.txt", "benchncnn_old_header.txt"])
def test_parser_reads_every_timed_model_of_each_output_format(name: str) -> None:
    text = (FIXTURES / name).read_text()
    output = parse_benchncnn_output(text, name)
    expected = timed_lines(text)
    assert [line.name for line in output.lines] == [fields[0] for fields in expected]
    for line, fields in zip(output.lines, expected):
        assert (line.min_ms, line.max_ms, line.avg_ms) == (float(fields[3]), float(fields[6]), float(fields[9]))
        assert line.min_ms <= line.avg_ms <= line.max_ms
    echoed = {key: int(value) for key, _, value in (line.partition(" = ") for line in text.splitlines())
              if key in {"loop_count", "num_threads", "powersave", "gpu_device", "cooling_down"}}
    assert output.settings == echoed


def test_parser_reads_gpu_description_and_device_of_each_line() -> None:
    gpu = parse_benchncnn_output((FIXTURES / "benchncnn_gpu_vulkan.txt").read_text())
    assert list(gpu.gpu_info) == ["0 Adreno (TM) 640"] and len(gpu.gpu_info["0 Adreno (TM) 640"]) == 4
    assert {line.device for line in gpu.lines} == {"gpu"}  # gpu_device = 0 and the old line format
    cpu = parse_benchncnn_output((FIXTURES / "benchncnn_cpu_default_models.txt").read_text())
    assert cpu.gpu_info == {} and {line.device for line in cpu.lines} == {"cpu"}


def test_parser_reads_cpu_then_gpu_format_with_user_and_sys_times() -> None:
    output = parse_benchncnn_output((FIXTURES / "benchncnn_cpu_and_gpu.txt").read_text())
    assert [(line.name, line.device) for line in output.lines] == [
        ("squeezenet", "cpu"), ("squeezenet", "gpu"), ("mobilenet", "cpu"), ("mobilenet", "gpu")]
    assert output.lines[0].user_ms == 16.52 and output.lines[1].sys_ms == 1.2
    assert output.lines[1].avg_ms == 9.0  # the speed_ratio tail is not mistaken for a time


def test_parser_names_the_source_when_nothing_was_timed() -> None:
    with pytest.raises(ValueError, match="phone:out.txt: no timing lines.*input tensor shape empty"):
        parse_benchncnn_output("loop_count = 4\ninput tensor shape empty!\n", "phone:out.txt")


def test_rows_keep_only_the_models_line_and_leave_percentiles_empty() -> None:
    output = parse_benchncnn_output((PHONE / "benchncnn_threads4.txt").read_text())
    [row] = results_from_benchncnn(output, PARAM_NAME, model_bytes=1234)
    assert (row.backend, row.threads, row.runs, row.tool) == (BENCHNCNN_BACKEND, 4, 50, "benchncnn")
    assert row.p50_ms is None and row.p99_ms is None and row.std_ms is None
    assert row.images_per_s == pytest.approx(1000 / row.mean_ms, rel=1e-3)
    with pytest.raises(ValueError, match="no timing for other.param"):
        results_from_benchncnn(output, "other.param")


def test_arguments_follow_benchncnn_positional_order_and_whc_shape() -> None:
    assert benchncnn_arguments("m.param", (112, 96, 3), 20, 4, 2, -1, True) == ["20", "4", "2", "-1", "1", "param=m.param", "shape=[112,96,3]"]


def test_getprop_becomes_the_device_tag() -> None:
    device = describe_android_device(parse_getprop((PHONE / "getprop.txt").read_text()))
    assert device["kind"] == "android" and device["name"] == "OnePlus HD1903"
    assert device["abi"] == "arm64-v8a" and device["cpu"] == "Qualcomm SM8150" and device["sdk"] == "31"


@pytest.mark.parametrize("fixture, emulated", [("phone", False), ("x86_emulator", True), ("qemu_phone", True)])
def test_an_emulator_is_told_from_a_phone_by_its_properties(fixture: str, emulated: bool) -> None:
    assert describe_android_device(parse_getprop((FIXTURES / fixture / "getprop.txt").read_text()))["emulated"] is emulated


def test_the_report_keeps_emulated_devices_apart_from_real_ones(tmp_path: Path) -> None:
    """Emulated times under their own heading, never in the table of devices whose times are latency."""
    from benchmarks.latency import latency_document
    from benchmarks.report import _devices_section
    from benchmarks.report_document import Document
    from pipeline.run_layout import RunLayout, exports_digest

    layout = RunLayout(tmp_path)
    layout.exports_file.parent.mkdir()
    layout.exports_file.write_text(json.dumps([{"format": "ncnn", "precision": "fp16", "status": "exported", "files": [PARAM_NAME]}]))
    rows = results_from_benchncnn(parse_benchncnn_output((PHONE / "benchncnn_threads1.txt").read_text()), PARAM_NAME)
    for name, fixture in (("android_phone", "phone"), ("android_qemu", "qemu_phone")):
        device = describe_android_device(parse_getprop((FIXTURES / fixture / "getprop.txt").read_text()))
        layout.device_latency_file(name).parent.mkdir(exist_ok=True)
        layout.device_latency_file(name).write_text(json.dumps(latency_document(rows, [], device, {}, None, {},
                                                                                exports_digest(layout.exports_file.parent))))
    doc = Document("report")
    _devices_section(doc, tmp_path)
    text = doc.to_markdown()
    real, _, emulated = text.partition("Emulated devices (not latency)")
    assert "android_phone.json" in real and "android_qemu.json" not in real
    assert "android_qemu.json" in emulated and "android_phone.json" not in emulated


def test_choosing_a_device_explains_each_refusal() -> None:
    assert choose_device([("A1", "device")], None) == "A1"
    with pytest.raises(AdbError, match="no Android device"):
        choose_device([], None)
    with pytest.raises(AdbError, match="2 devices attached.*--serial"):
        choose_device([("A1", "device"), ("B2", "device")], None)
    with pytest.raises(AdbError, match="unauthorized: accept the USB debugging prompt"):
        choose_device([("A1", "unauthorized")], None)


def elf_header(machine: int) -> bytes:
    """The first 20 bytes of a 64-bit little-endian ELF executable for `machine` (what the ABI check reads)."""
    return b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")


def test_elf_machine_maps_to_android_abis(tmp_path: Path) -> None:
    (tmp_path / "arm64").write_bytes(elf_header(183) + bytes(64))
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert elf_abis(tmp_path / "arm64") == ("arm64-v8a",)
    assert elf_abis(tmp_path / "script") == ()


@pytest.fixture
def phone_run(tmp_path: Path) -> dict:
    """A run folder with an ncnn export, a benchncnn 'built for arm64', and the environment of the fake phone."""
    export = tmp_path / "runs" / "tiny" / "export"
    export.mkdir(parents=True)
    (export / PARAM_NAME).write_text("7767517\n")  # benchncnn on the fake phone does not read it; the driver pushes it
    (export / "student_fp16.ncnn.bin").write_bytes(bytes(64))
    (export / "exports.json").write_text(json.dumps([{"format": "ncnn", "precision": "fp16", "status": "exported",
                                                       "files": [PARAM_NAME, "student_fp16.ncnn.bin"], "bytes": 9999}]))
    (export / "model_manifest.json").write_text(json.dumps({"model": "mobilefacenet", "preprocess": {"width": 112, "height": 112}}))
    benchncnn = tmp_path / "benchncnn"
    benchncnn.write_bytes(elf_header(183) + bytes(64))
    root = tmp_path / "phone"
    root.mkdir()
    env = {**os.environ, "PATH": f"{FAKE_ADB_DIR}{os.pathsep}{os.environ['PATH']}", "FAKE_ADB_ROOT": str(root),
           "FAKE_ADB_FIXTURES": str(PHONE), "FAKE_ADB_DEVICES": "5a1b2c3d", "PYTHONPATH": str(REPO_ROOT)}
    for name in ("ADB", "ANDROID_SERIAL", "BENCHNCNN"):
        env.pop(name, None)
    return {"run_dir": export.parent, "benchncnn": benchncnn, "root": root, "env": env}


def run_android(phone: dict, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "benchmarks.android", "--run-dir", str(phone["run_dir"]), "--benchncnn", str(phone["benchncnn"]),
               "--threads", "1", "4", "--no-cooling-down", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=phone["env"], cwd=REPO_ROOT, timeout=120)


def test_phone_benchmark_pushes_runs_pulls_and_writes_the_shared_schema(phone_run: dict) -> None:
    completed = run_android(phone_run)
    assert completed.returncode == 0, completed.stderr
    document = load_latency_document(phone_run["run_dir"] / "devices" / "android_5a1b2c3d.json")
    assert document["device"]["name"] == "OnePlus HD1903" and document["device"]["abi"] == "arm64-v8a"
    rows = {row["threads"]: row for row in document["results"]}
    assert sorted(rows) == [1, 4]
    for threads, row in rows.items():
        [recorded] = timed_lines((PHONE / f"benchncnn_threads{threads}.txt").read_text())
        assert (row["min_ms"], row["max_ms"], row["mean_ms"]) == (float(recorded[3]), float(recorded[6]), float(recorded[9]))
        assert row["backend"] == BENCHNCNN_BACKEND and row["model_bytes"] == 9999 and row["settings"]["powersave"] == 2
    calls = [json.loads(line) for line in (phone_run["root"] / "calls.jsonl").read_text().splitlines()]
    pushed = [call[-1] for call in calls if "push" in call]
    assert pushed == [f"{REMOTE_DIR}/benchncnn", f"{REMOTE_DIR}/{PARAM_NAME}", f"{REMOTE_DIR}/student_fp16.ncnn.bin"]
    bench_commands = [call[-1] for call in calls if call[-2:-1] == ["shell"] and "./benchncnn" in call[-1]]
    assert len(bench_commands) == 2 and all("'shape=[112,112,3]'" in c and " 50 " in c for c in bench_commands)
    assert all(call[:2] == ["-s", "5a1b2c3d"] for call in calls if call != ["devices"])
    assert (phone_run["root"] / "device" / REMOTE_DIR.lstrip("/") / "benchncnn_threads4.txt").is_file()


def test_without_a_device_it_fails_with_a_clear_message(phone_run: dict) -> None:
    phone_run["env"]["FAKE_ADB_DEVICES"] = ""
    completed = run_android(phone_run)
    assert completed.returncode == 2
    assert "no Android device" in completed.stderr and "USB debugging" in completed.stderr
    assert not (phone_run["run_dir"] / "devices").exists()


def test_without_adb_or_benchncnn_it_says_what_is_missing(phone_run: dict, tmp_path: Path) -> None:
    """No benchncnn anywhere is not an error (the project's face_bench stands in: tests/test_native.py); a benchncnn
    path that is not there is, and so is no adb, before anything is built."""
    phone_run["env"]["PATH"] = str(tmp_path / "empty")
    completed = subprocess.run([sys.executable, "-m", "benchmarks.android", "--run-dir", str(phone_run["run_dir"]),
                                "--benchncnn", str(tmp_path / "missing" / "benchncnn")],
                               capture_output=True, text=True, env=phone_run["env"], cwd=REPO_ROOT, timeout=120)
    assert completed.returncode == 2 and "missing/benchncnn" in completed.stderr, completed.stderr
    completed = subprocess.run([sys.executable, "-m", "benchmarks.android", "--run-dir", str(phone_run["run_dir"])],
                               capture_output=True, text=True, env=phone_run["env"], cwd=REPO_ROOT, timeout=120)
    assert completed.returncode == 2 and "adb not found" in completed.stderr and "face_bench" not in completed.stderr
    completed = run_android(phone_run)
    assert completed.returncode == 2 and "adb not found" in completed.stderr


def test_a_binary_for_another_abi_is_refused_before_pushing(phone_run: dict) -> None:
    phone_run["benchncnn"].write_bytes(elf_header(62) + bytes(64))  # x86_64
    completed = run_android(phone_run)
    assert completed.returncode == 2 and "built for x86_64" in completed.stderr and "arm64-v8a" in completed.stderr
    calls = (phone_run["root"] / "calls.jsonl").read_text()
    assert "push" not in calls


def test_a_failing_benchncnn_run_reports_the_phones_words(phone_run: dict) -> None:
    completed = run_android(phone_run, "--threads", "3")  # no recording for 3 threads: the fake phone's benchncnn fails
    assert completed.returncode == 2 and "benchncnn on OnePlus HD1903 failed (benchncnn_exit=1)" in completed.stderr
