"""TensorRT's own command-line builder and benchmark, trtexec: engine build from the ONNX export and its timing.

trtexec ships with TensorRT (JetPack: /usr/src/tensorrt/bin/trtexec) and needs neither torch nor Python
bindings, so a Jetson image without torch still builds engines and times them. Its summary line
`[I] Latency: min = 9.1 ms, max = 11.7 ms, mean = 9.8 ms, median = 9.76 ms, percentile(90%) = 10.1 ms, ...`
(end to end on the GPU: host-to-device copy, compute, device-to-host copy) becomes a row of the latency file;
`Timing trace has N queries over T s` gives the number of timed runs.

Its flags follow the installed TensorRT (read from the `[TensorRT v100300]` banner of `trtexec --help`) through the
same plan as the Python builder (deploy.export.tensorrt_export.tensorrt_build_plan): fp32 with `--noTF32` (trtexec
allows TF32 unless told, so an "fp32" row would time TF32 kernels), strongly typed from 10.0 (`--stronglyTyped`;
always on in 11, which has no such flag to give); fp16 with `--fp16` on the fp32 ONNX before 10.12, and from 10.12 on
strongly typed from an fp16 copy of the ONNX (11 rejects `--fp16`). Each row's settings carry the version and flags.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from benchmarks.latency import LatencyResult
from deploy.export.tensorrt_export import BuildPlan, tensorrt_build_plan, write_fp16_onnx
from pipeline.run_layout import ExportRecord

TRTEXEC_ENV = "TRTEXEC"
JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
TRTEXEC_BACKEND = "tensorrt-trtexec"
TRTEXEC_PRECISIONS = ("fp32", "fp16")
NOT_FOUND_REASON = f"trtexec not found (TensorRT's tool: set {TRTEXEC_ENV}=/path, put it on PATH, or use JetPack's {JETPACK_TRTEXEC})"

_NUMBER = r"\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_LATENCY = re.compile(rf"\bLatency: min = ({_NUMBER}) ms, max = ({_NUMBER}) ms, mean = ({_NUMBER}) ms, median = ({_NUMBER}) ms(?P<rest>.*)$")
_PERCENTILE = re.compile(rf"percentile\(({_NUMBER})%\) = ({_NUMBER}) ms")
_QUERIES = re.compile(rf"Timing trace has (\d+) queries over ({_NUMBER}) s")
_BANNER = re.compile(r"\[TensorRT v(\d+)\]")
ASSUMED_VERSION = "10.3"  # where the banner cannot be read: JetPack 6's TensorRT, the image's base
_BUILDER_FLAGS = {"FP16": "--fp16", "INT8": "--int8"}


def parse_trtexec_latency(text: str, source: str = "trtexec output") -> dict:
    """{'min_ms', 'max_ms', 'mean_ms', 'median_ms', 'percentiles': {90.0: ms, ...}, 'queries'} from trtexec's summary."""
    for line in text.splitlines():
        if (match := _LATENCY.search(line)) and "GPU Compute" not in line and "H2D" not in line and "D2H" not in line:
            queries = _QUERIES.search(text)
            return {"min_ms": float(match.group(1)), "max_ms": float(match.group(2)), "mean_ms": float(match.group(3)),
                    "median_ms": float(match.group(4)),
                    "percentiles": {float(p): float(ms) for p, ms in _PERCENTILE.findall(match.group("rest"))},
                    "queries": int(queries.group(1)) if queries else 0}
    tail = " | ".join(text.strip().splitlines()[-3:]) or "empty"
    raise ValueError(f"{source}: no 'Latency: min = ... median = ...' summary; it ended: {tail}")


def parse_trtexec_version(text: str) -> str | None:
    """The version in trtexec's banner: `[TensorRT v100300]` is 10.3.0 (from 10 on, major*10000), `v8601` is 8.6.1."""
    match = _BANNER.search(text)
    if match is None:
        return None
    number = int(match.group(1))
    major, rest = divmod(number, 10000) if number >= 100000 else divmod(number, 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def trtexec_version(binary: Path, timeout_s: float = 60) -> str | None:
    """The TensorRT version of `binary`, from the banner `trtexec --help` prints first; None where it prints none."""
    try:
        completed = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_trtexec_version(completed.stdout + completed.stderr)


def trtexec_plan(precision: str, version: str | None) -> BuildPlan:
    if precision not in TRTEXEC_PRECISIONS:
        raise ValueError(f"trtexec precision must be one of {TRTEXEC_PRECISIONS}, got {precision!r}")
    return tensorrt_build_plan(version or ASSUMED_VERSION, precision)


def precision_flags(plan: BuildPlan) -> list[str]:
    """trtexec's spelling of a build plan: --stronglyTyped, --fp16/--int8 (weak typing only), --noTF32."""
    flags = ["--stronglyTyped"] if "STRONGLY_TYPED" in plan.network_flags else []
    flags += [_BUILDER_FLAGS[name] for name in plan.builder_flags]
    return flags + (["--noTF32"] if "TF32" in plan.cleared_flags else [])


def trtexec_arguments(onnx: Path, engine: Path, input_name: str, input_chw: tuple[int, int, int], batch: int, max_batch: int,
                      precision: str, build: bool, duration_s: int = 3, version: str | None = None) -> list[str]:
    """Build the engine (dynamic batch 1..max_batch, tuned for `batch`) and save it, or load the saved one; time it at `batch`.

    `onnx` must be the source the plan names (`trtexec_source`): the fp16 copy for fp16 from TensorRT 10.12 on."""
    plan = trtexec_plan(precision, version)
    shape = "x".join(str(v) for v in input_chw)
    engine_arguments = ([f"--onnx={onnx}", f"--saveEngine={engine}", f"--minShapes={input_name}:1x{shape}",
                         f"--optShapes={input_name}:{batch}x{shape}", f"--maxShapes={input_name}:{max_batch}x{shape}",
                         *precision_flags(plan)] if build else [f"--loadEngine={engine}"])
    return [*engine_arguments, f"--shapes={input_name}:{batch}x{shape}", f"--duration={duration_s}", "--percentile=90,95,99"]


def trtexec_source(fp32_onnx: Path, precision: str, version: str | None, engine_dir: Path) -> Path:
    """The ONNX trtexec builds `precision` from: the fp32 export, or its fp16 copy (written into `engine_dir`)."""
    if trtexec_plan(precision, version).source == "fp32":
        return fp32_onnx
    try:
        return write_fp16_onnx(fp32_onnx, engine_dir / f"student_{precision}.trt.onnx")
    except Exception as exc:  # onnx missing, or a graph the converter refuses: this row says so
        raise RuntimeError(f"no fp16 copy of {fp32_onnx.name} for TensorRT {version}: {exc.__class__.__name__}: {exc}") from exc


def find_trtexec() -> tuple[Path | None, str]:
    for candidate in (os.environ.get(TRTEXEC_ENV), shutil.which("trtexec"), JETPACK_TRTEXEC):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate), ""
    return None, NOT_FOUND_REASON


