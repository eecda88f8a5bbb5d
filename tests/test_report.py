"""The benchmark stage's latency file and the report built from the tiny run: every runnable backend timed, the
student's FLOPs, the report's sections, and the HTML report as headless Chromium renders it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.android import describe_android_device, parse_getprop
from benchmarks.benchncnn import parse_benchncnn_output, results_from_benchncnn
from benchmarks.distill_speed import STUDENT_LADDER
from benchmarks.latency import latency_document, load_latency_document
from benchmarks.report import build_report, summary_rows
from deploy.formats import get_format
from pipeline.models.saved import load_model
from pipeline.run_layout import exports_digest
from tests.conftest import read_json

pytestmark = pytest.mark.slow
PHONE = Path(__file__).resolve().parent / "fixtures" / "android" / "phone"
MATPLOTLIB_BLUE = np.array([31, 119, 180])  # "C0": the figures' first colour; nothing else on the page is this blue


def test_latency_file_times_every_runnable_backend_at_each_thread_count_and_batch(tiny_run: dict) -> None:
    run_dir = tiny_run["run_dir"]
    latency = load_latency_document(run_dir / "benchmark" / "latency.json")
    settings = tiny_run["config"].benchmark
    exports = read_json(run_dir / "export" / "exports.json")
    runnable = {(r["format"], r["precision"]) for r in exports if r["status"] == "exported" and get_format(r["format"]).runnable_here()[0]}
    expected = {("pytorch", "fp32")} | runnable
    rows = [r for r in latency["results"] if r["tool"] == "python"]
    assert {(r["backend"], r["precision"]) for r in rows} == expected
    assert {(r["backend"], r["precision"], r["threads"], r["batch"]) for r in rows} == {
        (*key, threads, batch) for key in expected for threads in latency["settings"]["threads"] for batch in (1, settings.throughput_batch)}
    not_runnable = {(r["format"], r["precision"]) for r in exports} - runnable
    assert not_runnable <= {(s["backend"], s["precision"]) for s in latency["skipped"]}
    assert all(s["reason"] for s in latency["skipped"])
    for row in rows:
        assert row["runs"] >= (settings.timed_runs if row["batch"] == 1 else settings.throughput_runs)
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["peak_rss_mb"] >= row["rss_before_mb"] and row["model_bytes"] > 0
    student = load_model(run_dir / "distill", "student")
    assert latency["model"]["parameters"] == sum(p.numel() for p in student.parameters())
    assert latency["model"]["flops"] == 2 * latency["model"]["macs"] > 0


def test_distill_speed_shows_what_the_teacher_costs(tiny_run: dict) -> None:
    speed = read_json(tiny_run["run_dir"] / "benchmark" / "distill_speed.json")
    for key in ("student_alone_images_per_s", "distill_cached_teacher_images_per_s", "distill_online_teacher_images_per_s", "teacher_forward_images_per_s"):
        assert speed[key] > 0, key
    assert speed["steps_timed"] == tiny_run["config"].benchmark.distill_speed_steps
    assert speed["online_step_time_vs_student_alone"] == pytest.approx(speed["student_alone_images_per_s"] / speed["distill_online_teacher_images_per_s"], abs=0.01)


def test_distill_speed_ladder_adds_one_setting_per_row_up_to_the_profiles(tiny_run: dict) -> None:
    """Old settings against new, side by side, each change on its own row; the teacher's own training too."""
    speed = read_json(tiny_run["run_dir"] / "benchmark" / "distill_speed.json")
    ladder = speed["student_ladder"]
    assert [row["row"] for row in ladder] == [name for name, _ in STUDENT_LADDER]
    assert not any(ladder[0]["settings"].values())  # the trainer as it was: every new setting off
    for before, after in zip(ladder, ladder[1:]):
        changed = {key for key in after["settings"] if after["settings"][key] != before["settings"][key]}
        assert changed == {after["row"]} or after["row"] == "bf16_autocast" and changed == {"mixed_precision"}, changed
    optim = tiny_run["config"].distill.optim
    assert ladder[-1]["settings"] == {key: getattr(optim, key) for key in ladder[-1]["settings"]}
    assert all(row["images_per_s"] > 0 for row in ladder)
    assert speed["student_alone_before_images_per_s"] == ladder[0]["images_per_s"]
    assert speed["student_alone_images_per_s"] == ladder[-1]["images_per_s"]
    assert speed["teacher_training_before_images_per_s"] > 0 and speed["teacher_training_images_per_s"] > 0
    report = (tiny_run["run_dir"] / "report" / "report.md").read_text()
    assert "+ compiled BatchNorm+PReLU kernels" in report and "teacher's own training, now" in report


