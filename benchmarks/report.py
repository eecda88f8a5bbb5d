"""The run report a person reads: summary, accuracy, ROC, parity, latency, stage timings, config and versions."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import yaml

from benchmarks.plots import plot_latency_bars
from benchmarks.report_document import Document
from pipeline.artifacts import write_text_atomic
from pipeline.evaluation.roc_plot import plot_roc_curves
from pipeline.evaluation.verification import VerificationResult

MODEL_LABELS = {"teacher": "teacher (ViT)", "student_nokd": "student, no distillation", "student": "student, distilled"}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _result(payload: dict) -> VerificationResult:
    fields = VerificationResult.__dataclass_fields__
    values = {k: v for k, v in payload.items() if k in fields}
    if "notes" in values:
        values["notes"] = tuple(values["notes"])
    return VerificationResult(**values)


def summary_rows(metrics: dict, parity: dict, latency: dict) -> list[list[str]]:
    """One row per model and per backend: accuracy on the first verification set, parity, batch-1 p50 at 1 thread."""
    set_name = parity.get("verification_set") or next(iter(metrics))
    per_model = metrics[set_name]
    p50 = {(r["backend"], r["precision"]): r["p50_ms"] for r in latency.get("results", []) if r["batch"] == 1 and r["threads"] == 1}
    rows = [[MODEL_LABELS[label], _pct(per_model[label]["accuracy"]), "—", "—"] for label in MODEL_LABELS if label in per_model]
    if "student" in per_model:
        rows[-1][0] += " [pytorch/fp32]"
        rows[-1][2] = "reference"
        rows[-1][3] = f"{p50[('pytorch', 'fp32')]:.2f}" if ("pytorch", "fp32") in p50 else "—"
    for r in parity.get("results", []):
        latency_ms = p50.get((r["backend"], r["precision"]))
        rows.append([f"student [{r['backend']}/{r['precision']}]", _pct(r.get("accuracy_backend")),
                     r["status"] + (f": {r['reason']}" if r["status"] != "pass" and r["reason"] else ""),
                     f"{latency_ms:.2f}" if latency_ms is not None else "—"])
    return rows


def build_report(run_dir: Path, out_dir: Path, config_yaml: str) -> Document:
    """Collect every stage's results from `run_dir` and write report.md, report.html and PNGs into `out_dir`."""
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    parity = json.loads((run_dir / "parity" / "parity.json").read_text())
    latency = json.loads((run_dir / "benchmark" / "latency.json").read_text())
    manifests = {path.parent.name: json.loads(path.read_text()) for path in sorted(run_dir.glob("*/manifest.json"))}

    doc = Document(f"Distill-and-export report: {run_dir.name}")
    data_summary = manifests.get("data", {}).get("summary", {})
    doc.paragraph(
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Data source: {data_summary.get('source', '?')}"
        + (" (procedurally generated synthetic faces: figures describe the pipeline on synthetic identities, not accuracy on real faces)."
           if data_summary.get("source") == "synthetic" else ".")
    )
    doc.heading("Summary")
    doc.table(["model [backend]", f"verification accuracy % ({parity.get('verification_set') or next(iter(metrics))})", "parity", "p50 ms (batch 1, 1 thread)"],
              summary_rows(metrics, parity, latency))

    doc.heading("Verification accuracy")
    for set_name, per_model in metrics.items():
        rows = []
        for label, m in per_model.items():
            tars = m.get("tar_at_far", {})
            rows.append([MODEL_LABELS.get(label, label), f"{_pct(m['accuracy'])} ± {_pct(m['accuracy_std'])}",
                         _pct(tars.get("1e-3")), _pct(tars.get("1e-4")), f"{m['auc']:.4f}", str(m["num_pairs"])])
        doc.paragraph(f"Set `{set_name}`: 10-fold accuracy with the best threshold chosen on the other folds (LFW protocol).")
        doc.table(["model", "accuracy %", "TAR@FAR=1e-3 %", "TAR@FAR=1e-4 %", "AUC", "pairs"], rows)
        roc_path = plot_roc_curves({MODEL_LABELS.get(k, k): _result(v) for k, v in per_model.items()},
                                   out_dir / f"roc_{set_name}.png", f"ROC on {set_name}")
        doc.image(roc_path, f"ROC curves on {set_name}")

    doc.heading("Parity against PyTorch")
    doc.paragraph("Numeric: per-image cosine of embeddings vs the PyTorch student; accuracy: verification accuracy from the "
                  "backend's own embeddings vs PyTorch's. Gates per precision are in the configuration below.")
    doc.table(["backend", "precision", "status", "cos min", "cos mean", "max abs diff", "accuracy delta (points)", "gate", "reason"],
              [[r["backend"], r["precision"], r["status"],
                *(f"{r[k]:.6f}" if r.get(k) is not None else "—" for k in ("cosine_min", "cosine_mean")),
                f"{r['max_abs_diff']:.2e}" if r.get("max_abs_diff") is not None else "—",
                f"{r['accuracy_delta_points']:+.2f}" if r.get("accuracy_delta_points") is not None else "—",
                f"cos ≥ {r['gate']['min_cosine']}, |Δ| ≤ {r['gate']['max_accuracy_delta_points']}" if r.get("gate") else "—",
                r.get("reason", "")] for r in parity["results"]])

    doc.heading("Latency")
    doc.paragraph(f"Model call on a preprocessed batch, after warm-up; {latency.get('cpu_count')} CPU cores seen. "
                  "Absolute times move from machine to machine: compare rows within one report.")
    rows = latency["results"]
    doc.table(["backend", "precision", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "images/s"],
              [[r["backend"], r["precision"], str(r["threads"]), str(r["batch"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                f"{r['p99_ms']:.2f}", f"{r['mean_ms']:.2f} ± {r['std_ms']:.2f}", f"{r['images_per_s']:.1f}"] for r in rows])
    doc.image(plot_latency_bars(rows, out_dir / "latency.png", "Student latency per backend"), "Batch-1 latency per backend")

    doc.heading("Stages")
    doc.table(["stage", "wall time (s)", "started", "summary"],
              [[name, f"{m.get('wall_time_s', 0):.1f}", m.get("started_at", ""), json.dumps(m.get("summary", {}), sort_keys=True)[:300]]
               for name, m in manifests.items()])
    doc.heading("Configuration")
    doc.code(config_yaml)
    doc.heading("Versions")
    versions = next(iter(manifests.values()), {}).get("versions", {})
    doc.table(["component", "version"], [[k, str(v)] for k, v in sorted(versions.items())])

    write_text_atomic(out_dir / "report.md", doc.to_markdown())
    write_text_atomic(out_dir / "report.html", doc.to_html())
    return doc


def config_as_yaml(config_dump: dict) -> str:
    return yaml.safe_dump(config_dump, sort_keys=False)
