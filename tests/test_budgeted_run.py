"""app.budgeted_run: a wall-clock budget becomes a fixed step count measured on this machine, then a run."""

from __future__ import annotations

import json

import pytest

from app.budgeted_run import main, steady_images_per_s, steps_for_budget
from pipeline.errors import PipelineError
from pipeline.run_layout import RunLayout
from pipeline.stages.fingerprint import read_manifest


def test_steps_fill_the_budget_at_the_measured_rate_in_whole_curve_intervals():
    assert steps_for_budget(1000.0, 60.0, 100, None, safety=1.0) == 600
    assert steps_for_budget(1000.0, 60.0, 100, 250, safety=0.85) == 500  # 510 -> whole intervals of 250
    with pytest.raises(PipelineError, match="less than one step"):
        steps_for_budget(10.0, 1.0, 64, None)


def test_the_rate_comes_from_the_median_step_when_the_probe_recorded_it():
    assert steady_images_per_s({"median_step_s": 0.5, "images_per_s": 1.0}, 64) == 128.0
    assert steady_images_per_s({"images_per_s": 42.0}, 64) == 42.0
    with pytest.raises(PipelineError, match="no training throughput"):
        steady_images_per_s({"images_per_s": 0.0}, 64)


@pytest.mark.parametrize("argv", [["--profile", "tiny", "--minutes", "0"], ["--profile", "no_such_profile", "--minutes", "1"]])
def test_bad_input_exits_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error


@pytest.mark.slow
def test_probe_then_a_run_of_the_steps_that_fit(tmp_path):
    """The tiny profile: a probe in its own run folder, then the real run with the step count written beside it."""
    assert main(["--profile", "tiny", "--minutes", "0.5", "--probe-steps", "3", "--runs-dir", str(tmp_path), "--until", "distill"]) == 0
    budget = json.loads(RunLayout(tmp_path / "tiny").budget_file.read_text())
    probe = read_manifest(tmp_path / "tiny_probe" / "distill")["summary"]["student"]
    assert probe["steps"] == 3 and probe["median_step_s"] > 0
    run = read_manifest(tmp_path / "tiny" / "distill")
    assert run["config"]["distill"]["optim"]["max_steps"] == budget["max_steps"] >= 1
    assert 1 <= run["summary"]["student"]["steps"] <= budget["max_steps"]  # the profile's epochs may end it sooner
