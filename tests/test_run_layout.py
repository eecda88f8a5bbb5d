"""The run folder's file names are spelled in pipeline/run_layout.py alone, and its readers agree with its writers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline import run_layout
from pipeline.run_layout import RunLayout

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


@pytest.mark.parametrize("package", ["pipeline", "deploy", "benchmarks"])
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
