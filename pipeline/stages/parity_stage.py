"""Stage `parity`: every exported backend x precision against the PyTorch reference, numeric and accuracy gates.

The stage records failures instead of raising, so the report still shows them; the command then exits
non-zero (see `failed_parity`). A numeric failure of ONNX or ncnn also names the first divergent layer
(deploy/localize.py), which is why the stage reads the PyTorch student.
"""

from __future__ import annotations

from deploy.parity_run import parity_for_exports
from deploy.preprocess import PreprocessSpec
from pipeline.data.store import load_array, load_verification_sets
from pipeline.models.saved import load_model
from pipeline.stages.common import read_json, write_json
from pipeline.stages.evaluate_stage import reference_embeddings_name
from pipeline.stages.export_stage import EXPORTS_FILE, MODEL_MANIFEST
from pipeline.stages.runner import StageContext

PARITY_FILE = "parity.json"


def run_parity_stage(context: StageContext) -> None:
    export_dir = context.input_dir("export")
    spec = PreprocessSpec.load(export_dir / MODEL_MANIFEST)
    pairs = load_verification_sets(context.input_dir("data"))[0]
    reference = load_array(context.input_dir("evaluate") / reference_embeddings_name(pairs.name), mmap=False)
    student = load_model(context.input_dir("distill"), "student")  # for localising a failing backend's first bad layer
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
