"""Latency of a runner as deployment tools measure it: warm-up, then percentiles over timed runs.

Timed: the model call on an already preprocessed batch (what the backend controls). A benchmark prints
and records figures; it asserts nothing about speed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from deploy.preprocess import preprocess
from deploy.runners.base import Runner


@dataclass
class LatencyResult:
    backend: str
    precision: str
    threads: int
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    images_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def time_batches(runner: Runner, batch: np.ndarray, warmup_runs: int, timed_runs: int) -> np.ndarray:
    """Milliseconds per call of `runner.infer(batch)` after `warmup_runs` untimed calls."""
    for _ in range(warmup_runs):
        runner.infer(batch)
    timings = np.empty(timed_runs)
    for i in range(timed_runs):
        started = time.perf_counter()
        runner.infer(batch)
        timings[i] = (time.perf_counter() - started) * 1000
    return timings


def measure_latency(runner: Runner, images_rgb: np.ndarray, batch: int, warmup_runs: int, timed_runs: int, backend: str | None = None) -> LatencyResult:
    """Percentiles of one runner at one batch size, on real faces (first `batch` of `images_rgb`).

    `backend` names the row (the export format, e.g. "onnx"); by default the runner's own backend name.
    """
    inputs = preprocess(np.asarray(images_rgb[:batch]), runner.spec)
    if len(inputs) < batch:
        inputs = np.concatenate([inputs] * (batch // len(inputs) + 1))[:batch]
    timings = time_batches(runner, inputs, warmup_runs, timed_runs)
    p50, p90, p99 = np.percentile(timings, [50, 90, 99])
    return LatencyResult(
        backend or runner.backend, runner.precision, runner.threads, batch, timed_runs,
        round(float(p50), 4), round(float(p90), 4), round(float(p99), 4),
        round(float(timings.mean()), 4), round(float(timings.std()), 4), round(float(timings.min()), 4),
        round(batch * 1000 / float(p50), 2),
    )


def format_latency_table(results: list[LatencyResult | dict]) -> str:
    """Markdown table of latency results, one row per backend x precision x threads x batch."""
    rows = [r.to_dict() if isinstance(r, LatencyResult) else r for r in results]
    lines = ["| backend | precision | threads | batch | p50 ms | p90 ms | p99 ms | images/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['threads']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['images_per_s']:.1f} |")
    return "\n".join(lines)
