"""The stage runner's contract: cache by fingerprint, rerun on change, keep earlier results when a stage fails."""

from __future__ import annotations

import json

import pytest

from pipeline.config import RunConfig
from pipeline.errors import PipelineError
from pipeline.stages.runner import Stage, StageContext, StageRunner


def make_stages(calls: list[str], fail_in: str | None = None) -> list[Stage]:
    def first(context: StageContext) -> None:
        calls.append("first")
        (context.out_dir / "value.txt").write_text(str(context.config.seed))

    def second(context: StageContext) -> None:
        calls.append("second")
        if fail_in == "second":
            (context.out_dir / "partial.txt").write_text("half")
            raise RuntimeError("boom")
        value = (context.input_dir("first") / "value.txt").read_text()
        (context.out_dir / "double.txt").write_text(str(2 * int(value)))

    return [Stage("first", first, (), ("seed",)), Stage("second", second, ("first",), ())]


def test_second_run_is_cached(tmp_path):
    calls: list[str] = []
    runner = StageRunner(RunConfig(seed=3), make_stages(calls), tmp_path)
    assert [o.status for o in runner.run()] == ["ran", "ran"]
    assert [o.status for o in runner.run()] == ["cached", "cached"]
    assert calls == ["first", "second"]
    manifest = json.loads((tmp_path / "default" / "second" / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"double.txt"} and manifest["inputs"]["first"]["value.txt"]
    assert manifest["wall_time_s"] >= 0 and "torch" in manifest["versions"]


def test_config_change_reruns_the_stage_and_its_dependants(tmp_path):
    calls: list[str] = []
    StageRunner(RunConfig(seed=3), make_stages(calls), tmp_path).run()
    outcomes = StageRunner(RunConfig(seed=4), make_stages(calls), tmp_path).run()
    assert [o.status for o in outcomes] == ["ran", "ran"]
    assert (tmp_path / "default" / "second" / "double.txt").read_text() == "8"


def test_tampered_output_is_not_trusted(tmp_path):
    calls: list[str] = []
    runner = StageRunner(RunConfig(), make_stages(calls), tmp_path)
    runner.run()
    (tmp_path / "default" / "first" / "value.txt").write_text("999")
    assert [o.status for o in runner.run()] == ["ran", "cached"]  # first reran and reproduced the same output


def test_force_and_from_override_the_cache(tmp_path):
    calls: list[str] = []
    runner = StageRunner(RunConfig(), make_stages(calls), tmp_path)
    runner.run()
    assert [o.status for o in runner.run(from_stage="second")] == ["cached", "ran"]
    assert [o.status for o in runner.run(force=True)] == ["ran", "ran"]
    with pytest.raises(PipelineError, match="unknown stage 'third'"):
        runner.run(from_stage="third")


def test_failing_stage_keeps_earlier_results_and_its_previous_outputs(tmp_path):
    calls: list[str] = []
    StageRunner(RunConfig(seed=1), make_stages(calls), tmp_path).run()
    with pytest.raises(RuntimeError, match="boom"):
        StageRunner(RunConfig(seed=2), make_stages(calls, fail_in="second"), tmp_path).run()
    run_dir = tmp_path / "default"
    assert (run_dir / "first" / "value.txt").read_text() == "2"  # the stage that succeeded is kept
    assert (run_dir / "second" / "double.txt").read_text() == "2"  # the failed stage's old results are intact
    assert not (run_dir / "second" / "partial.txt").exists()


def test_missing_upstream_results_are_named(tmp_path):
    stages = make_stages([])
    with pytest.raises(PipelineError, match="needs 'first'"):
        StageRunner(RunConfig(), [stages[1]], tmp_path).run()
