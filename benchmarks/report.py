"""The run report a person reads: summary, accuracy, ROC, parity, latency (per machine and per device), what
distillation costs, stage timings, config and versions. One Document renders both report.md and report.html.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml

from benchmarks.ablation_tables import CLAIMS_NOTE, claims_table, format_table, stored_ablation, untested_text
from benchmarks.latency import load_latency_document
from benchmarks.plots import plot_latency_bars, plot_latency_vs_accuracy, plot_pareto, plot_training_curves
from benchmarks.report_document import Document
from pipeline.artifacts import write_text_atomic
from pipeline.evaluation.roc_plot import plot_roc_curves
from pipeline.evaluation.verification import VerificationResult
from pipeline.run_layout import (DOCKER_DEPLOY_DEVICE, LATENCY_FILE, REPORT_FILE, MeasuredExport, RunLayout, all_parity_results,
                                 measured_export, read_device_parity, read_export_records, run_exports_digest)

log = logging.getLogger(__name__)
MODEL_LABELS = {"teacher": "teacher", "student_nokd": "student, no distillation", "student": "student, distilled"}
DeviceFileKind = Literal["latency", "parity"]  # runs/<run>/devices/*.json, runs/<run>/devices/parity/*.json
STALE_WHY: dict[MeasuredExport, str] = {"earlier": "measured on an earlier export of this run",
                                        "unknown": "export unknown (written before exports were recorded)"}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _mb(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:.2f}"


def _result(payload: dict) -> VerificationResult:
    fields = VerificationResult.__dataclass_fields__
    values = {k: v for k, v in payload.items() if k in fields}
    for key in ("notes", "fold_thresholds"):
        if key in values:
            values[key] = tuple(values[key])
    return VerificationResult(**values)


def single_thread_p50(latency: dict) -> dict[tuple[str, str], float]:
    """(backend, precision) -> batch-1 p50 at the fewest threads measured (1 wherever the matrix ran it)."""
    rows = [r for r in latency.get("results", []) if r["batch"] == 1 and r.get("p50_ms") is not None]
    fewest = min((r["threads"] for r in rows), default=1)
    return {(r["backend"], r["precision"]): r["p50_ms"] for r in rows if r["threads"] == fewest}


def model_labels(run_dir: Path) -> dict[str, str]:
    """Row labels of the evaluated models, the teacher's with its architecture (`teacher (edgeface_xs)`)."""
    labels = dict(MODEL_LABELS)
    described = run_dir / "teacher" / "teacher.json"
    if described.is_file():
        labels["teacher"] = f"teacher ({json.loads(described.read_text()).get('model', '?')})"
    return labels


def summary_rows(metrics: dict, parity: dict, latency: dict, labels: dict[str, str] | None = None) -> list[list[str]]:
    """One row per model and per backend: accuracy on the first verification set, parity, batch-1 p50 at 1 thread."""
    labels = labels or MODEL_LABELS
    set_name = parity.get("verification_set") or next(iter(metrics))
    per_model = metrics[set_name]
    p50 = single_thread_p50(latency)
    rows = [[labels[label], _pct(per_model[label]["accuracy"]), "—", "—"] for label in MODEL_LABELS if label in per_model]
    if "student" in per_model:
        rows[-1][0] += " [pytorch/fp32]"
        rows[-1][2] = "reference"
        rows[-1][3] = _ms(p50.get(("pytorch", "fp32")))
    subset_pairs = parity_subset_pairs(metrics, parity)
    for r in parity.get("results", []):
        accuracy = _pct(r.get("accuracy_backend"))
        if r.get("accuracy_backend") is not None and subset_pairs:
            # parity.max_images: the backend was scored on a subset, so say so next to PyTorch's score on it
            all_pairs = per_model["student"]["num_pairs"]
            accuracy += f" (on {subset_pairs} of {all_pairs} pairs; PyTorch {_pct(r['accuracy_reference'])})"
        rows.append([f"student [{r['backend']}/{r['precision']}]", accuracy,
                     r["status"] + (f": {r['reason']}" if r["status"] != "pass" and r["reason"] else ""),
                     _ms(p50.get((r["backend"], r["precision"])))])
    return rows


