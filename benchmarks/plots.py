"""Report figures (matplotlib, Agg): latency bars with p50/p90, and latency against verification accuracy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.artifacts import atomic_path  # noqa: E402


def _label(row: dict) -> str:
    return f"{row['backend']}/{row['precision']}"


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=120, format="png")
    plt.close(figure)
    return path


def plot_latency_bars(rows: list[dict], path: Path, title: str) -> Path:
    """Batch-1 p50 latency per backend/precision, one bar per thread count, whiskers up to p90.

    Rows without percentiles (benchncnn reports min/max/avg only) are left out; the report's table has them.
    """
    rows = [r for r in rows if r["batch"] == 1 and r.get("p50_ms") is not None]
    labels = sorted({_label(r) for r in rows}, key=lambda s: (s != "pytorch/fp32", s))
    thread_counts = sorted({r["threads"] for r in rows})
    width = 0.8 / max(1, len(thread_counts))
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    for i, threads in enumerate(thread_counts):
        by_label = {_label(r): r for r in rows if r["threads"] == threads}
        xs = [j + i * width for j, label in enumerate(labels) if label in by_label]
        p50 = [by_label[label]["p50_ms"] for label in labels if label in by_label]
        p90 = [by_label[label]["p90_ms"] for label in labels if label in by_label]
        axes.bar(xs, p50, width, label=f"{threads} thread{'s' if threads > 1 else ''}",
                 yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p90)]], capsize=3)
        for x, value, top in zip(xs, p50, p90):
            axes.annotate(f"{value:.1f}", (x, top), ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    axes.set_xticks([j + width * (len(thread_counts) - 1) / 2 for j in range(len(labels))], labels)
    axes.set_ylabel("latency, batch 1 (ms): bar p50, whisker p90")
    axes.set_title(title)
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def plot_latency_vs_accuracy(points: list[dict], path: Path, title: str, accuracy_label: str) -> Path:
    """One point per backend/precision: batch-1 p50 latency (x) against verification accuracy (y).

    Each point has its own marker and a legend entry with its values, so backends that coincide (equal
    accuracy, similar latency) stay readable.
    """
    markers = "osD^vPX*<>"
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for number, point in enumerate(points):
        axes.scatter(point["latency_ms"], point["accuracy_pct"], s=70, color=f"C{number % 10}", marker=markers[number % len(markers)],
                     alpha=0.85, zorder=3, label=f"{point['label']}: {point['latency_ms']:.2f} ms, {point['accuracy_pct']:.2f} %")
    axes.set_xlabel("p50 latency, batch 1, 1 thread (ms)")
    axes.set_ylabel(accuracy_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if points:
        accuracies = [p["accuracy_pct"] for p in points]
        spread = max(accuracies) - min(accuracies)
        axes.set_ylim(min(accuracies) - max(spread, 0.5) * 0.6, max(accuracies) + max(spread, 0.5) * 0.6)
        axes.set_xlim(0, max(p["latency_ms"] for p in points) * 1.15)
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    return _save(figure, path)


def plot_pareto(rows: list[dict], path: Path, accuracy_label: str) -> Path:
    """Students of several sizes: ncnn batch-1 p50 latency (x) against verification accuracy (y), one line per
    precision through the students, so the front a latency budget cuts is visible."""
    markers = {"fp32": "o", "fp16": "s", "int8": "D"}
    figure, axes = plt.subplots(figsize=(8, 4.5))
    timed = [r for r in rows if r.get("p50_ms") is not None]
    for number, precision in enumerate(sorted({r["precision"] for r in timed}, key=list(markers).index)):
        line = sorted((r for r in timed if r["precision"] == precision), key=lambda r: r["p50_ms"])
        axes.plot([r["p50_ms"] for r in line], [r["accuracy"] for r in line], marker=markers.get(precision, "o"), color=f"C{number}",
                  label=f"ncnn {precision}", alpha=0.85)
        for r in line if number == 0 else ():  # each student named once, on the first precision's line
            axes.annotate(r["student"], (r["p50_ms"], r["accuracy"]), fontsize=8, xytext=(4, -10), textcoords="offset points")
    return _finish(figure, axes, path, f"ncnn p50 latency, batch 1, {timed[0]['threads'] if timed else 1} thread(s) (ms)",
                   accuracy_label, "Accuracy against latency: students of several sizes, one teacher")


def plot_training_curves(curves: dict[str, list[dict]], path: Path, accuracy_label: str) -> Path:
    """Verification accuracy against training time (s), one line per training: what each further point costs."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for label, points in curves.items():
        axes.plot([p["train_s"] / 60 for p in points], [p["accuracy"] for p in points], marker="o", markersize=3, label=label)
    return _finish(figure, axes, path, "training time (min)", accuracy_label, "Accuracy against training time")


def _finish(figure, axes, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Labels, grid and legend of a line plot, then the PNG."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)
