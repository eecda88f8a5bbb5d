"""The training side imports on a machine without the export toolchains (a GPU box has torch, not ncnn or pnnx)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

OPTIONAL = ("ncnn", "pnnx", "onnxsim", "coremltools", "tensorrt")


def test_stage_runner_and_budgeted_run_import_without_export_toolchains():
    script = textwrap.dedent(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # import of it raises ImportError, as where it is not installed
        import benchmarks.budgeted_run
        import pipeline.stages
        from deploy.runners.ncnn_runner import io_blob_names, read_param_layers
        print("ok")
    """)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert finished.returncode == 0 and finished.stdout.strip() == "ok", finished.stderr[-2000:]
