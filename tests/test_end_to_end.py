"""The whole pipeline on the tiny profile: every stage runs, artifacts exist, the gates hold, reruns are cached.

And the gate is not a rubber stamp: an ONNX runner fed with the wrong normalisation must fail it.
"""

from __future__ import annotations

import dataclasses

import onnx
import pytest

from app.stages.evaluate_stage import reference_embeddings_name
from deploy.parity_run import parity_for_exports
from pipeline.data.store import load_array, load_verification_sets
from pipeline.preprocess import PreprocessSpec
from pipeline.run_layout import failed_parity
from tests.conftest import read_json

pytestmark = pytest.mark.slow


def test_every_stage_ran_and_wrote_a_manifest(tiny_run):
    run_dir = tiny_run["run_dir"]
    assert [o.name for o in tiny_run["outcomes"]] == ["data", "teacher", "baseline", "distill", "evaluate", "export", "parity", "native_parity", "benchmark", "pareto", "report"]
    for outcome in tiny_run["outcomes"]:
        manifest = read_json(run_dir / outcome.name / "manifest.json")
        assert manifest["outputs"], outcome.name
        assert manifest["wall_time_s"] >= 0
    report = (run_dir / "report" / "report.md").read_text()
    assert "Parity against PyTorch" in report and "Latency" in report
    html = (run_dir / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2  # ROC and latency charts embedded


def test_accuracies_reported_for_teacher_and_both_students(tiny_run):
    metrics = read_json(tiny_run["run_dir"] / "evaluate" / "metrics.json")
    per_model = metrics["synthetic-verify"]
    assert set(per_model) == {"teacher", "student_nokd", "student"}
    for result in per_model.values():
        assert 0.0 <= result["accuracy"] <= 1.0 and result["num_pairs"] == 40


def test_onnx_export_is_simplified_with_dynamic_batch_and_manifest(tiny_run):
    export_dir = tiny_run["run_dir"] / "export"
    model = onnx.load(str(export_dir / "student_fp32.onnx"))
    assert model.opset_import[0].version >= 17
    graph_input = model.graph.input[0]
    assert graph_input.name == "input" and model.graph.output[0].name == "embedding"
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(node.op_type == "BatchNormalization" for node in model.graph.node)  # folded by onnxsim
    manifest = read_json(export_dir / "model_manifest.json")
    assert manifest["preprocess"]["mean"] == [127.5, 127.5, 127.5] and manifest["preprocess"]["color_order"] == "RGB"


def test_onnxruntime_passes_both_gates(tiny_run):
    parity = read_json(tiny_run["run_dir"] / "parity" / "parity.json")
    onnx_result = next(r for r in parity["results"] if r["backend"] == "onnx" and r["precision"] == "fp32")
    assert onnx_result["status"] == "pass", onnx_result["reason"]
    assert onnx_result["cosine_min"] >= 0.9999 and abs(onnx_result["accuracy_delta_points"]) <= 0.1
    assert not failed_parity(parity)


def _onnx_parity(tiny_run, spec):
    run_dir = tiny_run["run_dir"]
    export_dir = run_dir / "export"
    pairs = load_verification_sets(run_dir / "data")[0]
    reference = load_array(run_dir / "evaluate" / reference_embeddings_name(pairs.name), mmap=False)
    records = [r for r in read_json(export_dir / "exports.json") if (r["format"], r["precision"]) == ("onnx", "fp32")]
    return parity_for_exports(export_dir, records, spec, pairs, reference, tiny_run["config"].parity)


@pytest.mark.parametrize("broken", [
    {"mean": (0.0, 0.0, 0.0), "std": (255.0, 255.0, 255.0)},  # [0, 1] instead of [-1, 1]
    {"color_order": "BGR"},  # channels swapped
])
def test_wrong_normalisation_in_the_onnx_runner_fails_the_gate(tiny_run, broken):
    good_spec = PreprocessSpec.load(tiny_run["run_dir"] / "export" / "model_manifest.json")
    [good] = _onnx_parity(tiny_run, good_spec)
    [bad] = _onnx_parity(tiny_run, dataclasses.replace(good_spec, **broken))
    assert good.status == "pass"
    assert bad.status == "fail" and bad.worst_images
    # Which gate trips depends on the model (a barely trained tiny student flips pair decisions long before its
    # cosine moves); the reason must name it, and the broken runner must be measurably further from the reference.
    assert ("cosine" in bad.reason) or ("accuracy delta" in bad.reason) or ("decisions flipped" in bad.reason)
    assert bad.pairs_flipped > good.pairs_flipped == 0
    assert bad.cosine_min < good.cosine_min


def test_rerun_is_fully_cached(tiny_run):
    outcomes = tiny_run["runner"].run()
    assert {o.status for o in outcomes} == {"cached"}


def test_cli_prints_summary_and_exits_zero(tiny_run, capsys):
    from app.cli import main

    code = main(["run", "--profile", "tiny", "--runs-dir", str(tiny_run["runs_dir"])])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| student, distilled [pytorch/fp32] |" in printed and "Report:" in printed
    assert "onnx/fp32" in printed
