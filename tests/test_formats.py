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


# --- export options come from the validated config, never from a default of the exporter's own (issue 21) ----------


def test_the_ncnn_fp16_export_receives_the_configs_featmask_when_the_profile_says_nothing(monkeypatch, tmp_path):
    from deploy.export import ncnn_export
    from deploy.formats import ExportRequest
    from pipeline.config import ExportConfig
    from pipeline.preprocess import PreprocessSpec

    passed: list[tuple[str, ...]] = []

    def fake_export_ncnn(model, spec, out_dir, precision, fp16_arithmetic_off=None):
        passed.append(fp16_arithmetic_off)
        return {"param": out_dir / "student_fp16.ncnn.param", "bin": out_dir / "student_fp16.ncnn.bin", "precision": precision}

    monkeypatch.setattr(ncnn_export, "export_ncnn", fake_export_ncnn)
    config_default = tuple(ExportConfig.model_fields["ncnn_fp16_arithmetic_off"].default)
    assert config_default == ("ConvolutionDepthWise",)  # what keeps ARM fp16 at cosine 0.99998, not 0.989 (README)
    profile = load_config(profile_path("tiny"))  # names no ncnn_fp16_arithmetic_off
    cleared = load_config(profile_path("tiny"), {"export.ncnn_fp16_arithmetic_off": []})
    for options in (profile.export, ExportConfig(), cleared.export):
        FORMATS["ncnn"].export(ExportRequest(None, PreprocessSpec(), tmp_path, "fp16", options=options))
    FORMATS["ncnn"].export(ExportRequest(None, PreprocessSpec(), tmp_path, "fp16"))  # no options given: the config's
    assert passed == [config_default, config_default, (), config_default]


@pytest.mark.slow
def test_the_tiny_runs_fp16_ncnn_model_runs_depthwise_layers_without_fp16_arithmetic(tiny_run):
    from deploy.export.ncnn_model import FEATMASK_KEY, FEATMASK_NO_FP16_ARITHMETIC
    from deploy.runners.ncnn_runner import read_param_layers

    export_dir = tiny_run["run_dir"] / "export"
    record = next(r for r in json.loads((export_dir / "exports.json").read_text())
                  if (r["format"], r["precision"]) == ("ncnn", "fp16"))
    layers = read_param_layers(export_dir / record["files"][0])
    masked = [layer.layer_name for layer in layers if layer.param_int(FEATMASK_KEY) & FEATMASK_NO_FP16_ARITHMETIC]
    depthwise = [layer.layer_name for layer in layers if layer.layer_type == "ConvolutionDepthWise"]
    assert depthwise and masked == depthwise == record["fp16_arithmetic_off_layers"]
