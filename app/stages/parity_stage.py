"""Stage `parity`: every exported backend x precision against the PyTorch reference, numeric and accuracy gates.

The stage records failures instead of raising, so the report still shows them; the command then exits
non-zero (see `pipeline.run_layout.failed_parity`). A numeric failure of ONNX or ncnn also names the first divergent layer
(deploy/localize.py), which is why the stage reads the PyTorch student.
"""

from __future__ import annotations


from deploy.parity_run import parity_for_exports, parity_inputs
from pipeline.run_layout import PARITY_FILE, read_export_records
from pipeline.stages.common import write_json
from pipeline.stages.runner import StageContext


def run_parity_stage(context: StageContext) -> None:
    export_dir = context.input_dir("export")
    spec, pairs, reference, student = parity_inputs(context.run_dir)
    results = parity_for_exports(export_dir, read_export_records(export_dir), spec, pairs, reference, context.config.parity,
                                 model=student)
    write_json(context.out_dir, PARITY_FILE, {"verification_set": pairs.name, "results": [r.to_dict() for r in results]})
    context.summary["parity"] = {r.label: r.status for r in results}