def parity_subset_pairs(metrics: dict, parity: dict) -> int | None:
    """How many pairs the backends were scored on, when `parity.max_images` made that fewer than the whole set."""
    set_name = parity.get("verification_set") or next(iter(metrics))
    all_pairs = metrics[set_name].get("student", {}).get("num_pairs")
    scored = next((r["num_images"] // 2 for r in parity.get("results", []) if r.get("accuracy_reference") is not None), None)
    return scored if scored and all_pairs and scored < all_pairs else None


def latency_accuracy_points(metrics: dict, parity: dict, latency: dict) -> tuple[list[dict], list[str]]:
    """Scatter points (PyTorch reference and each backend with both a latency and an accuracy), and what was left out."""
    set_name = parity.get("verification_set") or next(iter(metrics))
    p50 = single_thread_p50(latency)
    points, left_out = [], []
    student = metrics[set_name].get("student")
    scored = [r for r in parity.get("results", []) if r.get("accuracy_reference") is not None]
    # With parity.max_images the backends were scored on a subset: plot PyTorch on that same subset.
    reference = scored[0]["accuracy_reference"] if scored else (student or {}).get("accuracy")
    if reference is not None and ("pytorch", "fp32") in p50:
        points.append({"label": "pytorch/fp32", "latency_ms": p50[("pytorch", "fp32")], "accuracy_pct": 100 * reference})
    for r in parity.get("results", []):
        key, label = (r["backend"], r["precision"]), f"{r['backend']}/{r['precision']}"
        if r.get("accuracy_backend") is None or key not in p50:
            why = "not timed here" if r["status"] in ("pass", "fail") else r["status"]  # e.g. a dropped int8 is not timed
            left_out.append(f"{label} ({'no accuracy: ' + r['status'] if r.get('accuracy_backend') is None else why})")
        else:
            points.append({"label": label, "latency_ms": p50[key], "accuracy_pct": 100 * r["accuracy_backend"]})
    return points, left_out


def latency_table(doc: Document, rows: list[dict]) -> None:
    doc.table(["backend", "precision", "threads", "batch", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "min / max ms",
               "images/s", "peak RSS rise MB", "model MB", "tool"],
              [[r["backend"], r["precision"], str(r["threads"]), str(r["batch"]), str(r["runs"]), _ms(r["p50_ms"]), _ms(r["p90_ms"]),
                _ms(r["p99_ms"]), f"{r['mean_ms']:.2f}" + ("" if r.get("std_ms") is None else f" ± {r['std_ms']:.2f}"),
                f"{r['min_ms']:.2f} / {r['max_ms']:.2f}", f"{r['images_per_s']:.1f}",
                "—" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb'] - r['rss_before_mb']:.1f}",
                _mb(r.get("model_bytes")), r.get("tool", "python")] for r in rows])


def device_rows(latency: dict) -> list[list[str]]:
    device = latency.get("device", {})
    rows = [[key, ", ".join(value) if isinstance(value, list) else str(value)] for key, value in device.items() if value not in (None, "", [])]
    return rows + [[f"version: {name}", str(version)] for name, version in sorted(latency.get("versions", {}).items())]


def _latency_section(doc: Document, run_dir: Path, out_dir: Path, metrics: dict, parity: dict, latency: dict) -> None:
    doc.heading("Latency")
    device = latency.get("device", {})
    doc.paragraph(f"Model call on a preprocessed batch, after warm-up, each row on a freshly loaded model; {device.get('cpu_count', '?')} "
                  f"usable CPU cores ({device.get('cpu', '?')}). Peak RSS rise: how far the process's resident memory rose above "
                  "where it stood while the model loaded and ran (native runtimes included). Absolute times move from machine "
                  "to machine: compare rows within one report.")
    model = latency.get("model") or {}
    if model.get("flops") is not None:
        doc.table(["student", "parameters", "GFLOPs", "GMACs", "input", "counted by"],
                  [[str(model.get("name")), f"{model['parameters']:,}", f"{model['flops'] / 1e9:.3f}", f"{model['macs'] / 1e9:.3f}",
                    "x".join(str(v) for v in model["input_shape"]), model.get("counter", "")]])
    doc.table(["machine", "value"], device_rows(latency))
    rows = latency["results"]
    latency_table(doc, rows)
    if latency.get("skipped"):
        doc.paragraph("Not timed here:")
        doc.table(["backend", "precision", "reason"], [[s["backend"], s["precision"], f"skipped: {s['reason']}"] for s in latency["skipped"]])
    doc.image(plot_latency_bars(rows, out_dir / "latency.png", "Student latency per backend"), "Batch-1 latency per backend: bar p50, whisker p90")
    set_name = parity.get("verification_set") or next(iter(metrics))
    points, left_out = latency_accuracy_points(metrics, parity, latency)
    subset_pairs = parity_subset_pairs(metrics, parity)
    subset = f", parity subset of {subset_pairs} pairs" if subset_pairs else ""
    if points:
        doc.image(plot_latency_vs_accuracy(points, out_dir / "latency_vs_accuracy.png", "Latency against accuracy",
                                           f"verification accuracy on {set_name} (%)"),
                  f"Each backend/precision: batch-1 p50 at 1 thread against its own verification accuracy{subset}"
                  + (f"; not plotted: {', '.join(left_out)}" if left_out else ""))
    _devices_section(doc, run_dir)


def _native_targets_section(doc: Document, run_dir: Path) -> None:
    """Where the native ncnn rows ran: the CPU features ncnn detected there and the kernels its build compiled in.

    A feature counts only where both say yes: that is the proof of which kernels (fp16 arithmetic, dot-product) ran.
    """
    path = RunLayout(run_dir).native_parity_file
    targets = json.loads(path.read_text()).get("targets", []) if path.is_file() else []
    if not targets:
        return
    doc.paragraph("Native rows: the exported ncnn model through the project's C++ tool (deploy/native/face_embed), "
                  "built against libncnn from ncnn's sources. Emulated rows run ncnn's ARM kernels under qemu-aarch64: "
                  "their numbers are the ARM kernels' real numbers; emulated time is not latency and is not reported.")
    rows = []
    for target in targets:
        features = target.get("cpu_features", {})
        detected = [k for k, v in features.items() if k not in {"isa", "compiled", "cpu_count", "big_cpu_count"} and v == 1]
        build = target.get("build", {})
        rows.append([target["label"], features.get("isa", "?"), " ".join(detected) or "none",
                     (features.get("compiled") or "").strip() or "baseline only",
                     f"{build.get('ncnn_build_seconds', 0):.0f} + {build.get('tools_build_seconds', 0):.0f}"])
    doc.table(["where", "ISA", "CPU features ncnn detected", "kernel variants compiled in", "build s (libncnn + tools)"], rows)


def _devices_section(doc: Document, run_dir: Path) -> None:
    """Latency files from other devices (phones over adb, boards), so their rows sit beside this machine's; device
    files that measured another export than the run's current one are listed as stale, never shown as its figures."""
    current = run_exports_digest(run_dir)
    documents = [(path, load_latency_document(path)) for path in RunLayout(run_dir).device_latency_files()]
    shown = [(path, other) for path, other in documents if measured_export(other, path, current) == "current"]
    real = [(path, other) for path, other in shown if not other.get("device", {}).get("emulated")]
    emulated = [(path, other) for path, other in shown if other.get("device", {}).get("emulated")]
    if real:
        doc.heading("Latency on other devices")
        _device_tables(doc, real)
    if emulated:
        doc.heading("Emulated devices (not latency)")
        doc.paragraph("These ran under an emulator (Android's, or qemu-user on this machine): they show that the flow and the ARM "
                      "kernels work, and their times say nothing about a phone's.")
        _device_tables(doc, emulated)
    stale = stale_device_lines(run_dir, documents, current)
    if stale:
        doc.heading("Device results of earlier exports (not shown)")
        for line in stale:
            doc.paragraph(line)


def stale_device_lines(run_dir: Path, latency_documents: list[tuple[Path, dict]], current: str | None) -> list[str]:
    """One line per device latency or parity file that did not measure the run's current exports (`current`, their
    exports_digest): left out of every table, yet said, with the command that measures the current export."""
    parity_documents = [(path, read_device_parity(path)) for path in RunLayout(run_dir).device_parity_files()]
    lines = []
    kinds: tuple[tuple[DeviceFileKind, list[tuple[Path, dict]]], ...] = (("latency", latency_documents), ("parity", parity_documents))
    for kind, documents in kinds:
        for path, document in documents:
            measured = measured_export(document, path, current)
            if measured != "current":
                lines.append(f"stale: {STALE_WHY[measured]} (`{path.relative_to(run_dir)}`, measured {measured_at(path, document)}); "
                             f"rerun {rerun_command(run_dir, path, document, kind)}")
    return lines


def measured_at(path: Path, document: dict) -> str:
    """The file's created_at; device parity files written before they recorded one: the file's modification time."""
    if document.get("created_at"):
        return str(document["created_at"])
    written = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    return f"{written} (file time)"


def rerun_command(run_dir: Path, path: Path, document: dict, kind: DeviceFileKind) -> str:
    """The command that writes this device file again, for the run's current exports (Markdown, the command quoted)."""
    device, run = document.get("device", {}), f"RUN_NAME={run_dir.name}"
    if device.get("kind") == "android":
        target = "parity-android" if kind == "parity" else "bench-android"
        return f"`make {target} {run} {phone_arguments(path, device)}`"
    if kind == "parity" and path.stem == DOCKER_DEPLOY_DEVICE:
        return f'`make docker-check {run} DOCKER_CHECK_ARGS="--targets deploy"`'
    run_path = f"runs/{run_dir.name}"
    if kind == "parity":
        formats = sorted({row["backend"].split(" (")[0] for row in document["results"]}) or ["tensorrt"]
        return (f"`python -m app.device_parity --run-dir {run_path} here --formats {' '.join(formats)} --name {path.stem}` "
                "on that device (the Jetson image: docker/device-parity.sh)")
    return f"`docker/device-benchmark.sh {run_path}/export {run_path}/{path.relative_to(run_dir)}` on that device"


def phone_arguments(path: Path, device: dict) -> str:
    """Make arguments that pick the same phone: its serial (the file is android_<serial>), or the emulated phone's CPU."""
    qemu_prefix = "qemu-aarch64 -cpu "
    if str(device.get("cpu", "")).startswith(qemu_prefix):
        return f"FAKE_PHONE={device['cpu'][len(qemu_prefix):]}"
    return f'ANDROID_ARGS="--serial {path.stem.removeprefix("android_")}"'


def _device_tables(doc: Document, documents: list[tuple[Path, dict]]) -> None:
    for path, other in documents:
        device = other.get("device", {})
        doc.paragraph(f"`{path.name}`: {device.get('name') or device.get('cpu')} ({device.get('cpu', '?')}, {device.get('abi', '?')}, "
                      f"{device.get('kind', '?')}), measured {other.get('created_at', '?')}; settings {json.dumps(other.get('settings', {}))}. "
                      f"Compare with `python -m benchmarks.compare <this run's {LATENCY_FILE}> {path}`.")
        latency_table(doc, other["results"])


def _cost_section(doc: Document, run_dir: Path, manifests: dict) -> None:
    """What distillation and each export cost: the teacher's share of a training step, stage wall times, export times."""
    doc.heading("What distillation and export cost")
    speed_path = run_dir / "benchmark" / "distill_speed.json"
    if speed_path.is_file():
        speed = json.loads(speed_path.read_text())
        now = speed.get("settings_now", {})
        doc.paragraph(f"Training images/s on {speed['threads']} threads at batch {speed['batch_size']}, median of {speed['steps_timed']} "
                      f"steps of the one trainer (benchmarks/distill_speed.py); distillation terms: {', '.join(speed['losses'])}; "
                      f"CPU features: {', '.join(speed.get('cpu_features', [])) or 'none of note'}. The student trains "
                      f"{speed.get('student_speedup_vs_before', '?')}x as fast as with the trainer's old settings (each row of the ladder below "
                      f"adds one change and runs in a fresh process). An online "
                      f"distillation step takes {speed['online_step_time_vs_student_alone']}x the student-alone step's time.")
        ladder_labels = {"before": "student alone, before: NCHW, ATen BatchNorm and PReLU, fp32, glibc's default allocation",
                         "channels_last": "+ channels-last tensors", "fused_kernels": "+ compiled BatchNorm+PReLU kernels",
                         "bf16_autocast": "+ bf16 autocast" + ("" if now.get("bf16_autocast") else " (no native bf16 here: fp32)"),
                         "keep_freed_memory": "+ freed memory kept in the process = now (the baseline stage)"}
        ladder = speed.get("student_ladder") or [{"row": "before", "images_per_s": speed.get("student_alone_before_images_per_s")},
                                                 {"row": "keep_freed_memory", "images_per_s": speed["student_alone_images_per_s"]}]
        rows = [[ladder_labels.get(step["row"], step["row"]), step["images_per_s"]] for step in ladder]
        rows += [
            ["distill, cached teacher embeddings (no augmentation)", speed["distill_cached_teacher_images_per_s"]],
            ["distill, teacher forward inside the step, fp32", speed.get("distill_online_teacher_fp32_images_per_s")],
            [f"distill, teacher forward inside the step, {'bf16' if now.get('teacher_bf16') else 'fp32'}", speed["distill_online_teacher_images_per_s"]],
            ["distill, online teacher and augmentation (the distill stage with `optim.augment`)", speed.get("distill_online_teacher_augmented_images_per_s")],
            ["teacher forward alone (inference; the cache's cost per image)", speed["teacher_forward_images_per_s"]],
            ["teacher's own training, before: fp32, default allocation", speed.get("teacher_training_before_images_per_s")],
            ["teacher's own training, now: the teacher profile's settings", speed.get("teacher_training_images_per_s")],
        ]
        doc.table(["training step", "images/s"], [[label, f"{value:.1f}"] for label, value in rows if value is not None])
    stage_rows = [[name, f"{m.get('wall_time_s', 0):.1f}"] for name, m in manifests.items() if name in {"teacher", "baseline", "distill"}]
    if stage_rows:
        doc.paragraph("Stage wall times of this run (a cached stage keeps the time of the run that computed it):")
        doc.table(["stage", "wall time (s)"], stage_rows)
    exports_path = RunLayout(run_dir).exports_file
    if exports_path.is_file():
        doc.table(["export", "status", "time (s)", "size MB"],
                  [[f"{r['format']}/{r['precision']}", r["status"], f"{r.get('export_time_s', 0):.1f}", _mb(r.get("bytes"))]
                   for r in read_export_records(exports_path.parent)])


def distillation_verdict(per_model: dict) -> str | None:
    """One honest sentence on whether distillation helped on one set: the gain against the larger fold spread."""
    if not {"student", "student_nokd"} <= set(per_model):
        return None
    distilled, alone = per_model["student"], per_model["student_nokd"]
    gain = 100 * (distilled["accuracy"] - alone["accuracy"])
    spread = 100 * max(distilled["accuracy_std"], alone["accuracy_std"])
    if gain > spread:
        return f"Distillation helped: {gain:+.2f} points over the student trained alone, more than one fold standard deviation ({spread:.2f})."
    if gain > 0:
        return (f"No clear gain: {gain:+.2f} points over the student trained alone, within one fold standard deviation ({spread:.2f}); "
                "this run cannot tell the two apart.")
    return f"Distillation did not help in this run: {gain:+.2f} points against the student trained alone (fold standard deviation {spread:.2f})."


def teacher_origin(teacher_summary: dict) -> str:
    """Where the run's teacher came from, in one sentence: a loaded checkpoint (the shipped one is pinned) or this run."""
    if teacher_summary.get("source") == "checkpoint":
        pinned = f" (sha256 {teacher_summary['checkpoint_sha256'][:12]}..., pinned by the profile)" if teacher_summary.get("checkpoint_sha256") else ""
        return f"The teacher was loaded from `{Path(teacher_summary['checkpoint']).name}`{pinned}, not trained in this run."
    if teacher_summary.get("source") == "trained":
        return f"The teacher was trained in this run ({teacher_summary.get('steps')} steps, {teacher_summary.get('train_wall_time_s')} s)."
    return ""


def _distillation_section(doc: Document, metrics: dict, labels: dict[str, str], teacher_summary: dict) -> None:
    """What the run is for, first: teacher, student alone and distilled student side by side on every set."""
    rows, verdicts = [], []
    for set_name, per_model in metrics.items():
        if "student" not in per_model:
            continue
        cells = [f"{_pct(per_model[k]['accuracy'])} ± {_pct(per_model[k]['accuracy_std'])}" if k in per_model else "—"
                 for k in ("teacher", "student_nokd", "student")]
        gain = (f"{100 * (per_model['student']['accuracy'] - per_model['student_nokd']['accuracy']):+.2f}"
                if "student_nokd" in per_model else "—")
        rows.append([set_name, *cells, gain])
        verdict = distillation_verdict(per_model)
        if verdict:
            verdicts.append(f"`{set_name}`: {verdict}")
    if not rows:
        return
    doc.heading("Distillation result")
    doc.table(["set", f"{labels['teacher']} %", f"{labels['student_nokd']} %", f"{labels['student']} %", "gain (points)"], rows)
    doc.paragraph("Same student architecture, data and training budget for both students; accuracy ± its standard deviation "
                  "over the 10 folds. " + " ".join([teacher_origin(teacher_summary), *verdicts]).strip())


def _training_curve_section(doc: Document, run_dir: Path, out_dir: Path, labels: dict[str, str]) -> None:
    """Accuracy against training time of each student, where the run recorded a curve (`optim.eval_every_steps`)."""
    curves = {}
    for stage, stem in (("baseline", "student_nokd"), ("distill", "student")):
        path = run_dir / stage / f"{stem}_curve.json"
        if path.is_file():
            curves[labels[stem]] = json.loads(path.read_text())
    if not curves:
        return
    doc.heading("Accuracy against training time")
    set_name = next(iter(curves.values()))[0].get("set", "?")
    rows = [[label, str(p["step"]), str(p["images"]), f"{p['train_s'] / 60:.1f}", f"{p['accuracy']:.2f} ± {p['accuracy_std']:.2f}"]
            for label, points in curves.items() for p in points]
    doc.image(plot_training_curves(curves, out_dir / "training_curves.png", f"verification accuracy on {set_name} (%)"),
              f"Verification accuracy on {set_name} during training (eval mode, same protocol as the evaluate stage)")
    doc.table(["student", "step", "images seen", "training min", f"accuracy % ({set_name})"], rows)


def _pareto_section(doc: Document, run_dir: Path, out_dir: Path) -> None:
    """Students of several sizes from one teacher: accuracy against ncnn latency (stage `pareto`)."""
    path = run_dir / "pareto" / "pareto.json"
    pareto = json.loads(path.read_text()) if path.is_file() else {}
    rows = pareto.get("rows", [])
    if not rows:
        return
    doc.heading("Accuracy against latency: choosing a student")
    set_name = pareto.get("verification_set", "?")
    doc.paragraph(f"Each student distilled from the same teacher with the same objective, data and budget; accuracy on {set_name} "
                  f"(10-fold); ncnn latency at {pareto.get('threads', 1)} thread(s), batch 1, on this machine. Pick the most "
                  "accurate row under your latency budget.")
    doc.table(["student", "parameters", "GFLOPs", "backend/precision", "accuracy %", "cos min vs PyTorch", "p50 ms", "p90 ms", "model MB"],
              [[r["student"], f"{r['parameters']:,}", f"{r['gflops']:.3f}", f"{r['backend']}/{r['precision']}",
                f"{r['accuracy']:.2f} ± {r['accuracy_std']:.2f}",
                f"{r['cosine_min_vs_pytorch']:.6f}" if r.get("cosine_min_vs_pytorch") is not None else "reference",
                _ms(r.get("p50_ms")), _ms(r.get("p90_ms")), _mb(r.get("model_bytes"))] for r in rows])
    doc.image(plot_pareto(rows, out_dir / "pareto.png", f"verification accuracy on {set_name} (%)"),
              "Accuracy against ncnn latency, one line per precision through the students")


def _ablation_section(doc: Document, run_dir: Path) -> None:
    """When runs/<run>/ablation/ holds results (app/ablation.py writes them), their tables, as ablation.md shows them."""
    ablation_dir = RunLayout(run_dir).ablation_dir
    if not ablation_dir.is_dir():
        return
    document = stored_ablation(ablation_dir)
    if document is None:
        return
    doc.heading("Ablation")
    doc.table(*format_table(document))
    if document.get("claims"):
        doc.paragraph(CLAIMS_NOTE)
        doc.table(*claims_table(document))
    untested = untested_text(document)
    if untested:
        doc.paragraph(untested)


def build_report(run_dir: Path, out_dir: Path, config_yaml: str) -> Document:
    """Collect every stage's results from `run_dir` and write report.md, report.html and PNGs into `out_dir`."""
    layout = RunLayout(run_dir)
    metrics = json.loads(layout.metrics_file.read_text())
    parity = all_parity_results(run_dir)
    latency = load_latency_document(layout.latency_file)
    manifests = {path.parent.name: json.loads(path.read_text()) for path in sorted(run_dir.glob("*/manifest.json"))}

    doc = Document(f"Distill-and-export report: {run_dir.name}")
    data_summary = manifests.get("data", {}).get("summary", {})
    doc.paragraph(
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Data source: {data_summary.get('source', '?')}"
        + (" (procedurally generated synthetic faces: figures describe the pipeline on synthetic identities, not accuracy on real faces)."
           if data_summary.get("source") == "synthetic" else ".")
    )
    labels = model_labels(run_dir)
    _distillation_section(doc, metrics, labels, manifests.get("teacher", {}).get("summary", {}))
    doc.heading("Summary")
    doc.table(["model [backend]", f"verification accuracy % ({parity.get('verification_set') or next(iter(metrics))})", "parity", "p50 ms (batch 1, 1 thread)"],
              summary_rows(metrics, parity, latency, labels))

    doc.heading("Verification accuracy")
    for set_name, per_model in metrics.items():
        rows = []
        for label, m in per_model.items():
            tars = m.get("tar_at_far", {})
            rows.append([labels.get(label, label), f"{_pct(m['accuracy'])} ± {_pct(m['accuracy_std'])}",
                         _pct(tars.get("1e-3")), _pct(tars.get("1e-4")), f"{m['auc']:.4f}", str(m["num_pairs"])])
        doc.paragraph(f"Set `{set_name}`: 10-fold accuracy with the best threshold chosen on the other folds (LFW protocol).")
        doc.table(["model", "accuracy %", "TAR@FAR=1e-3 %", "TAR@FAR=1e-4 %", "AUC", "pairs"], rows)
        roc_path = plot_roc_curves({labels.get(k, k): _result(v) for k, v in per_model.items()},
                                   out_dir / f"roc_{set_name}.png", f"ROC on {set_name}")
        doc.image(roc_path, f"ROC curves on {set_name}")

    doc.heading("Parity against PyTorch")
    doc.paragraph("Numeric: per-image cosine of embeddings vs the PyTorch student; accuracy: 10-fold verification accuracy "
                  "from the backend's own embeddings at PyTorch's per-fold thresholds, vs PyTorch's, and how many pair "
                  "decisions flipped (the accuracy gate also bounds the flips, so gains cannot hide losses). Gates per precision are "
                  "in the configuration below.")
    doc.table(["backend", "precision", "status", "cos min", "cos mean", "max abs diff", "accuracy delta (points)",
               "pairs flipped", "gate", "reason"],
              [[r["backend"], r["precision"], r["status"],
                *(f"{r[k]:.6f}" if r.get(k) is not None else "—" for k in ("cosine_min", "cosine_mean")),
                f"{r['max_abs_diff']:.2e}" if r.get("max_abs_diff") is not None else "—",
                f"{r['accuracy_delta_points']:+.2f}" if r.get("accuracy_delta_points") is not None else "—",
                str(r["pairs_flipped"]) if r.get("pairs_flipped") is not None else "—",
                f"cos ≥ {r['gate']['min_cosine']}, |Δ| ≤ {r['gate']['max_accuracy_delta_points']}" if r.get("gate") else "—",
                r.get("reason", "")] for r in parity["results"]])

    _native_targets_section(doc, run_dir)
    _latency_section(doc, run_dir, out_dir, metrics, parity, latency)
    _pareto_section(doc, run_dir, out_dir)
    _training_curve_section(doc, run_dir, out_dir, labels)
    _cost_section(doc, run_dir, manifests)
    _ablation_section(doc, run_dir)

    doc.heading("Stages")
    doc.table(["stage", "wall time (s)", "started", "summary"],
              [[name, f"{m.get('wall_time_s', 0):.1f}", m.get("started_at", ""), json.dumps(m.get("summary", {}), sort_keys=True)[:300]]
               for name, m in manifests.items()])
    doc.heading("Configuration")
    doc.code(config_yaml)
    doc.heading("Versions")
    versions = next(iter(manifests.values()), {}).get("versions", {})
    doc.table(["component", "version"], [[k, str(v)] for k, v in sorted(versions.items())])

    write_text_atomic(out_dir / REPORT_FILE, doc.to_markdown())
    write_text_atomic(out_dir / "report.html", doc.to_html())
    return doc


def config_as_yaml(config_dump: dict) -> str:
    return yaml.safe_dump(config_dump, sort_keys=False)
