"""ROC plots for reports: teacher vs student vs exported models on one log-FAR axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are rendered on servers and CI without a display

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipeline.artifacts import atomic_path  # noqa: E402
from pipeline.evaluation.verification import VerificationResult  # noqa: E402

MIN_PLOTTED_FAR = 1e-4
PLOT_DPI = 120


def plot_roc_curves(curves: dict[str, VerificationResult], path: str | Path, title: str) -> Path:
    """Write one PNG with a TAR-vs-FAR curve per model; the legend carries accuracy so the plot stands alone.

    FAR is log-scaled from 1e-4 to 1 because deployment thresholds live at low FAR; FAR values of 0 are
    clipped to the left edge so those points stay visible instead of vanishing from a log axis.
    """
    if not curves:
        raise ValueError("plot_roc_curves needs at least one curve")
    figure = Figure(figsize=(7.0, 5.5))
    axes = figure.add_subplot()
    for name, result in curves.items():
        far = np.clip(np.asarray(result.roc_fpr, dtype=np.float64), MIN_PLOTTED_FAR, 1.0)
        tar = np.asarray(result.roc_tpr, dtype=np.float64)
        label = (
            f"{name}: acc {result.accuracy * 100:.2f}% ± {result.accuracy_std * 100:.2f}, "
            f"AUC {result.auc:.4f}"
        )
        axes.plot(far, tar, linewidth=1.6, label=label)
    chance = np.geomspace(MIN_PLOTTED_FAR, 1.0, 100)
    axes.plot(chance, chance, linestyle="--", color="0.6", linewidth=1.0, label="chance")
    axes.set_xscale("log")
    axes.set_xlim(MIN_PLOTTED_FAR, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("False accept rate (FAR)")
    axes.set_ylabel("True accept rate (TAR)")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.4)
    axes.grid(True, which="minor", alpha=0.15)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    final_path = Path(path)
    with atomic_path(final_path) as temp:
        figure.savefig(temp, dpi=PLOT_DPI, format="png")
    return final_path
