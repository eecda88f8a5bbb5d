"""Device results outlive the export they measured: each device file names the export records it read
(exports_digest), and the report shows a device's rows only while that is the run's current export; the others are
listed as stale, one line per file, with the command that measures the current export.

The run folder is built by hand (no training): the report reads files, and these are the files it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.latency import LatencyResult, latency_document, load_latency_document
from benchmarks.report import build_report
from deploy.parity import ParityResult
from pipeline.artifacts import write_json_atomic
from pipeline.errors import DataError
from pipeline.run_layout import EXPORTS_DIGEST, RunLayout, all_parity_results, exports_digest, measured_export
from tests.test_android import phone_run, run_android  # noqa: F401 - the fake phone's run folder, a pytest fixture

SET_NAME = "synthetic-verify"
DEVICE = "jetson-orin"
DEVICE_ROW = f"tensorrt ({DEVICE})"  # how a `here` device labels its rows in every table
MEASURED = "2026-12-01T10:00:00+00:00"


def export_records(export_time_s: float) -> list[dict]:
    return [{"format": "onnx", "precision": "fp32", "status": "exported", "files": ["student_fp32.onnx"], "bytes": 4_800_231,
             "export_time_s": export_time_s}]


def verification(accuracy: float) -> dict:
    return {"accuracy": accuracy, "accuracy_std": 0.01, "best_threshold": 0.3, "tar_at_far": {"1e-3": 0.5, "1e-4": None},
            "roc_fpr": [0.0, 0.1, 1.0], "roc_tpr": [0.0, 0.8, 1.0], "auc": 0.95, "num_pairs": 3000}


def parity_row(backend: str, accuracy: float) -> dict:
    return ParityResult(backend, "fp32", "pass", num_images=6000, cosine_min=0.99999, cosine_mean=1.0, max_abs_diff=1e-5,
                        accuracy_reference=0.9323, accuracy_backend=accuracy, accuracy_delta_points=0.0, pairs_flipped=0).to_dict()


def latency_row(backend: str) -> LatencyResult:
    return LatencyResult(backend, "fp32", 1, 1, 20, 2.0, 2.5, 3.0, 2.1, 0.2, 1.8, 3.1, 500.0)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run as the report reads it: exports, metrics, parity, latency; no device files yet."""
    layout = RunLayout(tmp_path / "default")
    write_json_atomic(layout.exports_file, export_records(1.004))
    write_json_atomic(layout.metrics_file, {SET_NAME: {"student": verification(0.9323)}})
    write_json_atomic(layout.parity_file, {"verification_set": SET_NAME, "results": [parity_row("onnx", 0.9323)]})
    write_json_atomic(layout.latency_file, latency_document([latency_row("pytorch"), latency_row("onnx")], [], {"kind": "host"},
                                                            {}, None, {}, exports_digest(layout.exports_file.parent)))
    return layout.run_dir


def write_device_files(run_dir: Path) -> tuple[Path, Path]:
    """A board's parity and latency files, as device parity and device-benchmark.sh write them for today's exports."""
    layout = RunLayout(run_dir)
    digest = exports_digest(layout.exports_file.parent)
    device = {"kind": "board", "name": DEVICE, "cpu": "ARMv8 Processor", "abi": "aarch64"}
    parity = layout.device_parity_file(DEVICE)
    write_json_atomic(parity, {"created_at": MEASURED, EXPORTS_DIGEST: digest, "device": device, "verification_set": SET_NAME,
                               "results": [parity_row(DEVICE_ROW, 0.9280)]})
    latency = layout.device_latency_file(DEVICE)
    document = latency_document([latency_row("tensorrt")], [], device, {}, None, {}, digest)
    write_json_atomic(latency, {**document, "created_at": MEASURED})
    return parity, latency


def report(run_dir: Path) -> str:
    build_report(run_dir, run_dir / "report", "run_name: default\n")
    return RunLayout(run_dir).report_file.read_text()


def forget_digest(path: Path) -> None:
    """The file as written before device files recorded their exports."""
    document = json.loads(path.read_text())
    del document[EXPORTS_DIGEST]
    write_json_atomic(path, document)


def test_device_files_of_the_current_export_join_the_tables(run_dir: Path) -> None:
    write_device_files(run_dir)
    markdown = report(run_dir)
    summary, _, rest = markdown.partition("## Verification accuracy")
    parity_table = rest.partition("## Parity against PyTorch")[2].partition("## Latency")[0]
    assert f"student [{DEVICE_ROW}/fp32] | 92.80 | pass" in summary and f"| {DEVICE_ROW} | fp32 | pass |" in parity_table
    assert "## Latency on other devices" in markdown and f"`{DEVICE}.json`: {DEVICE}" in markdown
    assert "stale:" not in markdown
    assert DEVICE_ROW in {row["backend"] for row in all_parity_results(run_dir)["results"]}


