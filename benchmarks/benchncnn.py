"""ncnn's own benchmark tool, benchncnn: where to find it, how to call it on one model, and how to read what it prints.

benchncnn (ncnn's benchmark/benchncnn.cpp) takes `[loop count] [num threads] [powersave] [gpu device]
[cooling down] param=<model.param> shape=[w,h,c]`, echoes its settings (`loop_count = 4`, ...), and prints one
line per model: `<name>  min = %7.2f  max = %7.2f  avg = %7.2f`, or, when given `-1,0` (CPU then GPU),
`<name> cpu min = ...  avg = ...  user = ...  sys = ...` with a `speed_ratio`/`cpu_ratio` tail on the second.
Vulkan builds first print lines about the GPU (`[0 Adreno (TM) 640]  queueC=...`). It never reads the .bin
(weights are zeros) and always turns on fp16 storage and arithmetic, which the CPU uses where it has them: it
times the graph at ncnn's fastest settings, so its rows are labelled fp16.

The project's own face_bench (deploy/native/face_bench.cpp) speaks the same command line and prints the same
lines, plus `precision = <p>`; given `bin=` it runs the real weights. Its rows are backend "ncnn-native".
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.latency import LatencyResult
from pipeline.run_layout import ExportRecord

BENCHNCNN_ENV = "BENCHNCNN"
BENCHNCNN_BACKEND = "ncnn-benchncnn"
BENCHNCNN_PRECISION = "fp16"
NOT_FOUND_REASON = f"benchncnn not found (set {BENCHNCNN_ENV}=/path or put it on PATH)"

_SETTING = re.compile(r"^(loop_count|num_threads|powersave|gpu_device|cooling_down) = (-?\d+)\s*$")
_PRECISION = re.compile(r"^precision = (fp32|fp16|int8)\s*$")  # face_bench only
NATIVE_BACKEND = "ncnn-native"
_NUMBER = r"\d+(?:\.\d+)?"
_MODEL_LINE = re.compile(
    rf"^\s*(?P<name>\S.*?)\s+(?:(?P<device>cpu|gpu)\s+)?min =\s*(?P<min>{_NUMBER})\s+max =\s*(?P<max>{_NUMBER})"
    rf"\s+avg =\s*(?P<avg>{_NUMBER})(?:\s+user =\s*(?P<user>{_NUMBER})\s+sys =\s*(?P<sys>{_NUMBER}))?"
)
_GPU_INFO = re.compile(r"^\[(\d+) (.+?)\]\s+(.*)$")


@dataclass
class BenchncnnLine:
    """One timed model: milliseconds per inference over `loop_count` runs after benchncnn's warm-up."""

    name: str
    device: str  # "cpu" or "gpu"
    min_ms: float
    max_ms: float
    avg_ms: float
    user_ms: float | None = None
    sys_ms: float | None = None


@dataclass
class BenchncnnOutput:
    settings: dict[str, int] = field(default_factory=dict)
    lines: list[BenchncnnLine] = field(default_factory=list)
    gpu_info: dict[str, list[str]] = field(default_factory=dict)  # "0 Adreno (TM) 640" -> its info lines
    precision: str = BENCHNCNN_PRECISION  # benchncnn's fixed setting; face_bench says which it ran


def parse_benchncnn_output(text: str, source: str = "benchncnn output") -> BenchncnnOutput:
    """Settings, timed lines and GPU description from benchncnn's output; ValueError when nothing was timed."""
    output = BenchncnnOutput()
    for raw in text.splitlines():
        line = raw.rstrip()
        if setting := _SETTING.match(line.strip()):
            output.settings[setting.group(1)] = int(setting.group(2))
        elif precision := _PRECISION.match(line.strip()):
            output.precision = precision.group(1)
        elif gpu := _GPU_INFO.match(line.strip()):
            output.gpu_info.setdefault(f"{gpu.group(1)} {gpu.group(2)}", []).append(gpu.group(3))
        elif model := _MODEL_LINE.match(line):
            user, system = model.group("user"), model.group("sys")
            device = model.group("device") or ("gpu" if output.settings.get("gpu_device", -1) >= 0 else "cpu")
            output.lines.append(BenchncnnLine(model.group("name").strip(), device, float(model.group("min")), float(model.group("max")),
                                              float(model.group("avg")), float(user) if user else None, float(system) if system else None))
    if not output.lines:
        tail = " | ".join(text.strip().splitlines()[-3:]) or "empty"
        raise ValueError(f"{source}: no timing lines ('<model>  min = ...  max = ...  avg = ...'); it ended: {tail}")
    return output


def benchncnn_arguments(param: str, input_whc: tuple[int, int, int], loop_count: int, threads: int,
                        powersave: int = 0, gpu_device: int = -1, cooling_down: bool = False) -> list[str]:
    """benchncnn's positional settings and its key=value pair for one user model (shape in ncnn's w,h,c order)."""
    width, height, channels = input_whc
    return [str(loop_count), str(threads), str(powersave), str(gpu_device), str(int(cooling_down)),
            f"param={param}", f"shape=[{width},{height},{channels}]"]


