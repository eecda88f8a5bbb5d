"""The export catalog (pipeline/export_catalog.py) that the config checks at load, against the format table that
deploy/formats.py implements (issue 21): the same formats and precisions, each exporter reading only the options its
row declares, and a profile's mistakes stopped before any training."""

from __future__ import annotations

import ast
import inspect

import pytest

import deploy.formats
from deploy.formats import FORMATS
from pipeline.config import load_config, profile_path
from pipeline.errors import ConfigError
from pipeline.export_catalog import FORMAT_SPECS, INT8_OPTIONS, options_taken, readers_of

REQUEST_FIELDS_THAT_ARE_OPTIONS = {"opset", "calibration_images"}  # ExportRequest carries these two beside `options`


def options_read(function_name: str) -> set[str]:
    """`export` options an exporter reads: request.options.X, an alias `options = request.options`, request.opset, and the
    same in the module's helpers it calls with the request (one level, e.g. _calibration)."""
    module = ast.parse(inspect.getsource(deploy.formats))
    functions = {node.name: node for node in module.body if isinstance(node, ast.FunctionDef)}

    def reads(function: ast.FunctionDef) -> set[str]:
        found = set()
        for node in ast.walk(function):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id == "options":
                found.add(node.attr)
            elif isinstance(owner, ast.Attribute) and owner.attr == "options" and isinstance(owner.value, ast.Name) and owner.value.id == "request":
                found.add(node.attr)
            elif isinstance(owner, ast.Name) and owner.id == "request" and node.attr in REQUEST_FIELDS_THAT_ARE_OPTIONS:
                found.add(node.attr)
        return found

    exporter = functions[function_name]
    found = reads(exporter)
    for call in (n for n in ast.walk(exporter) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
        if call.func.id in functions:
            found |= reads(functions[call.func.id])
    return found


def test_the_catalog_and_the_format_table_list_the_same_formats_and_precisions():
    assert list(FORMATS) == list(FORMAT_SPECS)
    for name, row in FORMATS.items():
        assert row.precisions == FORMAT_SPECS[name].precisions, name


@pytest.mark.parametrize("name", list(FORMAT_SPECS))
def test_each_exporter_reads_exactly_the_options_its_row_declares(name):
    declared = FORMAT_SPECS[name].options_for(FORMAT_SPECS[name].precisions) - {"int8_gate"}  # the export stage reads the gate
    read = options_read(f"_export_{name}")
    assert read <= declared, f"{name} reads {sorted(read - declared)} without declaring them"
    if "int8" not in FORMAT_SPECS[name].precisions:
        assert not declared & INT8_OPTIONS
    undeclared_but_unused = declared - read
    assert not undeclared_but_unused, f"{name} declares {sorted(undeclared_but_unused)} but never reads them"


def test_readers_name_format_and_precision():
    assert readers_of("ncnn_fp16_arithmetic_off") == ["ncnn:fp16"]
    assert readers_of("tensorrt_workspace_mib") == ["tensorrt"]
    assert set(readers_of("calibration_images")) == {"onnx:int8", "ncnn:int8", "tensorrt:int8"}
    assert "ncnn_fp16_arithmetic_off" not in options_taken(["ncnn:fp32,int8", "onnx"])
    assert "ncnn_fp16_arithmetic_off" in options_taken(["ncnn"])


@pytest.mark.parametrize("overrides, message", [
    ({"export.formats": ["onxx"]}, "unknown export format 'onxx'; known: onnx, ncnn, coreml, tensorrt"),
    ({"export.formats": ["coreml:int8"]}, "format 'coreml' has no precision int8"),
    ({"export.formats": ["onnx"], "export.tensorrt_workspace_mib": 64}, "tensorrt_workspace_mib is read only by tensorrt"),
    ({"export.formats": ["ncnn:fp32"], "export.ncnn_fp16_arithmetic_off": ["Convolution"]},
     "ncnn_fp16_arithmetic_off is read only by ncnn:fp16"),
])
def test_a_profile_mistake_in_export_stops_at_load_naming_the_set(overrides, message):
    with pytest.raises(ConfigError) as raised:
        load_config(profile_path("tiny"), overrides)
    text = str(raised.value)
    assert message in text and "--set export." in text and "\n" not in text


def test_a_set_of_formats_drops_the_profiles_options_they_do_not_read():
    """tiny.yaml sets the INT8 calibration set; choosing fp32 ONNX only on the command line is not an error."""
    config = load_config(profile_path("tiny"), {"export.formats": ["onnx:fp32"]})
    assert config.export.formats == ["onnx:fp32"]
    assert "calibration_images" not in config.export.model_fields_set
    kept = load_config(profile_path("tiny"), {"export.formats": ["ncnn:int8"]})
    assert kept.export.calibration_images == 16  # read by ncnn int8: the profile's value stands
