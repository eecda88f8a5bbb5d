"""Latency of every runnable backend x precision, as deployment tools measure it: warm-up, then percentiles.

Timed: the model call on an already preprocessed batch (what the backend controls). Each (backend,
precision, threads, batch) gets a fresh runner, so its peak memory covers loading the model and running it
(benchmarks/memory.py says what that figure counts). A benchmark prints and records figures; it asserts
nothing about speed.

Result file, schema_version 1 (every latency file: this machine's, a phone's via adb, a Jetson's)::

    {
      "schema_version": 1, "kind": "latency", "created_at": ISO-8601 UTC,
      "exports_digest": pipeline.run_layout.exports_digest of the run's export folder the timed models came from,
      "device":   {"kind": "host"|"android"|..., "cpu", "cpu_count", "cpu_features", "abi", "os", ...},
      "versions": {package: version} of the runtimes that produced the times,
      "model":    {"name", "parameters", "flops", "macs", "input_shape", "counter", ...} or null,
      "settings": {"threads", "warmup_runs", "timed_runs", "min_timed_seconds", "max_timed_seconds", "throughput_batch", ...},
      "results":  [{"backend", "precision", "threads", "batch", "runs", "warmup_runs",
                    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "images_per_s",
                    "peak_rss_mb", "rss_before_mb", "model_bytes", "tool", "settings"}],
      "skipped":  [{"backend", "precision", "reason"}]
    }

Times are milliseconds per call of one batch; peak_rss_mb - rss_before_mb is the row's resident-memory rise.
"tool" says who timed the row: "python" (this module, through the project's runners), "benchncnn" (ncnn's
tool: min/max/avg only, so p50/p90/p99/std are null) or "trtexec" (TensorRT's tool: p50 is its median, std
null); "settings" holds the tool's own settings. images_per_s is batch / p50 (or / mean where there is none).

Versioning: a field added as optional keeps schema_version 1, and readers take its absence as "unknown" (files
written before "exports_digest" existed lack it: the report lists such device files as stale, export unknown).
Removing a field or changing what one means bumps SCHEMA_VERSION, and load_latency_document refuses other versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.memory import peak_memory
from deploy.runners.base import Runner
from pipeline.artifacts import write_json_atomic
from pipeline.config import BenchmarkConfig
from pipeline.errors import DataError
from pipeline.preprocess import PreprocessSpec, preprocess
from pipeline.run_layout import EXPORTS_DIGEST, EXPORTS_FILE, MODEL_MANIFEST, ExportRecord, exports_digest, read_export_records

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RESULT_KIND = "latency"
MAX_RUNS_FACTOR = 20  # min_timed_seconds never stretches a row past this many times its timed_runs
MIN_RUNS = 5  # max_timed_seconds never cuts a row below this many timed runs


@dataclass
class LatencyResult:
    backend: str
    precision: str
    threads: int
    batch: int
    runs: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float
    std_ms: float | None
    min_ms: float
    max_ms: float
    images_per_s: float
    warmup_runs: int = 0
    peak_rss_mb: float | None = None
    rss_before_mb: float | None = None
    model_bytes: int | None = None
    tool: str = "python"
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchmarkTarget:
    """One backend x precision to time: a factory of fresh runners by thread count, and its model's size."""

    backend: str
    precision: str
    make_runner: Callable[[int], Runner]
    model_bytes: int | None = None


def time_batches(runner: Runner, batch: np.ndarray, warmup_runs: int, timed_runs: int, min_seconds: float = 0.0,
                 max_seconds: float | None = None) -> np.ndarray:
    """Milliseconds per call of `runner.infer(batch)` after `warmup_runs` untimed calls.

    At least `timed_runs` calls, and more until `min_seconds` have passed (at most MAX_RUNS_FACTOR x timed_runs),
    so fast models get enough calls for a stable p99. `max_seconds` stops a row early (after MIN_RUNS calls at
    least): a backend starved by other processes must not stall the whole matrix; its row records fewer runs.
    """
    for _ in range(warmup_runs):
        runner.infer(batch)
    max_runs = timed_runs * MAX_RUNS_FACTOR if min_seconds > 0 else timed_runs
    floor = min(MIN_RUNS, timed_runs)
    timings: list[float] = []
    started = time.perf_counter()

    def keep_timing() -> bool:
        elapsed = time.perf_counter() - started
        if len(timings) < floor:
            return True
        if max_seconds is not None and elapsed >= max_seconds:
            return False
        return len(timings) < timed_runs or (elapsed < min_seconds and len(timings) < max_runs)

    while keep_timing():
        call_started = time.perf_counter()
        runner.infer(batch)
        timings.append((time.perf_counter() - call_started) * 1000)
    return np.asarray(timings)


