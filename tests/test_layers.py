"""The import contract (issue 21): app -> benchmarks -> deploy -> pipeline's core, never the other way, checked by
import-linter on the project as it is, and shown to catch an upward import in a copy that has one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    """lint-imports reads [tool.importlinter] from the project's pyproject.toml and imports nothing it checks."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(project / "pyproject.toml")], cwd=project,
                          env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          check=False, timeout=300)


def contract() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_every_top_level_package_is_in_a_layer():
    """A new top-level package left out of the contract would be checked by nothing."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    layers = contract()["contracts"][0]["layers"]
    assert set(contract()["root_packages"]) == packages == set(layers), (packages, layers)


def test_no_module_imports_from_a_layer_above_it():
    finished = lint_imports(ROOT)
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-2000:]
    assert "1 kept, 0 broken" in finished.stdout, finished.stdout[-2000:]


def test_the_contract_catches_an_upward_import(tmp_path):
    """The same contract on a copy whose core reaches up into deploy (as pipeline/config.py once did)."""
    for package in contract()["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "pipeline" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom deploy.formats import FORMATS  # noqa: E402\n")
    finished = lint_imports(tmp_path)
    assert finished.returncode != 0
    assert "pipeline.errors -> deploy.formats" in finished.stdout, finished.stdout[-2000:]