def test_report_has_latency_figures_cost_and_device_tables(tiny_run: dict) -> None:
    out = tiny_run["run_dir"] / "report"
    markdown = (out / "report.md").read_text()
    for heading in ("## Summary", "## Latency", "## What distillation and export cost", "## Parity against PyTorch"):
        assert heading in markdown
    for image in ("latency.png", "latency_vs_accuracy.png"):
        assert f"]({image})" in markdown and (out / image).stat().st_size > 10_000
    assert "GFLOPs" in markdown and "peak RSS rise MB" in markdown and "skipped: needs macOS" in markdown
    teacher = read_json(tiny_run["run_dir"] / "teacher" / "manifest.json")["summary"]
    assert f"The teacher was trained in this run ({teacher['steps']} steps" in markdown
    html = (out / "report.html").read_text()
    assert html.count("<table>") == markdown.count("\n|---") and html.count("data:image/png;base64,") == markdown.count("![")


def test_phone_results_join_the_report_and_the_summary_keeps_its_shape(tiny_run: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny_run["run_dir"], run_dir, ignore=shutil.ignore_patterns("work", "*.mlpackage"))
    output = parse_benchncnn_output((PHONE / "benchncnn_threads4.txt").read_text())
    phone = latency_document(results_from_benchncnn(output, "student_fp16.ncnn.param"), [],
                             describe_android_device(parse_getprop((PHONE / "getprop.txt").read_text())), {}, None, {"loop_count": 50},
                             exports_digest(run_dir / "export"))
    (run_dir / "devices").mkdir()
    (run_dir / "devices" / "android_5a1b2c3d.json").write_text(json.dumps(phone))
    build_report(run_dir, run_dir / "report", "run_name: tiny\n")
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "## Latency on other devices" in markdown and "OnePlus HD1903 (Qualcomm SM8150, arm64-v8a, android)" in markdown
    metrics, parity = read_json(run_dir / "evaluate" / "metrics.json"), read_json(run_dir / "parity" / "parity.json")
    rows = summary_rows(metrics, parity, read_json(run_dir / "benchmark" / "latency.json"))
    assert all(len(row) == 4 for row in rows) and len(rows) == len(metrics[parity["verification_set"]]) + len(parity["results"])


def chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)


def run_chromium(binary: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([binary, *flags, *arguments], capture_output=True, text=True, timeout=180)


def blue_pixels(png: Path) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - MATPLOTLIB_BLUE).sum(axis=2) < 30).sum())


def test_html_report_renders_in_headless_chromium(tiny_run: dict, tmp_path: Path) -> None:
    binary = chromium()
    if binary is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium): the HTML report's rendering is not checked")
    report = tiny_run["run_dir"] / "report" / "report.html"
    html = report.read_text()
    dom = run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table>") == html.count("<table>") > 3
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', dom.stdout)) == html.count("<img ") >= 3
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr

    # Rendered images, not just parsed ones: the same page without its figures has (almost) none of their blue.
    without_images = tmp_path / "without_images.html"
    without_images.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', html))
    shots = {}
    for name, page in (("report", report), ("without_images", without_images)):
        shots[name] = tmp_path / f"{name}.png"
        shot = run_chromium(binary, tmp_path / f"profile-{name}", "--window-size=1280,9000", f"--screenshot={shots[name]}", page.as_uri())
        assert shot.returncode == 0 and shots[name].is_file(), shot.stderr[-2000:]
        assert "CONSOLE" not in shot.stderr and "Uncaught" not in shot.stderr
    image = np.asarray(Image.open(shots["report"]).convert("L"))
    assert image.shape == (9000, 1280) and (image < 200).mean() > 0.01  # text, table borders and figures drawn
    with_figures, without_figures = blue_pixels(shots["report"]), blue_pixels(shots["without_images"])
    assert with_figures > 2000 and without_figures < with_figures / 20, (with_figures, without_figures)
