"""The export-format table: every row complete, entries parse, the profiles name only real rows, and a tiny
run reports every backend x precision with a status (skips and drops with their reasons)."""

from __future__ import annotations

import json

import pytest

from deploy.formats import FORMATS, get_format, parse_format_entry
from pipeline.config import load_config, profile_path
from pipeline.errors import ConfigError

REPORTED_STATUSES = {"pass", "fail", "error", "skipped", "dropped"}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_row_is_complete(name):
    row = FORMATS[name]
    assert row.name == name and row.suffix.startswith(".") and row.precisions
    assert set(row.precisions) <= {"fp32", "fp16", "int8"}
    for probe in (row.runnable_here, row.exportable_here):
        ok, reason = probe()
        assert isinstance(ok, bool) and (ok or reason), f"{name}: a 'no' must say why"


def test_issue_precisions_are_in_the_table():
    assert set(FORMATS["onnx"].precisions) == {"fp32", "int8"}
    assert set(FORMATS["ncnn"].precisions) == {"fp32", "fp16", "int8"}
    assert set(FORMATS["coreml"].precisions) == {"fp32", "fp16"}
    assert set(FORMATS["tensorrt"].precisions) == {"fp32", "fp16", "int8"}


def test_entries_parse():
    assert parse_format_entry("ncnn")[1] == ("fp32", "fp16", "int8")
    assert parse_format_entry("ncnn:int8")[1] == ("int8",)
    with pytest.raises(ConfigError, match="no precision int8"):
        parse_format_entry("coreml:int8")
    with pytest.raises(ConfigError, match="unknown export format"):
        get_format("tflite")


@pytest.mark.parametrize("profile", ["default", "tiny"])
def test_profiles_name_real_formats(profile):
    for entry in load_config(profile_path(profile)).export.formats:
        parse_format_entry(entry)


@pytest.mark.slow
def test_tiny_run_reports_every_backend_and_precision(tiny_run):
    run_dir = tiny_run["run_dir"]
    exports = json.loads((run_dir / "export" / "exports.json").read_text())
    results = json.loads((run_dir / "parity" / "parity.json").read_text())["results"]
    expected = set()
    for entry in tiny_run["config"].export.formats:
        export_format, precisions = parse_format_entry(entry)
        expected |= {(export_format.name, precision) for precision in precisions}
    assert {(r["backend"], r["precision"]) for r in results} == expected
    assert {r["status"] for r in results} <= REPORTED_STATUSES
    by_label = {(r["backend"], r["precision"]): r for r in results}
    trt_ok, trt_reason = FORMATS["tensorrt"].exportable_here()
    if not trt_ok:
        for precision in FORMATS["tensorrt"].precisions:
            assert by_label["tensorrt", precision]["status"] == "skipped"
            assert by_label["tensorrt", precision]["reason"] == trt_reason
    for record in exports:
        if record["status"] == "dropped":  # an int8 variant that missed its gate: reported with numbers, not shipped
            assert record["precision"] == "int8" and record["files"] == []
            row = by_label[record["format"], "int8"]
            assert row["reason"].startswith("failed int8 gate") and row["cosine_min"] is not None
        if record["status"] == "exported":
            assert all((run_dir / "export" / name).exists() for name in record["files"])
            assert by_label[record["format"], record["precision"]]["bytes"] == record["bytes"] > 0