def test_after_a_re_export_device_files_are_listed_as_stale_and_left_out_of_the_tables(run_dir: Path) -> None:
    write_device_files(run_dir)
    write_json_atomic(RunLayout(run_dir).exports_file, export_records(1.137))  # `make mobile-model` exported again
    markdown = report(run_dir)
    assert DEVICE_ROW not in markdown and "## Latency on other devices" not in markdown
    assert DEVICE_ROW not in {row["backend"] for row in all_parity_results(run_dir)["results"]}  # nor in the exit status
    assert (f"stale: measured on an earlier export of this run (`devices/{DEVICE}.json`, measured {MEASURED}); rerun "
            f"`docker/device-benchmark.sh runs/default/export runs/default/devices/{DEVICE}.json` on that device") in markdown
    assert (f"stale: measured on an earlier export of this run (`devices/parity/{DEVICE}.json`, measured {MEASURED}); rerun "
            f"`python -m app.device_parity --run-dir runs/default here --formats tensorrt --name {DEVICE}` on that device") in markdown
    assert markdown.count("stale:") == 2


def test_digest_follows_the_records_not_their_formatting(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_json_atomic(first / "exports.json", export_records(1.004))
    (second / "exports.json").parent.mkdir()
    (second / "exports.json").write_text(json.dumps(export_records(1.004)))  # other indentation and key order, same records
    assert exports_digest(first) == exports_digest(second)
    changed = export_records(1.004)
    changed[0]["bytes"] += 1
    write_json_atomic(second / "exports.json", changed)
    assert exports_digest(first) != exports_digest(second)


def test_files_without_a_digest_load_and_are_listed_as_export_unknown(run_dir: Path) -> None:
    parity, latency = write_device_files(run_dir)
    for path in (parity, latency):
        forget_digest(path)
    assert EXPORTS_DIGEST not in load_latency_document(latency)  # older latency files still load
    markdown = report(run_dir)
    assert DEVICE_ROW not in markdown and "## Latency on other devices" not in markdown
    unknown = "stale: export unknown (written before exports were recorded)"
    assert f"{unknown} (`devices/{DEVICE}.json`, measured {MEASURED})" in markdown
    assert f"{unknown} (`devices/parity/{DEVICE}.json`, measured {MEASURED})" in markdown


def test_stale_phone_files_name_the_make_target_that_measures_the_phone_again(run_dir: Path) -> None:
    layout = RunLayout(run_dir)
    phone = {"kind": "android", "name": "OnePlus HD1903", "cpu": "Qualcomm SM8150", "abi": "arm64-v8a", "serial": "5a1b2c3d"}
    write_json_atomic(layout.device_parity_file("android_5a1b2c3d"),
                      {"device": phone, "verification_set": SET_NAME, "results": [parity_row("ncnn-android (OnePlus)", 0.93)]})
    qemu = {**phone, "cpu": "qemu-aarch64 -cpu cortex-a53", "emulated": True}
    write_json_atomic(layout.device_latency_file("android_qemu-arm64"), latency_document([latency_row("ncnn")], [], qemu, {}, None, {}))
    markdown = report(run_dir)
    assert "rerun `make parity-android RUN_NAME=default ANDROID_ARGS=\"--serial 5a1b2c3d\"`" in markdown
    assert "rerun `make bench-android RUN_NAME=default FAKE_PHONE=cortex-a53`" in markdown
    assert "(file time)" in markdown  # device parity files written before they recorded created_at


def test_a_digest_that_is_not_a_string_is_an_error_naming_the_file() -> None:
    with pytest.raises(DataError, match="devices/x.json: exports_digest must be a sha256 hex string, not int"):
        measured_export({EXPORTS_DIGEST: 7}, Path("devices/x.json"), "abc")


def test_device_parity_records_when_and_which_export_it_measured(run_dir: Path) -> None:
    from app.device_parity import measured_now

    measured = measured_now(run_dir)
    assert measured[EXPORTS_DIGEST] == exports_digest(RunLayout(run_dir).exports_file.parent)
    assert measured["created_at"].endswith("+00:00")


def test_phone_latency_names_the_run_exports_it_timed(phone_run: dict) -> None:  # noqa: F811 - the imported fixture
    completed = run_android(phone_run)
    assert completed.returncode == 0, completed.stderr
    document = load_latency_document(RunLayout(phone_run["run_dir"]).device_latency_file("android_5a1b2c3d"))
    assert document[EXPORTS_DIGEST] == exports_digest(RunLayout(phone_run["run_dir"]).exports_file.parent)
