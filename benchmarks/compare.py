"""Compare two latency result files: rows matched by backend, precision, threads and batch; ratios B / A.

    python -m benchmarks.compare runs/default/benchmark/latency.json runs/default/devices/android_XYZ.json

A ratio above 1 means B took longer. Rows present in only one file are listed, not dropped silently.
`--backend-a ncnn --backend-b ncnn-benchncnn` pairs one backend of A with another of B by precision, threads
and batch: the desktop's ncnn binding against a phone's benchncnn on the same model file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.latency import load_latency_document
from pipeline.errors import PipelineError

METRICS = ("p50_ms", "p90_ms", "mean_ms", "min_ms")
DEFAULT_MATCH = ("backend", "precision", "threads", "batch")


@dataclass
class Comparison:
    key: tuple
    a: dict
    b: dict

    def ratio(self, metric: str) -> float | None:
        first, second = self.a.get(metric), self.b.get(metric)
        return second / first if first and second is not None else None


def compare_results(a: dict, b: dict, match: tuple[str, ...] = DEFAULT_MATCH) -> tuple[list[Comparison], list[tuple], list[tuple]]:
    """(matched rows, keys only in A, keys only in B); a key that repeats in one file keeps its first row."""
    def index(document: dict) -> dict[tuple, dict]:
        rows: dict[tuple, dict] = {}
        for row in document["results"]:
            rows.setdefault(tuple(row[name] for name in match), row)
        return rows

    rows_a, rows_b = index(a), index(b)
    matched = [Comparison(key, rows_a[key], rows_b[key]) for key in rows_a if key in rows_b]
    return matched, [k for k in rows_a if k not in rows_b], [k for k in rows_b if k not in rows_a]


def _device_label(document: dict) -> str:
    device = document.get("device", {})
    emulated = ", EMULATED: its times are not latency" if device.get("emulated") else ""
    return f"{device.get('name') or device.get('cpu', '?')} [{device.get('kind', '?')}, {device.get('abi', '?')}{emulated}]"


def format_comparison(a: dict, b: dict, match: tuple[str, ...] = DEFAULT_MATCH) -> str:
    matched, only_a, only_b = compare_results(a, b, match)
    lines = [f"A: {_device_label(a)}", f"B: {_device_label(b)}", ""]
    header = [*match, "A ms", "B ms", *(f"B/A {m}" for m in METRICS)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for item in matched:
        values = [str(v) for v in item.key]
        primary = "p50_ms" if item.a.get("p50_ms") and item.b.get("p50_ms") else "mean_ms"
        values += [f"{item.a[primary]:.2f}" + ("" if primary == "p50_ms" else " (mean)"), f"{item.b[primary]:.2f}"]
        values += ["—" if (r := item.ratio(m)) is None else f"{r:.2f}x" for m in METRICS]
        lines.append("| " + " | ".join(values) + " |")
    if not matched:
        lines.append(f"(no rows match on {', '.join(match)})")
    for label, keys in (("only in A", only_a), ("only in B", only_b)):
        if keys:
            lines.append(f"{label}: " + "; ".join("/".join(str(v) for v in key) for key in keys))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--match", default=",".join(DEFAULT_MATCH), help="fields that pair rows (comma-separated)")
    parser.add_argument("--backend-a", help="only this backend's rows of A (then rows pair without the backend name)")
    parser.add_argument("--backend-b", help="only this backend's rows of B")
    args = parser.parse_args(argv)
    match = tuple(name for name in args.match.split(",") if name)
    if args.backend_a or args.backend_b:
        match = tuple(name for name in match if name != "backend")
    unknown = [name for name in match if name not in DEFAULT_MATCH]
    if unknown:
        print(f"error: --match takes {', '.join(DEFAULT_MATCH)}; got {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        a, b = load_latency_document(args.a), load_latency_document(args.b)
        for document, backend in ((a, args.backend_a), (b, args.backend_b)):
            if backend:
                document["results"] = [row for row in document["results"] if row["backend"] == backend]
        print(format_comparison(a, b, match))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
