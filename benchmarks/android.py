"""Latency on an Android phone: push the ncnn model and ncnn's benchncnn over adb, run it, pull and parse its output.

The result is the same latency file (schema in benchmarks/latency.py) tagged with the phone's model, ABI and
SoC as `adb shell getprop` reports them, so `python -m benchmarks.compare` can set it beside this machine's.
benchncnn is the user's (ncnn does not ship it in its wheels): give its path, or put it on PATH; without one, the
project's face_bench (same command line and output) is built as a static aarch64 program and pushed instead.
An emulator's timings (Android's emulator, or qemu) are tagged `emulated` and never read as a phone's latency.

    python -m benchmarks.android --run-dir runs/default --benchncnn ~/ncnn/build-android/benchmark/benchncnn
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.benchncnn import BENCHNCNN_ENV, benchncnn_arguments, find_benchncnn, parse_benchncnn_output, results_from_benchncnn
from benchmarks.latency import format_latency_table, latency_document, load_latency_document
from deploy.native.build import phone_tools
from pipeline.artifacts import write_json_atomic
from pipeline.errors import DataError, PipelineError
from pipeline.run_layout import MODEL_MANIFEST, ExportRecord, RunLayout, exports_digest, read_export_records

log = logging.getLogger(__name__)
REMOTE_DIR = "/data/local/tmp/face-distill-bench"
# ELF e_machine -> the Android ABIs that can run it.
_ELF_MACHINE_ABIS = {183: ("arm64-v8a",), 40: ("armeabi-v7a", "armeabi"), 62: ("x86_64",), 3: ("x86",)}


class AdbError(PipelineError):
    """adb is missing, no usable phone is attached, or a step on the phone failed."""


@dataclass
class Adb:
    """One adb executable talking to one device (serial None: the only one attached)."""

    executable: str
    serial: str | None = None
    timeout_s: float = 900

    def run(self, *args: str) -> str:
        command = [self.executable, *(["-s", self.serial] if self.serial else []), *args]
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AdbError(f"`adb {' '.join(args)[:80]}` did not finish within {self.timeout_s:.0f} s") from exc
        if completed.returncode != 0:
            tail = " | ".join((completed.stderr or completed.stdout).strip().splitlines()[-3:])
            raise AdbError(f"`adb {' '.join(args)[:80]}` failed (exit {completed.returncode}): {tail}")
        return completed.stdout

    def shell(self, command: str) -> str:
        return self.run("shell", command)


def find_adb(configured: str | None = None) -> str:
    candidate = configured or os.environ.get("ADB") or shutil.which("adb")
    if not candidate or not Path(candidate).is_file():
        raise AdbError("adb not found: install Android platform-tools (Debian: apt-get install adb) or set ADB=/path/to/adb")
    return str(candidate)


def attached_devices(adb_output: str) -> list[tuple[str, str]]:
    """(serial, state) pairs from `adb devices` output."""
    devices = []
    for line in adb_output.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.startswith(("List of devices", "*")):
            devices.append((fields[0], fields[1]))
    return devices


def choose_device(devices: list[tuple[str, str]], serial: str | None) -> str:
    """The serial to use, or an AdbError that says what to do."""
    if not devices:
        raise AdbError("no Android device: `adb devices` lists none; connect a phone with USB debugging on (or start an emulator)")
    states = dict(devices)
    if serial is None:
        if len(devices) > 1:
            raise AdbError(f"{len(devices)} devices attached ({', '.join(states)}): choose one with --serial or ANDROID_SERIAL")
        serial = devices[0][0]
    if serial not in states:
        raise AdbError(f"device {serial} is not attached; `adb devices` lists {', '.join(states)}")
    if states[serial] != "device":
        raise AdbError(f"device {serial} is {states[serial]}: accept the USB debugging prompt on the phone, then retry")
    return serial


def parse_getprop(text: str) -> dict[str, str]:
    """`[ro.product.model]: [Pixel 7]` lines -> {"ro.product.model": "Pixel 7"}."""
    properties = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("]: [")
        if sep and key.startswith("[") and value.endswith("]"):
            properties[key[1:]] = value[:-1]
    return properties


# Properties an emulator sets: Android's emulator (goldfish, ranchu) and QEMU-based ones; a phone sets none of them.
EMULATOR_HARDWARE = ("goldfish", "ranchu")


def is_emulator(properties: dict[str, str]) -> bool:
    return "1" in (properties.get("ro.kernel.qemu"), properties.get("ro.boot.qemu")) or properties.get("ro.hardware") in EMULATOR_HARDWARE


def describe_android_device(properties: dict[str, str]) -> dict:
    """The device tag of a phone's result file, read from its system properties; `emulated` where an emulator ran it."""
    get = properties.get
    soc = " ".join(part for part in (get("ro.soc.manufacturer"), get("ro.soc.model")) if part)
    return {
        "kind": "android",
        "emulated": is_emulator(properties),
        "name": " ".join(part for part in (get("ro.product.manufacturer"), get("ro.product.model")) if part) or "unknown",
        "model": get("ro.product.model"),
        "abi": get("ro.product.cpu.abi"),
        "abi_list": get("ro.product.cpu.abilist"),
        "cpu": soc or get("ro.board.platform") or get("ro.hardware") or "unknown",
        "board": get("ro.board.platform"),
        "android": get("ro.build.version.release"),
        "sdk": get("ro.build.version.sdk"),
    }