def summarise_timings(timings_ms: np.ndarray, backend: str, precision: str, threads: int, batch: int, warmup_runs: int) -> LatencyResult:
    p50, p90, p99 = np.percentile(timings_ms, [50, 90, 99])
    return LatencyResult(
        backend, precision, threads, batch, len(timings_ms),
        round(float(p50), 4), round(float(p90), 4), round(float(p99), 4),
        round(float(timings_ms.mean()), 4), round(float(timings_ms.std()), 4),
        round(float(timings_ms.min()), 4), round(float(timings_ms.max()), 4),
        round(batch * 1000 / float(p50), 2), warmup_runs,
    )


def measure_latency(runner: Runner, images_rgb: np.ndarray, batch: int, warmup_runs: int, timed_runs: int,
                    backend: str | None = None, min_seconds: float = 0.0, max_seconds: float | None = None) -> LatencyResult:
    """Percentiles of one runner at one batch size, on real faces (first `batch` of `images_rgb`, repeated if short).

    `backend` names the row (the export format, e.g. "onnx"); by default the runner's own backend name.
    """
    inputs = preprocess(np.asarray(images_rgb[:batch]), runner.spec)
    if len(inputs) < batch:
        inputs = np.concatenate([inputs] * (batch // len(inputs) + 1))[:batch]
    timings = time_batches(runner, inputs, warmup_runs, timed_runs, min_seconds, max_seconds)
    return summarise_timings(timings, backend or runner.backend, runner.precision, runner.threads, batch, warmup_runs)


def usable_thread_counts(requested: list[int], cores: int) -> tuple[list[int], list[int]]:
    """(thread counts this machine can run, those it cannot): more threads than cores measures contention."""
    usable = sorted({t for t in requested if t <= cores})
    return usable or [1], sorted({t for t in requested if t > cores})


def benchmark_target(target: BenchmarkTarget, images_rgb: np.ndarray, thread_counts: list[int], settings: BenchmarkConfig) -> list[LatencyResult]:
    """Batch 1 (the latency a user feels) and the throughput batch, at each thread count, each on a fresh runner."""
    plans = ((1, settings.warmup_runs, settings.timed_runs, settings.min_timed_seconds),
             (settings.throughput_batch, 1, settings.throughput_runs, 0.0))
    results = []
    for threads in thread_counts:
        for batch, warmup_runs, timed_runs, min_seconds in plans:
            with peak_memory() as memory, target.make_runner(threads) as runner:  # the runner is made inside: its load counts
                result = measure_latency(runner, images_rgb, batch, warmup_runs, timed_runs, target.backend, min_seconds,
                                         settings.max_timed_seconds)
            result.precision = target.precision
            result.peak_rss_mb, result.rss_before_mb = memory.peak_rss_mb, memory.rss_before_mb
            result.model_bytes = target.model_bytes
            results.append(result)
            log.info("latency %s/%s threads=%d batch=%d: p50 %.2f ms, p90 %.2f ms over %d runs (%.0f images/s, peak RSS +%s MB)",
                     target.backend, target.precision, threads, batch, result.p50_ms, result.p90_ms, result.runs,
                     result.images_per_s, memory.rise_mb)
    return results


def targets_from_exports(export_dir: Path, export_records: list[ExportRecord], spec: PreprocessSpec) -> tuple[list[BenchmarkTarget], list[dict]]:
    """A target per exported format x precision that can run here; the others as {backend, precision, reason}."""
    from deploy.formats import get_format

    targets, skipped = [], []
    for record in export_records:
        export_format = get_format(record["format"])
        runnable, why_not = export_format.runnable_here()
        if record["status"] != "exported":
            skipped.append({"backend": record["format"], "precision": record["precision"],
                            "reason": f"export {record['status']}: {record.get('error') or record.get('reason') or 'no files'}"})
        elif not runnable:
            skipped.append({"backend": record["format"], "precision": record["precision"], "reason": why_not})
        else:
            targets.append(BenchmarkTarget(record["format"], record["precision"],
                                           lambda threads, f=export_format, r=record: f.make_runner(export_dir, r, spec, threads),
                                           record.get("bytes")))
    return targets, skipped


def latency_document(results: list[LatencyResult | dict], skipped: list[dict], device: dict, versions: dict,
                     model: dict | None, settings: dict, measured_exports: str | None = None) -> dict:
    """The result file's content (schema in the module docstring); `measured_exports`: the exports_digest of the
    run's export folder that was timed (None: not known, e.g. a benchmark of models from outside a run)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": RESULT_KIND,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        EXPORTS_DIGEST: measured_exports,
        "device": device,
        "versions": versions,
        "model": model,
        "settings": settings,
        "results": [r.to_dict() if isinstance(r, LatencyResult) else r for r in results],
        "skipped": skipped,
    }


_REQUIRED_RESULT_FIELDS = ("backend", "precision", "threads", "batch", "mean_ms", "min_ms", "images_per_s")


def load_latency_document(path: str | Path) -> dict:
    """Read and check a result file; a wrong file fails with one line naming it and the problem."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(path, f"cannot read latency results ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise DataError(path, f"not JSON ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("kind") != RESULT_KIND:
        raise DataError(path, f"not a latency result file (expected \"kind\": \"{RESULT_KIND}\")")
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise DataError(path, f"latency schema_version {payload.get('schema_version')!r}; this code reads {SCHEMA_VERSION}")
    for number, row in enumerate(payload.get("results", [])):
        missing = [name for name in _REQUIRED_RESULT_FIELDS if name not in row]
        if missing:
            raise DataError(path, f"results[{number}] lacks {', '.join(missing)}")
    return payload


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def format_latency_table(results: list[LatencyResult | dict]) -> str:
    """Markdown table of latency results, one row per backend x precision x threads x batch."""
    rows = [r.to_dict() if isinstance(r, LatencyResult) else r for r in results]
    lines = ["| backend | precision | threads | batch | p50 ms | p90 ms | p99 ms | mean ms | images/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['threads']} | {r['batch']} | {_ms(r['p50_ms'])} | "
                     f"{_ms(r['p90_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['mean_ms'])} | {r['images_per_s']:.1f} |")
    return "\n".join(lines)


def run_latency_matrix(export_dir: Path, export_records: list[ExportRecord], spec: PreprocessSpec, settings: BenchmarkConfig,
                       images_rgb: np.ndarray, engine_dir: Path, extra_targets: tuple[BenchmarkTarget, ...] = (),
                       model: dict | None = None, measured_exports: str | None = None) -> dict:
    """Every runnable export (plus `extra_targets`, e.g. PyTorch), and ncnn's benchncnn and TensorRT's trtexec where
    present (trtexec builds its engines into `engine_dir`): the result document. `measured_exports`: the digest of
    the run's export folder these came from (default: `export_dir`'s own), which a device's copy may rewrite."""
    from benchmarks.benchncnn import benchncnn_here, face_bench_here
    from benchmarks.host import describe_host, runtime_versions
    from benchmarks.trtexec import trtexec_here

    device = describe_host()
    thread_counts, too_many = usable_thread_counts(settings.threads, device["cpu_count"])
    if too_many:
        log.info("latency: %s threads left out: this machine lets the process use %d cores", too_many, device["cpu_count"])
    targets, skipped = targets_from_exports(export_dir, export_records, spec)
    results = []
    for target in [*extra_targets, *targets]:
        try:
            results += benchmark_target(target, images_rgb, thread_counts, settings)
        except Exception as exc:  # noqa: BLE001 - one backend that cannot load or run must not hide the others' figures
            log.error("latency %s/%s failed: %s", target.backend, target.precision, exc)
            skipped.append({"backend": target.backend, "precision": target.precision, "reason": f"failed: {exc.__class__.__name__}: {exc}"})
    native_results, native_skipped = benchncnn_here(export_dir, export_records, (spec.width, spec.height, 3), thread_counts,
                                                    settings.benchncnn_loops, settings.benchncnn)
    if settings.native_tools:
        face_results, face_skipped = face_bench_here(export_dir, export_records, (spec.width, spec.height, 3), thread_counts,
                                                     settings.benchncnn_loops)
        native_results, native_skipped = native_results + face_results, native_skipped + face_skipped
    engine_results, engine_skipped = trtexec_here(export_dir, export_records, spec.input_name, (3, spec.height, spec.width),
                                                  [1, settings.throughput_batch], engine_dir)
    return latency_document([*results, *native_results, *engine_results], [*skipped, *native_skipped, *engine_skipped], device,
                            runtime_versions(), model, {**settings.model_dump(mode="json"), "threads": thread_counts, "threads_left_out": too_many},
                            measured_exports or exports_digest(export_dir))


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.latency EXPORT_DIR --out FILE`: time the exports in a folder (device images use this)."""
    defaults = BenchmarkConfig()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=main.__doc__)
    parser.add_argument("export_dir", type=Path, help=f"a run's export/ folder ({EXPORTS_FILE}, {MODEL_MANIFEST}, model files)")
    parser.add_argument("--out", type=Path, required=True, help="result JSON to write")
    parser.add_argument("--run-exports", type=Path, help="the run's export folder EXPORT_DIR was made from, whose records the "
                        "result names as measured (default: EXPORT_DIR; docker/device-benchmark.sh passes the folder it rebuilt "
                        "TensorRT engines from)")
    parser.add_argument("--threads", type=int, nargs="+", default=defaults.threads)
    parser.add_argument("--warmup-runs", type=int, default=defaults.warmup_runs)
    parser.add_argument("--timed-runs", type=int, default=defaults.timed_runs)
    parser.add_argument("--min-timed-seconds", type=float, default=defaults.min_timed_seconds)
    parser.add_argument("--max-timed-seconds", type=float, default=defaults.max_timed_seconds)
    parser.add_argument("--throughput-batch", type=int, default=defaults.throughput_batch)
    parser.add_argument("--throughput-runs", type=int, default=defaults.throughput_runs)
    parser.add_argument("--benchncnn", default=defaults.benchncnn, help="ncnn's benchncnn (else $BENCHNCNN, then PATH)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    settings = BenchmarkConfig(threads=args.threads, warmup_runs=args.warmup_runs, timed_runs=args.timed_runs,
                               min_timed_seconds=args.min_timed_seconds, max_timed_seconds=args.max_timed_seconds,
                               throughput_batch=args.throughput_batch,
                               throughput_runs=args.throughput_runs, benchncnn=args.benchncnn)
    spec = PreprocessSpec.load(args.export_dir / MODEL_MANIFEST)
    # No faces on a device image: seeded random pixels stand in (these backends' time does not depend on them).
    images = np.random.default_rng(0).integers(0, 256, (settings.throughput_batch, spec.height, spec.width, 3), dtype=np.uint8)
    model = {"name": json.loads((args.export_dir / MODEL_MANIFEST).read_text()).get("model"),
             "input_shape": [1, 3, spec.height, spec.width]}
    document = run_latency_matrix(args.export_dir, read_export_records(args.export_dir), spec,
                                  settings, images, args.out.parent / "engines", model=model,
                                  measured_exports=exports_digest(args.run_exports or args.export_dir))
    write_json_atomic(args.out, document)
    print(format_latency_table(document["results"]))
    for entry in document["skipped"]:
        print(f"skipped {entry['backend']}/{entry['precision']}: {entry['reason']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
