"""TensorRT's own command-line builder and benchmark, trtexec: engine build from the ONNX export and its timing.

trtexec ships with TensorRT (JetPack: /usr/src/tensorrt/bin/trtexec) and needs neither torch nor Python
bindings, so a Jetson image without torch still builds engines and times them. Its summary line
`[I] Latency: min = 9.1 ms, max = 11.7 ms, mean = 9.8 ms, median = 9.76 ms, percentile(90%) = 10.1 ms, ...`
(end to end on the GPU: host-to-device copy, compute, device-to-host copy) becomes a row of the latency file;
`Timing trace has N queries over T s` gives the number of timed runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from benchmarks.latency import LatencyResult

TRTEXEC_ENV = "TRTEXEC"
JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
TRTEXEC_BACKEND = "tensorrt-trtexec"
TRTEXEC_PRECISIONS = ("fp32", "fp16")
NOT_FOUND_REASON = f"trtexec not found (TensorRT's tool: set {TRTEXEC_ENV}=/path, put it on PATH, or use JetPack's {JETPACK_TRTEXEC})"

_NUMBER = r"\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_LATENCY = re.compile(rf"\bLatency: min = ({_NUMBER}) ms, max = ({_NUMBER}) ms, mean = ({_NUMBER}) ms, median = ({_NUMBER}) ms(?P<rest>.*)$")
_PERCENTILE = re.compile(rf"percentile\(({_NUMBER})%\) = ({_NUMBER}) ms")
_QUERIES = re.compile(rf"Timing trace has (\d+) queries over ({_NUMBER}) s")


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


def trtexec_arguments(onnx: Path, engine: Path, input_name: str, input_chw: tuple[int, int, int], batch: int, max_batch: int,
                      precision: str, build: bool, duration_s: int = 3) -> list[str]:
    """Build the engine (dynamic batch 1..max_batch, tuned for `batch`) and save it, or load the saved one; time it at `batch`."""
    if precision not in TRTEXEC_PRECISIONS:
        raise ValueError(f"trtexec precision must be one of {TRTEXEC_PRECISIONS}, got {precision!r}")
    shape = "x".join(str(v) for v in input_chw)
    engine_arguments = ([f"--onnx={onnx}", f"--saveEngine={engine}", f"--minShapes={input_name}:1x{shape}",
                         f"--optShapes={input_name}:{batch}x{shape}", f"--maxShapes={input_name}:{max_batch}x{shape}",
                         # trtexec allows TF32 unless told not to: an "fp32" row would time TF32 kernels
                         *(["--fp16"] if precision == "fp16" else ["--noTF32"])] if build else [f"--loadEngine={engine}"])
    return [*engine_arguments, f"--shapes={input_name}:{batch}x{shape}", f"--duration={duration_s}", "--percentile=90,95,99"]


def find_trtexec() -> tuple[Path | None, str]:
    for candidate in (os.environ.get(TRTEXEC_ENV), shutil.which("trtexec"), JETPACK_TRTEXEC):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate), ""
    return None, NOT_FOUND_REASON


def result_from_trtexec(summary: dict, precision: str, batch: int, model_bytes: int | None) -> LatencyResult:
    percentiles = summary["percentiles"]
    return LatencyResult(TRTEXEC_BACKEND, precision, 1, batch, summary["queries"], summary["median_ms"], percentiles.get(90.0),
                         percentiles.get(99.0), summary["mean_ms"], None, summary["min_ms"], summary["max_ms"],
                         round(batch * 1000 / summary["median_ms"], 2), model_bytes=model_bytes, tool="trtexec",
                         settings={"threads": "one host thread enqueues; the GPU computes", "percentiles": {str(k): v for k, v in percentiles.items()}})


def trtexec_here(export_dir: Path, export_records: list[dict], input_name: str, input_chw: tuple[int, int, int],
                 batches: list[int], engine_dir: Path, timeout_s: float = 1800) -> tuple[list[LatencyResult], list[dict]]:
    """Engines from the fp32 ONNX export at fp32 and fp16, each timed at every batch size; else why not."""
    onnx = next((r for r in export_records if r["format"] == "onnx" and r["precision"] == "fp32" and r["status"] == "exported"), None)
    if onnx is None:
        return [], []
    binary, why_not = find_trtexec()
    if binary is None:
        return [], [{"backend": TRTEXEC_BACKEND, "precision": precision, "reason": why_not} for precision in TRTEXEC_PRECISIONS]
    engine_dir.mkdir(parents=True, exist_ok=True)
    results, skipped = [], []
    for precision in TRTEXEC_PRECISIONS:
        engine = engine_dir / f"student_{precision}.engine"
        try:
            for number, batch in enumerate(batches):
                arguments = trtexec_arguments(export_dir / onnx["files"][0], engine, input_name, input_chw, batch, max(batches), precision,
                                              build=number == 0)
                completed = subprocess.run([str(binary), *arguments], capture_output=True, text=True, timeout=timeout_s, check=False)
                (engine_dir / f"trtexec_{precision}_batch{batch}.log").write_text(completed.stdout + completed.stderr)
                if completed.returncode != 0:
                    raise RuntimeError(f"exit {completed.returncode}: {' | '.join((completed.stdout + completed.stderr).strip().splitlines()[-3:])}")
                summary = parse_trtexec_latency(completed.stdout, f"trtexec {precision} batch {batch}")
                results.append(result_from_trtexec(summary, precision, batch, engine.stat().st_size if engine.is_file() else None))
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            skipped.append({"backend": TRTEXEC_BACKEND, "precision": precision, "reason": f"trtexec failed: {exc}"})
    return results, skipped