def elf_abis(binary: Path) -> tuple[str, ...]:
    """The Android ABIs that can run this ELF file; () for anything else."""
    header = binary.read_bytes()[:20]
    if header[:4] != b"\x7fELF":
        return ()
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return _ELF_MACHINE_ABIS.get(machine, ())


def check_binary_runs_on(binary: Path, device: dict) -> None:
    abis = elf_abis(binary)
    device_abis = (device.get("abi_list") or device.get("abi") or "").split(",")
    if not abis:
        raise AdbError(f"{binary}: not an ELF executable for Android (build ncnn's benchmark with the Android NDK)")
    if not set(abis) & set(device_abis):
        raise AdbError(f"{binary} is built for {'/'.join(abis)} but {device['name']} runs {', '.join(device_abis)}")


@dataclass
class PhoneRun:
    """What to run on the phone."""

    benchncnn: Path
    param: Path
    weights: Path | None
    input_whc: tuple[int, int, int]
    threads: list[int]
    loop_count: int = 50
    powersave: int = 2
    gpu_device: int = -1
    cooling_down: bool = True


def _sha256_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def benchmark_on_phone(adb: Adb, run: PhoneRun, model: dict | None = None, model_bytes: int | None = None,
                       measured_exports: str | None = None) -> dict:
    """Push, run once per thread count, pull, parse: a latency document tagged with the phone's description (and
    `measured_exports`, the exports_digest of the run whose model it timed)."""
    device = describe_android_device(parse_getprop(adb.shell("getprop")))
    check_binary_runs_on(run.benchncnn, device)
    adb.shell(f"mkdir -p {REMOTE_DIR}")
    remote_binary = f"{REMOTE_DIR}/benchncnn"
    adb.run("push", str(run.benchncnn), remote_binary)
    adb.shell(f"chmod 755 {remote_binary}")
    for local in (run.param, run.weights):
        if local is not None:
            adb.run("push", str(local), f"{REMOTE_DIR}/{local.name}")
    results = []
    with tempfile.TemporaryDirectory(prefix="benchncnn-") as pulled:
        for threads in run.threads:
            arguments = benchncnn_arguments(run.param.name, run.input_whc, run.loop_count, threads,
                                            run.powersave, run.gpu_device, run.cooling_down)
            remote_output = f"{REMOTE_DIR}/benchncnn_threads{threads}.txt"
            command = f"cd {REMOTE_DIR} && ./benchncnn {' '.join(shlex.quote(a) for a in arguments)} > {remote_output} 2>&1; echo benchncnn_exit=$?"
            status = adb.shell(command).strip().splitlines()
            local_output = Path(pulled) / Path(remote_output).name
            adb.run("pull", remote_output, str(local_output))
            text = local_output.read_text(errors="replace")
            if not status or status[-1] != "benchncnn_exit=0":
                tail = " | ".join(text.strip().splitlines()[-3:])
                raise AdbError(f"benchncnn on {device['name']} failed ({status[-1] if status else 'no exit status'}): {tail}")
            try:
                output = parse_benchncnn_output(text, f"{device['name']}:{remote_output}")
                rows = results_from_benchncnn(output, run.param.name, model_bytes)
            except ValueError as exc:
                raise AdbError(str(exc)) from None
            reported = output.settings.get("num_threads"), output.settings.get("loop_count")
            if reported != (threads, run.loop_count):
                raise AdbError(f"benchncnn on {device['name']} reports num_threads/loop_count {reported}, asked for {(threads, run.loop_count)}")
            results += rows
    settings = {"tool": run.benchncnn.name, "threads": run.threads, "loop_count": run.loop_count, "powersave": run.powersave,
                "gpu_device": run.gpu_device, "cooling_down": run.cooling_down, "model_file": run.param.name}
    versions = {"benchncnn": f"{run.benchncnn.name} sha256:{_sha256_prefix(run.benchncnn)}",
                "android": device.get("android") or "?", "sdk": device.get("sdk") or "?"}
    return latency_document(results, [], device, versions, model, settings, measured_exports)


