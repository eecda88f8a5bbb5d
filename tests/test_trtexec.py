"""trtexec's command line per TensorRT version (no --fp16/--int8 on 11, --stronglyTyped with the right ONNX, --noTF32
for fp32), its version banner, the whole build-and-time path against a stand-in trtexec, and docker/device-benchmark.sh
building the TensorRT engines on the device before timing. No TensorRT needed."""

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

from benchmarks.latency import load_latency_document
from benchmarks.trtexec import ASSUMED_VERSION, TRTEXEC_ENV, find_trtexec, parse_trtexec_version, trtexec_arguments, trtexec_here
from deploy.export.tensorrt_export import onnx_is_fp16, tensorrt_available
from pipeline.artifacts import write_json_atomic
from pipeline.preprocess import PreprocessSpec
from pipeline.run_layout import EXPORTS_DIGEST, EXPORTS_FILE, MODEL_MANIFEST, exports_digest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "trtexec" / "trtexec_fp16_batch1.log"
SPEC = PreprocessSpec(height=16, width=16, embedding_dim=8)


@pytest.mark.parametrize(("banner", "version"), [
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --help", "10.3.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100600] [b26] # trtexec --help", "10.6.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v101200] # trtexec", "10.12.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v110000] # trtexec", "11.0.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec", "8.6.1"),
    ("=== Model Options ===", None),
])
def test_version_is_read_from_the_banner(banner, version):
    assert parse_trtexec_version(banner) == version


def build_arguments(precision: str, version: str | None, onnx_path: str = "m.onnx") -> list[str]:
    return trtexec_arguments(Path(onnx_path), Path("m.engine"), "input", (3, 112, 112), 1, 32, precision, build=True, version=version)


@pytest.mark.parametrize(("version", "fp32_flags", "fp16_flags"), [
    ("10.3.0", ["--stronglyTyped", "--noTF32"], ["--fp16"]),  # weak typing for fp16 before 10.12: the FP16 flag
    ("10.12.0", ["--stronglyTyped", "--noTF32"], ["--stronglyTyped"]),  # from 10.12: strongly typed, the fp16 ONNX
    ("11.0.0", ["--noTF32"], []),  # 11: no precision flags, strong typing always on
    (None, ["--stronglyTyped", "--noTF32"], ["--fp16"]),  # banner unreadable: JetPack 6's 10.3
])
def test_precision_flags_follow_the_version(version, fp32_flags, fp16_flags):
    flagged = {"--stronglyTyped", "--noTF32", "--fp16", "--int8", "--best"}
    assert [a for a in build_arguments("fp32", version) if a in flagged] == fp32_flags
    assert [a for a in build_arguments("fp16", version) if a in flagged] == fp16_flags
    assert ASSUMED_VERSION.startswith("10.")


def test_fp32_rows_never_time_tf32_and_other_precisions_are_refused():
    for version in ("8.6.1", "10.3.0", "10.12.0", "11.0.0"):
        assert "--noTF32" in build_arguments("fp32", version)
    with pytest.raises(ValueError, match="trtexec precision"):
        build_arguments("int8", "10.3.0")