def result_from_trtexec(summary: dict, precision: str, batch: int, model_bytes: int | None, version: str | None = None,
                        build_flags: list[str] | None = None) -> LatencyResult:
    """A latency row; its settings say which TensorRT built the engine, with which flags, and whether TF32 was allowed."""
    percentiles = summary["percentiles"]
    settings = {"threads": "one host thread enqueues; the GPU computes", "percentiles": {str(k): v for k, v in percentiles.items()}}
    if build_flags is not None:
        settings.update(tensorrt=version or f"unknown (flags for {ASSUMED_VERSION})", build_flags=build_flags,
                        tf32="off (--noTF32)" if "--noTF32" in build_flags else "allowed")
    return LatencyResult(TRTEXEC_BACKEND, precision, 1, batch, summary["queries"], summary["median_ms"], percentiles.get(90.0),
                         percentiles.get(99.0), summary["mean_ms"], None, summary["min_ms"], summary["max_ms"],
                         round(batch * 1000 / summary["median_ms"], 2), model_bytes=model_bytes, tool="trtexec", settings=settings)


def trtexec_here(export_dir: Path, export_records: list[ExportRecord], input_name: str, input_chw: tuple[int, int, int],
                 batches: list[int], engine_dir: Path, timeout_s: float = 1800) -> tuple[list[LatencyResult], list[dict]]:
    """Engines built here from the fp32 ONNX export at fp32 and fp16, each timed at every batch size; else why not."""
    onnx = next((r for r in export_records if r["format"] == "onnx" and r["precision"] == "fp32" and r["status"] == "exported"), None)
    if onnx is None:
        return [], []
    binary, why_not = find_trtexec()
    if binary is None:
        return [], [{"backend": TRTEXEC_BACKEND, "precision": precision, "reason": why_not} for precision in TRTEXEC_PRECISIONS]
    engine_dir.mkdir(parents=True, exist_ok=True)
    version = trtexec_version(binary)
    results, skipped = [], []
    for precision in TRTEXEC_PRECISIONS:
        try:
            results += _time_precision(binary, version, export_dir / onnx["files"][0], precision, input_name, input_chw, batches,
                                       engine_dir, timeout_s)
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            skipped.append({"backend": TRTEXEC_BACKEND, "precision": precision, "reason": f"trtexec failed: {exc}"})
    return results, skipped


def _time_precision(binary: Path, version: str | None, fp32_onnx: Path, precision: str, input_name: str,
                    input_chw: tuple[int, int, int], batches: list[int], engine_dir: Path, timeout_s: float) -> list[LatencyResult]:
    """Build the engine at the first batch size, load it for the others; one row per batch size."""
    engine = engine_dir / f"student_{precision}.engine"
    source = trtexec_source(fp32_onnx, precision, version, engine_dir)
    flags = precision_flags(trtexec_plan(precision, version))
    results = []
    for number, batch in enumerate(batches):
        arguments = trtexec_arguments(source, engine, input_name, input_chw, batch, max(batches), precision, build=number == 0,
                                      version=version)
        completed = subprocess.run([str(binary), *arguments], capture_output=True, text=True, timeout=timeout_s, check=False)
        (engine_dir / f"trtexec_{precision}_batch{batch}.log").write_text(completed.stdout + completed.stderr)
        if completed.returncode != 0:
            tail = " | ".join((completed.stdout + completed.stderr).strip().splitlines()[-3:])
            raise RuntimeError(f"exit {completed.returncode}: {tail}")
        summary = parse_trtexec_latency(completed.stdout, f"trtexec {precision} batch {batch}")
        results.append(result_from_trtexec(summary, precision, batch, engine.stat().st_size if engine.is_file() else None,
                                           version, flags))
    return results
