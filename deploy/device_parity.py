"""Parity on the device itself: the same numeric and accuracy gates, run where the model will be deployed.

    python -m deploy.device_parity android --run-dir runs/default --tool build/native/android-arm64-<key>/bin/face_embed
    python -m deploy.device_parity here --run-dir runs/default --formats tensorrt --name jetson-orin

`android` pushes the project's face_embed (built for the phone with the NDK: `make android-tools`), the ncnn
model and the verification faces over adb, runs it, pulls the embeddings and gates them on this machine against
the run's PyTorch embeddings; rows are tagged with the phone's model, ABI and SoC (getprop). `here` runs the
formats' own runners on this machine (the Jetson image: TensorRT engines built on the device from the run's ONNX
export). Both write runs/<run>/devices/parity/<name>.json in the parity stage's schema, which the report's parity
table and the run's exit status pick up; the report is redrawn at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from pathlib import Path

from benchmarks.android import run_exports
from deploy.parity import ParityResult
from deploy.parity_run import parity_for_exports, parity_inputs
from pipeline.artifacts import write_json_atomic
from pipeline.config import ParityConfig, load_config, profile_path
from pipeline.errors import DataError, PipelineError
from pipeline.run_layout import RunLayout

log = logging.getLogger(__name__)
ANDROID_REMOTE_DIR = "/data/local/tmp/face-distill-parity"


def device_parity_path(run_dir: Path, name: str) -> Path:
    return RunLayout(run_dir).device_parity_file(name)


def android_parity(run_dir: Path, tool: Path, parity: ParityConfig, adb_executable: str | None = None,
                   serial: str | None = None, threads: int = 1) -> dict:
    """face_embed on the phone over every ncnn export of the run; the result document (device tag + rows)."""
    from benchmarks.android import Adb, attached_devices, check_binary_runs_on, choose_device, describe_android_device, find_adb, parse_getprop
    from deploy.native.tool_host import AdbHost
    from pipeline.stages.native_parity_stage import native_runner_choice

    if not tool.is_file():
        raise DataError(tool, "face_embed for the phone not found (build it: ANDROID_NDK=/path make android-tools)")
    records = run_exports(run_dir, "ncnn")
    executable = find_adb(adb_executable)
    serial = choose_device(attached_devices(Adb(executable).run("devices")), serial)
    adb = Adb(executable, serial)
    device = describe_android_device(parse_getprop(adb.shell("getprop")))
    device["serial"] = serial
    check_binary_runs_on(tool, device)
    spec, pairs, reference, student = parity_inputs(run_dir)
    host = AdbHost(adb, tool, device, ANDROID_REMOTE_DIR)
    try:
        features = host.cpu_features()
        log.info("%s: ncnn detects %s", host.label, features)
        results = parity_for_exports(run_dir / "export", records, spec, pairs, reference, parity, threads, student,
                                     runner=native_runner_choice(host))
    finally:
        host.close()
    for result in results:
        result.details.update({"device": device, "cpu_features": features})
    return {"device": device, "cpu_features": features, "verification_set": pairs.name, "results": [r.to_dict() for r in results]}


def parity_here(run_dir: Path, formats: list[str], parity: ParityConfig, name: str, threads: int = 1) -> dict:
    """The formats' own runners on this machine (a Jetson: TensorRT engines built here from the run's ONNX export)."""
    spec, pairs, reference, student = parity_inputs(run_dir)
    records = []
    for record in run_exports(run_dir):
        if record["format"] not in formats:
            continue
        if record["format"] == "tensorrt" and record["status"] != "exported":
            record = _tensorrt_record_here(run_dir, record, spec)
        records.append(record)
    if not records:
        raise DataError(RunLayout(run_dir).exports_file, f"no export of {', '.join(formats)} in this run")
    results: list[ParityResult] = parity_for_exports(run_dir / "export", records, spec, pairs, reference, parity, threads, student)
    device = {"kind": "board", "name": name, "cpu": platform.processor() or platform.machine(), "abi": platform.machine()}
    for result in results:
        result.backend = f"{result.backend} ({name})"
        result.details["device"] = device
    return {"device": device, "verification_set": pairs.name, "results": [r.to_dict() for r in results]}


def _tensorrt_record_here(run_dir: Path, record: dict, spec) -> dict:
    """Engines are built for one GPU: on the device, from the run's fp32 ONNX export (fp32/fp16; int8 needs the
    pipeline's calibration images, so it is built by running the pipeline on the device)."""
    from deploy.export.tensorrt_export import build_engine, engine_file_names, profile_shapes, tensorrt_available

    available, why_not = tensorrt_available()
    if not available:
        return {**record, "status": "skipped", "reason": why_not}
    if record["precision"] == "int8":
        return {**record, "status": "skipped", "reason": "int8 engines calibrate on the pipeline's images: run the pipeline on the device"}
    onnx_path = run_dir / "export" / "student_fp32.onnx"
    if not onnx_path.is_file():
        return {**record, "status": "error", "error": f"{onnx_path} missing: export onnx:fp32 too"}
    files = engine_file_names("student", record["precision"])
    engine_dir = run_dir / "export"
    facts = build_engine(onnx_path, engine_dir / files["engine"], spec.input_name, profile_shapes(spec, 64), record["precision"],
                         engine_dir / files["timing_cache"])
    return {**record, "status": "exported", "files": [files["engine"]], **facts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.device_parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished pipeline run (runs/<name>)")
    parser.add_argument("--profile", default="default", help="the run's profile: its parity gates and subset apply")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="result JSON (default: <run-dir>/devices/parity/<name>.json)")
    where = parser.add_subparsers(dest="where", required=True)
    android = where.add_parser("android", help="face_embed on an Android phone over adb")
    android.add_argument("--tool", type=Path, required=True, help="face_embed built for the phone (make android-tools)")
    android.add_argument("--serial", default=os.environ.get("ANDROID_SERIAL"), help="adb serial (default: $ANDROID_SERIAL, or the only device)")
    android.add_argument("--adb", help="adb executable (default: $ADB, then PATH)")
    here = where.add_parser("here", help="the formats' own runners on this machine (Jetson: TensorRT)")
    here.add_argument("--formats", nargs="+", default=["tensorrt"])
    here.add_argument("--name", default=platform.node() or "device", help="the device's name in the parity table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        parity = load_config(profile_path(args.profile)).parity
        if args.where == "android":
            document = android_parity(args.run_dir, args.tool, parity, args.adb, args.serial, args.threads)
            name = f"android_{document['device']['serial']}"
        else:
            document = parity_here(args.run_dir, args.formats, parity, args.name, args.threads)
            name = args.name
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or device_parity_path(args.run_dir, name)
    write_json_atomic(out, document)
    if RunLayout(args.run_dir).report_file.is_file():
        from benchmarks.report import build_report, config_as_yaml

        config = load_config(profile_path(args.profile))
        build_report(args.run_dir, args.run_dir / "report", config_as_yaml(config.model_dump(mode="json")))
        print(f"report redrawn with these rows: {RunLayout(args.run_dir).report_file}")
    for row in document["results"]:
        figures = (f"cos min {row['cosine_min']:.6f}, accuracy delta {row['accuracy_delta_points']:+.2f}"
                   if row.get("cosine_min") is not None else row.get("reason", ""))
        print(f"{row['backend']}/{row['precision']}: {row['status']} ({figures})")
    print(f"wrote {out}")
    return 1 if any(row["status"] in {"fail", "error"} for row in document["results"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