def results_from_benchncnn(output: BenchncnnOutput, param_name: str, model_bytes: int | None = None, batch: int = 1,
                           backend: str = BENCHNCNN_BACKEND, tool: str = "benchncnn") -> list[LatencyResult]:
    """The lines benchncnn printed for `param_name` as latency rows (min/max/avg only: percentiles stay empty).

    benchncnn names a user model by the param path it was given; a run that printed no line for it failed.
    """
    lines = [line for line in output.lines if Path(line.name).name == param_name]
    if not lines:
        raise ValueError(f"benchncnn printed no timing for {param_name} (it timed: {', '.join(l.name for l in output.lines)})")
    settings = output.settings
    results = []
    for line in lines:
        results.append(LatencyResult(
            backend if line.device == "cpu" else f"{backend}-gpu", output.precision,
            settings.get("num_threads", 0), batch, settings.get("loop_count", 0),
            None, None, None, line.avg_ms, None, line.min_ms, line.max_ms, round(batch * 1000 / line.avg_ms, 2),
            model_bytes=model_bytes, tool=tool,
            settings={k: v for k, v in settings.items() if k not in {"num_threads", "loop_count"}}
            | ({"user_ms": line.user_ms, "sys_ms": line.sys_ms} if line.user_ms is not None else {}),
        ))
    return results


def find_benchncnn(configured: str | None = None, runs_here: bool = True) -> tuple[Path | None, str]:
    """(path, "") of benchncnn from the config, $BENCHNCNN or PATH; else (None, why not).

    `runs_here=False` for a binary that only the phone runs: it must exist, not be executable on this machine.
    """
    candidate = configured or os.environ.get(BENCHNCNN_ENV)
    if candidate:
        path = Path(candidate).expanduser()
        if path.is_file() and (not runs_here or os.access(path, os.X_OK)):
            return path, ""
        return None, f"benchncnn at {path} is missing" + (" or not executable" if runs_here else "")
    found = shutil.which("benchncnn")
    return (Path(found), "") if found else (None, NOT_FOUND_REASON)


def run_benchncnn_here(binary: Path, param_path: Path, input_whc: tuple[int, int, int], loop_count: int, threads: int,
                       timeout_s: float = 600, extra: tuple[str, ...] = ()) -> BenchncnnOutput:
    """Run benchncnn (or face_bench, with `extra` keys such as bin=, precision=) here and parse what it printed on stderr."""
    arguments = [*benchncnn_arguments(str(param_path.resolve()), input_whc, loop_count, threads), *extra]
    completed = subprocess.run([str(binary), *arguments], capture_output=True, text=True, timeout=timeout_s, check=False)
    text = completed.stderr + completed.stdout
    if completed.returncode != 0:
        raise RuntimeError(f"{binary} exited with {completed.returncode}: {' | '.join(text.strip().splitlines()[-3:])}")
    return parse_benchncnn_output(text, str(binary))


def benchncnn_here(export_dir: Path, export_records: list[ExportRecord], input_whc: tuple[int, int, int], thread_counts: list[int],
                   loop_count: int, configured: str | None = None) -> tuple[list[LatencyResult], list[dict]]:
    """The desktop C++ path: benchncnn on this machine for the exported ncnn graph; else why it was skipped.

    One run per thread count on the first ncnn export: benchncnn ignores the weights file, so the fp32 and fp16
    exports are the same graph to it.
    """
    records = [r for r in export_records if r["format"] == "ncnn" and r["status"] == "exported"]
    if not records:
        return [], []
    binary, why_not = find_benchncnn(configured)
    if binary is None:
        return [], [{"backend": BENCHNCNN_BACKEND, "precision": BENCHNCNN_PRECISION, "reason": why_not}]
    results = []
    try:
        for threads in thread_counts:
            param = export_dir / records[0]["files"][0]
            output = run_benchncnn_here(binary, param, input_whc, loop_count, threads)
            results += results_from_benchncnn(output, param.name, records[0].get("bytes"))
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        return [], [{"backend": BENCHNCNN_BACKEND, "precision": BENCHNCNN_PRECISION, "reason": f"benchncnn failed: {exc}"}]
    return results, []


def face_bench_here(export_dir: Path, export_records: list[ExportRecord], input_whc: tuple[int, int, int], thread_counts: list[int],
                    loop_count: int) -> tuple[list[LatencyResult], list[dict]]:
    """The project's face_bench on every ncnn export, real weights at the export's precision (builds the host tools
    on first use, minutes, cached in build/); else why it was skipped."""
    from deploy.native.build import build_tools, get_target
    from pipeline.errors import PipelineError

    records = [r for r in export_records if r["format"] == "ncnn" and r["status"] == "exported"]
    if not records:
        return [], []
    try:
        binary = build_tools(get_target("host")).bench
    except PipelineError as exc:
        return [], [{"backend": NATIVE_BACKEND, "precision": r["precision"], "reason": f"native tools not built: {exc}"} for r in records]
    results, skipped = [], []
    for record in records:
        param, weights = (export_dir / name for name in record["files"])
        try:
            for threads in thread_counts:
                output = run_benchncnn_here(binary, param, input_whc, loop_count, threads,
                                            extra=(f"bin={weights.resolve()}", f"precision={record['precision']}"))
                results += results_from_benchncnn(output, param.name, record.get("bytes"), backend=NATIVE_BACKEND, tool="face_bench")
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            skipped.append({"backend": NATIVE_BACKEND, "precision": record["precision"], "reason": f"face_bench failed: {exc}"})
    return results, skipped
