"""The run folder's file names are spelled in pipeline/run_layout.py alone, and its readers agree with its writers."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from pipeline import run_layout
from pipeline.errors import DataError
from pipeline.run_layout import RunLayout, read_export_records

ROOT = Path(__file__).resolve().parents[1]
FILE_NAMES = {run_layout.EXPORTS_FILE, run_layout.MODEL_MANIFEST, run_layout.METRICS_FILE, run_layout.LATENCY_FILE,
              run_layout.PARITY_FILE, run_layout.NATIVE_PARITY_FILE, run_layout.DEVICE_PARITY_GLOB, run_layout.REPORT_FILE,
              run_layout.BUDGET_FILE}


def string_constants(path: Path) -> set[str]:
    """Every string literal in the module's code (docstrings and comments say these names freely; code may not)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


@pytest.mark.parametrize("package", ["app", "pipeline", "deploy", "benchmarks"])
def test_no_other_module_spells_a_run_folder_file_name(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if path == ROOT / "pipeline" / "run_layout.py":
            continue
        spelled = {name for name in FILE_NAMES for literal in string_constants(path) if name in literal}
        if spelled:
            offenders[str(path.relative_to(ROOT))] = sorted(spelled)
    assert not offenders, f"run-folder file names outside pipeline/run_layout.py: {offenders}"


def test_layout_paths_are_where_the_stages_write():
    layout = RunLayout(Path("runs/x"))
    assert layout.exports_file == Path("runs/x/export/exports.json")
    assert layout.metrics_file == Path("runs/x/evaluate/metrics.json")
    assert layout.latency_file == Path("runs/x/benchmark/latency.json")
    assert layout.parity_file == Path("runs/x/parity/parity.json")
    assert layout.report_file == Path("runs/x/report/report.md")
    assert layout.device_parity_file("pixel7") == Path("runs/x/devices/parity/pixel7.json")


def test_device_parity_files_are_found_where_they_are_written(tmp_path):
    layout = RunLayout(tmp_path)
    written = layout.device_parity_file("jetson-orin")
    written.parent.mkdir(parents=True)
    written.write_text("{}")
    assert layout.device_parity_files() == [written]


def _write_records(folder: Path, records) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / run_layout.EXPORTS_FILE).write_text(json.dumps(records))
    return folder


GOOD = {"format": "ncnn", "precision": "fp16", "status": "exported", "files": ["a.param", "a.bin"], "input_blob": "in0"}


def test_export_records_keep_a_formats_own_facts_and_read_back_typed(tmp_path):
    folder = _write_records(tmp_path / "export", [GOOD, {**GOOD, "precision": "int8", "status": "dropped", "files": [], "reason": "gate"}])
    records = read_export_records(folder)
    assert [r["status"] for r in records] == ["exported", "dropped"] and records[0]["input_blob"] == "in0"


@pytest.mark.parametrize("records, problem", [
    ([{**GOOD, "status": "error"}], "export record 0.status: Input should be 'exported', 'skipped', 'failed' or 'dropped'"),
    ([{k: v for k, v in GOOD.items() if k != "files"}], "export record 0.files: Field required"),
    ([GOOD, {**GOOD, "format": "onxx"}], "export record 1.format: Value error, unknown export format 'onxx'"),
    ([{**GOOD, "precision": "bf16"}], "export record 0.precision: Input should be 'fp32', 'fp16' or 'int8'"),
    ({"records": []}, "expected a list of export records"),
])
def test_a_wrong_export_record_is_one_line_naming_the_file(tmp_path, records, problem):
    folder = _write_records(tmp_path / "export", records)
    with pytest.raises(DataError) as raised:
        read_export_records(folder)
    assert str(raised.value) == f"{folder / run_layout.EXPORTS_FILE}: {problem}"


def test_missing_or_broken_exports_file_says_so(tmp_path):
    with pytest.raises(DataError, match="run the export stage first"):
        read_export_records(tmp_path)
    (tmp_path / run_layout.EXPORTS_FILE).write_text("[{")
    with pytest.raises(DataError, match="not JSON"):
        read_export_records(tmp_path)
