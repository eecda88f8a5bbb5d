"""Parity on the device itself: the same numeric and accuracy gates, run where the model will be deployed.

    python -m app.device_parity android --run-dir runs/default --tool build/native/android-arm64-<key>/bin/face_embed
    python -m app.device_parity here --run-dir runs/default --formats tensorrt --name jetson-orin

`android` pushes the project's face_embed (built for the phone with the NDK: `make android-tools`), the ncnn
model and the verification faces over adb, runs it, pulls the embeddings and gates them on this machine against
the run's PyTorch embeddings; rows are tagged with the phone's model, ABI and SoC (getprop). `here` runs the
formats' own runners on this machine (the Jetson image: TensorRT engines built on the device from the run's ONNX
export). Both write runs/<run>/devices/parity/<name>.json in the parity stage's schema, with when it ran and which
of the run's exports it measured (exports_digest): the report's parity table and the run's exit status pick up the
rows of the current export, and the report lists a file from an earlier one as stale; the report is redrawn at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.android import run_exports
from deploy.parity import ParityResult
from deploy.parity_run import parity_for_exports, parity_inputs
from pipeline.artifacts import write_json_atomic
from pipeline.config import ParityConfig, load_config, profile_path
from pipeline.errors import DataError, PipelineError
from pipeline.optional_modules import installed
from pipeline.run_layout import EXPORTS_DIGEST, RunLayout, exports_digest

log = logging.getLogger(__name__)
ANDROID_REMOTE_DIR = "/data/local/tmp/face-distill-parity"


def device_parity_path(run_dir: Path, name: str) -> Path:
    return RunLayout(run_dir).device_parity_file(name)


def measured_now(run_dir: Path) -> dict:
    """When device parity ran and which export of the run it measured, so that a re-export makes its rows stale
    instead of leaving them in the report as the new export's."""
    return {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            EXPORTS_DIGEST: exports_digest(RunLayout(run_dir).exports_file.parent)}


def android_parity(run_dir: Path, tool: Path | None, parity: ParityConfig, adb_executable: str | None = None,
                   serial: str | None = None, threads: int = 1) -> dict:
    """face_embed on the phone over every ncnn export of the run; the result document (device tag + rows).

    Without `tool`, the project's phone build (deploy.native.build.phone_tools: no NDK needed), once a device is there."""
    from app.stages.native_parity_stage import native_runner_choice
    from benchmarks.android import Adb, attached_devices, check_binary_runs_on, choose_device, describe_android_device, find_adb, parse_getprop
    from deploy.native.build import phone_tools
    from deploy.native.tool_host import AdbHost

    if tool is not None and not tool.is_file():
        raise DataError(tool, "face_embed for the phone not found (leave --tool out to build the static aarch64 one)")
    records = run_exports(run_dir, "ncnn")
    measured = measured_now(run_dir)
    executable = find_adb(adb_executable)
    serial = choose_device(attached_devices(Adb(executable).run("devices")), serial)
    adb = Adb(executable, serial)
    device = describe_android_device(parse_getprop(adb.shell("getprop")))
    device["serial"] = serial
    tool = tool or phone_tools().embed
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
    return {**measured, "device": device, "cpu_features": features, "verification_set": pairs.name,
            "results": [r.to_dict() for r in results]}


def parity_here(run_dir: Path, formats: list[str], parity: ParityConfig, name: str, threads: int = 1) -> dict:
    """The formats' own runners on this machine. TensorRT engines are built here from the run's ONNX export, never
    taken from the host: an engine loads only on the GPU and TensorRT version that built it (a Jetson's is not the
    workstation's); they go to devices/engines/<name>/, and the run's export folder stays as the host wrote it."""
    from deploy.export.tensorrt_export import engine_record_here

    spec, pairs, reference, student = parity_inputs(run_dir)
    export_dir, records = run_dir / "export", run_exports(run_dir)
    measured = measured_now(run_dir)
    chosen = [record for record in records if record["format"] in formats]
    if not chosen:
        raise DataError(RunLayout(run_dir).exports_file, f"no export of {', '.join(formats)} in this run")
    engine_dir = RunLayout(run_dir).device_engine_dir(name)
    engines = [engine_record_here(export_dir, engine_dir, record, records, spec) for record in chosen if record["format"] == "tensorrt"]
    results: list[ParityResult] = []
    for folder, folder_records in ((export_dir, [r for r in chosen if r["format"] != "tensorrt"]), (engine_dir, engines)):
        if folder_records:
            results += parity_for_exports(folder, folder_records, spec, pairs, reference, parity, threads, student)
    device = {"kind": "board", "name": name, "cpu": platform.processor() or platform.machine(), "abi": platform.machine()}
    for result in results:
        result.backend = f"{result.backend} ({name})"
        result.details["device"] = device
    return {**measured, "device": device, "verification_set": pairs.name, "results": [r.to_dict() for r in results]}


REPORT_PACKAGES = ("matplotlib",)  # what drawing the report needs beyond the deploy images' packages


def redraw_report(run_dir: Path, profile: str) -> bool:
    """Redraw the run's report with the new rows where its plotting stack is installed; in a deploy image (no
    matplotlib: docker-check found device parity exiting 1 there after writing its rows) say where to redraw it."""
    missing = [name for name in REPORT_PACKAGES if not installed(name)]
    if missing:
        print(f"report not redrawn here ({', '.join(missing)} not installed): the rows are in the run folder, and the host "
              f"draws them: `python -m pipeline run --profile {profile} --from report`")
        return False
    from benchmarks.report import build_report, config_as_yaml

    config = load_config(profile_path(profile))
    build_report(run_dir, run_dir / "report", config_as_yaml(config.model_dump(mode="json")))
    print(f"report redrawn with these rows: {RunLayout(run_dir).report_file}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.device_parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished pipeline run (runs/<name>)")
    parser.add_argument("--profile", default="default", help="the run's profile: its parity gates and subset apply")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="result JSON (default: <run-dir>/devices/parity/<name>.json)")
    parser.add_argument("--max-images", type=int, help="parity on the first N verification images (default: the profile's "
                        "parity.max_images); an emulated phone takes seconds per face")
    where = parser.add_subparsers(dest="where", required=True)
    android = where.add_parser("android", help="face_embed on an Android phone over adb")
    android.add_argument("--tool", type=Path, help="face_embed built for the phone (default: the NDK build where ANDROID_NDK is "
                         "set, else the static aarch64 Linux build, built here on first use)")
    android.add_argument("--serial", default=os.environ.get("ANDROID_SERIAL"), help="adb serial (default: $ANDROID_SERIAL, or the only device)")
    android.add_argument("--adb", help="adb executable (default: $ADB, then PATH)")
    here = where.add_parser("here", help="the formats' own runners on this machine (Jetson: TensorRT)")
    here.add_argument("--formats", nargs="+", default=["tensorrt"])
    here.add_argument("--name", default=platform.node() or "device", help="the device's name in the parity table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        overrides = {} if args.max_images is None else {"parity.max_images": args.max_images}
        parity = load_config(profile_path(args.profile), overrides).parity
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
        redraw_report(args.run_dir, args.profile)
    for row in document["results"]:
        figures = (f"cos min {row['cosine_min']:.6f}, accuracy delta {row['accuracy_delta_points']:+.2f}"
                   if row.get("cosine_min") is not None else row.get("reason", ""))
        print(f"{row['backend']}/{row['precision']}: {row['status']} ({figures})")
    print(f"wrote {out}")
    return 1 if any(row["status"] in {"fail", "error"} for row in document["results"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