def write_small_onnx(path: Path) -> Path:
    weights = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], np.random.default_rng(0).standard_normal(216).astype(np.float32))
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["embedding"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_export_dir(folder: Path) -> tuple[Path, list[dict]]:
    """A run's export folder: the fp32 ONNX export, and a TensorRT fp16 engine the host built."""
    folder.mkdir(parents=True)
    write_small_onnx(folder / "student_fp32.onnx")
    (folder / "student_fp16.engine").write_bytes(b"built on the host's GPU")
    records = [{"format": "onnx", "precision": "fp32", "status": "exported", "files": ["student_fp32.onnx"],
                "bytes": (folder / "student_fp32.onnx").stat().st_size},
               {"format": "tensorrt", "precision": "fp16", "status": "exported", "files": ["student_fp16.engine"], "bytes": 23}]
    write_json_atomic(folder / EXPORTS_FILE, records)
    write_json_atomic(folder / MODEL_MANIFEST, {"model": "small", "preprocess": SPEC.to_dict()})
    return folder, records


FAKE_TRTEXEC = '''#!{python}
"""Stands in for trtexec: the banner of TensorRT v{code}, its arguments logged, the fixture's summary printed."""
import json, sys
from pathlib import Path
print("&&&& RUNNING TensorRT.trtexec [TensorRT v{code}] # trtexec " + " ".join(sys.argv[1:]))
if sys.argv[1:] == ["--help"]:
    sys.exit(0)
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if {code} >= 110000 and ({{"--fp16", "--int8"}} & set(sys.argv)):
    print("[E] Unknown option: --fp16")  # TensorRT 11 removed the precision flags
    sys.exit(1)
for argument in sys.argv[1:]:
    if argument.startswith("--saveEngine="):
        Path(argument.split("=", 1)[1]).write_bytes(b"engine")
print(Path({fixture!r}).read_text())
'''


def fake_trtexec(folder: Path, code: int) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "calls.jsonl"
    script = folder / "trtexec"
    script.write_text(FAKE_TRTEXEC.format(python=sys.executable, code=code, log=str(log), fixture=str(FIXTURE)))
    script.chmod(0o755)
    return script, log


@pytest.mark.parametrize(("code", "version"), [(100300, "10.3.0"), (101200, "10.12.0"), (110000, "11.0.0")])
def test_trtexec_rows_build_what_each_version_accepts(tmp_path, monkeypatch, code, version):
    export_dir, records = write_export_dir(tmp_path / "export")
    script, log = fake_trtexec(tmp_path / "bin", code)
    monkeypatch.setenv(TRTEXEC_ENV, str(script))
    assert find_trtexec()[0] == script
    results, skipped = trtexec_here(export_dir, records, "input", (3, 16, 16), [1, 4], tmp_path / "engines")
    assert skipped == [] and [(r.precision, r.batch) for r in results] == [("fp32", 1), ("fp32", 4), ("fp16", 1), ("fp16", 4)]
    builds = [json.loads(line) for line in log.read_text().splitlines() if any(a.startswith("--onnx=") for a in json.loads(line))]
    fp32_build, fp16_build = builds
    assert f"--onnx={export_dir / 'student_fp32.onnx'}" in fp32_build and "--noTF32" in fp32_build
    fp16_onnx = Path(next(a for a in fp16_build if a.startswith("--onnx=")).split("=", 1)[1])
    assert ("--fp16" in fp16_build) == (version == "10.3.0")
    assert ("--stronglyTyped" in fp16_build) == (version == "10.12.0")  # on 11 strong typing is not a flag
    assert onnx_is_fp16(fp16_onnx) == (version != "10.3.0")  # from 10.12 the fp16 copy, beside the engines
    assert results[0].settings["tf32"] == "off (--noTF32)" and results[0].settings["tensorrt"] == version
    assert results[2].settings["build_flags"] == [a for a in fp16_build if a in ("--fp16", "--stronglyTyped")]


def test_device_benchmark_builds_engines_here_before_timing(tmp_path):
    """docker/device-benchmark.sh: TensorRT records point at engines built on this machine, never at the host's; the
    latency file names the run's export records, not those of the copy it rewrote (or every Jetson file would read as
    stale in the run's report)."""
    if tensorrt_available()[0]:
        pytest.skip("TensorRT can run here: the engines would really be built")
    export_dir, _ = write_export_dir(tmp_path / "export")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # this environment's python3
    (tmp_path / "bin" / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TRTEXEC", "BENCHNCNN")}
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    out = tmp_path / "results" / "latency-jetson.json"
    out.parent.mkdir()
    completed = subprocess.run([str(REPO_ROOT / "docker" / "device-benchmark.sh"), str(export_dir), str(out), "--threads", "1",
                                "--timed-runs", "5", "--warmup-runs", "1", "--min-timed-seconds", "0", "--throughput-batch", "2",
                                "--throughput-runs", "2"], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    here = tmp_path / "results" / "device-export"
    assert exports_digest(here) != exports_digest(export_dir)  # the copy's records differ ...
    assert load_latency_document(out)[EXPORTS_DIGEST] == exports_digest(export_dir)  # ... the file names the run's
    [engine_record] = [r for r in json.loads((here / EXPORTS_FILE).read_text()) if r["format"] == "tensorrt"]
    assert engine_record["status"] == "skipped" and engine_record["files"] == []
    assert not (here / "student_fp16.engine").exists() and (here / "student_fp32.onnx").is_file()
    document = load_latency_document(out)
    assert [(r["backend"], r["batch"]) for r in document["results"]] == [("onnx", 1), ("onnx", 2)]
    assert {"backend": "tensorrt", "precision": "fp16", "reason": f"export skipped: {tensorrt_available()[1]}"} in document["skipped"]