def run_exports(run_dir: Path, exported_format: str | None = None) -> list[ExportRecord]:
    """The run's export records; with `exported_format`, only that format's exported models, and an error if none."""
    exports_path = RunLayout(run_dir).exports_file
    if not exports_path.is_file():
        raise DataError(exports_path, "no export results: run the pipeline (make mobile-model) first")
    records = read_export_records(exports_path.parent)
    if exported_format is None:
        return records
    records = [r for r in records if r["format"] == exported_format and r["status"] == "exported"]
    if not records:
        raise DataError(exports_path, f"no exported {exported_format} model (add {exported_format} to export.formats)")
    return records


def ncnn_model_of_run(run_dir: Path, precision: str) -> tuple[Path, Path, tuple[int, int, int], int | None, dict | None]:
    """(param, bin, input w,h,c, model bytes, model facts) of the run's ncnn export at `precision`."""
    export_dir = run_dir / "export"
    records = run_exports(run_dir, "ncnn")
    record = next((r for r in records if r["precision"] == precision), records[0])
    param, weights = (export_dir / name for name in record["files"])
    preprocess = json.loads((export_dir / MODEL_MANIFEST).read_text())["preprocess"]
    latency_path = RunLayout(run_dir).latency_file
    model = load_latency_document(latency_path).get("model") if latency_path.is_file() else None
    return param, weights, (preprocess["width"], preprocess["height"], 3), record.get("bytes"), model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.android", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a pipeline run (runs/<name>) with an ncnn export")
    parser.add_argument("--benchncnn", help=f"ncnn's benchncnn built for the phone (default: ${BENCHNCNN_ENV}, then PATH, then the "
                        "project's face_bench, built here as a static aarch64 program on first use)")
    parser.add_argument("--serial", default=os.environ.get("ANDROID_SERIAL"), help="adb device serial (default: $ANDROID_SERIAL, or the only device)")
    parser.add_argument("--adb", help="adb executable (default: $ADB, then PATH)")
    parser.add_argument("--precision", default="fp16", help="which ncnn export to push (benchncnn itself always runs fp16 where the CPU can)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--loops", type=int, default=50, help="timed runs per thread count (after benchncnn's 8 warm-up runs)")
    parser.add_argument("--powersave", type=int, default=2, choices=(0, 1, 2), help="0 all cores, 1 little cores, 2 big cores")
    parser.add_argument("--gpu-device", type=int, default=-1, help="-1 CPU only, N the Vulkan GPU N")
    parser.add_argument("--no-cooling-down", action="store_true", help="skip benchncnn's 10 s pause before timing")
    parser.add_argument("--out", type=Path, help="result JSON (default: <run-dir>/devices/android_<serial>.json)")
    args = parser.parse_args(argv)
    try:
        binary, why_not = find_benchncnn(args.benchncnn, runs_here=False)
        if binary is None and args.benchncnn:
            raise AdbError(why_not)
        executable = find_adb(args.adb)
        serial = choose_device(attached_devices(Adb(executable).run("devices")), args.serial)
        if binary is None:  # the project's face_bench speaks benchncnn's command line (static aarch64: no NDK needed)
            log.info("android: %s; timing with the project's face_bench for the phone", why_not)
            binary = phone_tools().bench
        param, weights, input_whc, model_bytes, model = ncnn_model_of_run(args.run_dir, args.precision)
        measured_exports = exports_digest(RunLayout(args.run_dir).exports_file.parent)
        run = PhoneRun(binary, param, weights, input_whc, args.threads, args.loops, args.powersave, args.gpu_device, not args.no_cooling_down)
        document = benchmark_on_phone(Adb(executable, serial), run, model, model_bytes, measured_exports)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or RunLayout(args.run_dir).device_latency_file(f"android_{serial}")
    write_json_atomic(out, document)
    device = document["device"]
    print(f"{device['name']} ({device['cpu']}, {device['abi']})" + (": EMULATED, these times are not a phone's latency" if device["emulated"] else ""))
    print(format_latency_table(document["results"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
