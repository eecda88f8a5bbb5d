"""Report figures (matplotlib, Agg): latency bars with p90 whiskers."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.artifacts import atomic_path  # noqa: E402


def plot_latency_bars(rows: list[dict], path: Path, title: str) -> Path:
    """Batch-1 p50 latency per backend/precision, one bar per thread count, whiskers up to p90."""
    rows = [r for r in rows if r["batch"] == 1]
    labels = sorted({f"{r['backend']}/{r['precision']}" for r in rows}, key=lambda s: (s != "pytorch/fp32", s))
    thread_counts = sorted({r["threads"] for r in rows})
    width = 0.8 / max(1, len(thread_counts))
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    for i, threads in enumerate(thread_counts):
        by_label = {f"{r['backend']}/{r['precision']}": r for r in rows if r["threads"] == threads}
        xs = [j + i * width for j, label in enumerate(labels) if label in by_label]
        p50 = [by_label[label]["p50_ms"] for label in labels if label in by_label]
        p90 = [by_label[label]["p90_ms"] for label in labels if label in by_label]
        axes.bar(xs, p50, width, label=f"{threads} thread{'s' if threads > 1 else ''}",
                 yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p90)]], capsize=3)
        for x, value in zip(xs, p50):
            axes.annotate(f"{value:.1f}", (x, value), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    axes.set_xticks([j + width * (len(thread_counts) - 1) / 2 for j in range(len(labels))], labels)
    axes.set_ylabel("latency, batch 1 (ms): bar p50, whisker p90")
    axes.set_title(title)
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=120, format="png")
    plt.close(figure)
    return path
