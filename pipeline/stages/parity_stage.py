"""Stage `parity`: every exported backend x precision against the PyTorch reference, numeric and accuracy gates.

The stage records failures instead of raising, so the report still shows them; the command then exits
non-zero (see `failed_parity`). A numeric failure of ONNX or ncnn also names the first divergent layer
(deploy/localize.py), which is why the stage reads the PyTorch student.
"""

from __future__ import annotations

from pathlib import Path

from deploy.parity_run import parity_for_exports, parity_inputs
from pipeline.run_layout import EXPORTS_FILE, PARITY_FILE, RunLayout
from pipeline.stages.common import read_json, write_json
from pipeline.stages.runner import StageContext


def run_parity_stage(context: StageContext) -> None:
    export_dir = context.input_dir("export")
    spec, pairs, reference, student = parity_inputs(context.run_dir)
    results = parity_for_exports(export_dir, read_json(export_dir / EXPORTS_FILE), spec, pairs, reference, context.config.parity,
                                 model=student)
    write_json(context.out_dir, PARITY_FILE, {"verification_set": pairs.name, "results": [r.to_dict() for r in results]})
    context.summary["parity"] = {r.label: r.status for r in results}


def failed_parity(parity_payload: dict) -> list[dict]:
    """Results that could run and did not pass: these make the command exit non-zero.

    "skipped" (cannot run here) and "dropped" (an INT8 variant not kept because it missed its gate at export)
    do not count: neither is shipped as a working model.
    """
    return [r for r in parity_payload["results"] if r["status"] in {"fail", "error"}]




def all_parity_results(run_dir: Path) -> dict:
    """Every parity row of a run: the parity stage's, the native tool's (x86, emulated ARM) and devices' files.

    One table in the report and one exit status: a backend that fails on a phone fails like one that fails here.
    """
    payload = read_json(RunLayout(run_dir).parity_file)
    results = list(payload["results"])
    native = RunLayout(run_dir).native_parity_file
    if native.is_file():
        results += read_json(native)["results"]
    for device_file in RunLayout(run_dir).device_parity_files():
        results += read_json(device_file)["results"]
    return {"verification_set": payload.get("verification_set"), "results": results}
