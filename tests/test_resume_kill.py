"""Nothing lost: a killed or stopped run resumes to the same weights, signals checkpoint first, work is never stale.

The end-to-end test kills a real `python -m pipeline` distill run with SIGKILL mid-epoch, resumes it, stops it
again with SIGTERM, resumes once more, and compares every tensor with an uninterrupted run (bit-identical on
CPU with the same seed). The smaller tests check the pieces in-process: the signal handlers, the trainer's
stop on a signal, the runner stopping between stages, and the runner discarding work made under another config.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.config import MarginConfig, OptimConfig, RunConfig
from pipeline.distill.checkpoint import load_checkpoint
from pipeline.distill.trainer import TrainingInterrupted, train_recognition_model
from pipeline.interrupts import StopRequested, handle_stop_signals, stop_requested
from pipeline.stages.runner import Stage, StageContext, StageRunner
from tests.conftest import REPO_ROOT
from tests.test_trainer import SPEC, small_student, tiny_faces, train

# A tiny-profile variant: 32x32 faces, so a distill step takes well under a second, and three epochs of nine
# steps with a checkpoint every two steps, so there is time to kill it between checkpoints, mid-epoch.
IDENTITIES, PER_IDENTITY, BATCH, EPOCHS = 12, 6, 8, 3
STEPS_PER_EPOCH = IDENTITIES * PER_IDENTITY // BATCH
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
PROFILE = f"""
run_name: resume
seed: 0
data:
  image_size: 32
  synthetic: {{num_train_identities: {IDENTITIES}, images_per_identity: {PER_IDENTITY}, num_verification_identities: 4,
              images_per_verification_identity: 2, num_pairs: 8}}
teacher:
  model_args: {{depth: 1, input_size: 32, embedding_dim: 64}}
  optim: {{epochs: 1, batch_size: 16, max_steps: 2}}
student:
  model_args: {{width: 0.25, input_size: 32, embedding_dim: 64}}
distill:
  optim: {{epochs: {EPOCHS}, batch_size: {BATCH}, lr: 0.002, warmup_epochs: 0.5, checkpoint_every_steps: 2}}
"""


# One intra-op thread in every process: on a shared 2-core machine two OpenMP threads per process made steps 10x
# slower; the reference and the interrupted runs use the same setting, so the comparison stays bit-exact.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def launch(runs_dir: Path, profile: Path, log: Path) -> subprocess.Popen:
    """Start a run; stderr goes to `log` (a pipe nobody reads would fill with progress bars and block the run)."""
    with open(log, "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--profile", str(profile), "--runs-dir", str(runs_dir), "--until", "distill"],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, **ONE_THREAD},
        )


@pytest.fixture
def start_run():
    """`launch`, and at teardown kill whatever this test started and left running (or SIGSTOPped) after a failure."""
    started: list[subprocess.Popen] = []

    def start(runs_dir: Path, profile: Path, log: Path) -> subprocess.Popen:
        started.append(launch(runs_dir, profile, log))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def finish(process: subprocess.Popen, log: Path, timeout_s: float = 300) -> tuple[int, str]:
    return process.wait(timeout=timeout_s), log.read_text()


def checkpoint_step(runs_dir: Path) -> int | None:
    """The step of the last complete checkpoint, read from the file a resume reads (not the state.json copy)."""
    path = runs_dir / "resume" / "work" / "distill" / "student_checkpoint" / "state.safetensors"
    try:
        with safe_open(str(path), framework="pt") as stored:
            return int(stored.metadata()["step"])
    except Exception:  # not written yet
        return None


def wait_for_checkpoint(process: subprocess.Popen, log: Path, runs_dir: Path, after: int, timeout_s: float = 240) -> int:
    """Poll until a mid-epoch checkpoint newer than `after` (and well before the end) exists, then SIGSTOP the process.

    Freezing it first makes the step on disk the one a resume will read; a checkpoint that turns out to be at an
    epoch end lets the process continue to the next one.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run ended early: {log.read_text()[-3000:]}"
        step = checkpoint_step(runs_dir)
        if step is not None and after < step <= TOTAL_STEPS - 6 and step % STEPS_PER_EPOCH:
            process.send_signal(signal.SIGSTOP)
            step = checkpoint_step(runs_dir)
            if step % STEPS_PER_EPOCH and step <= TOTAL_STEPS - 4:
                return step
            process.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"no mid-epoch checkpoint after step {after} within {timeout_s} s")


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.slow  # four real pipeline processes (each imports torch and timm): about a minute on 2 busy cores
def test_distill_killed_mid_epoch_then_stopped_resumes_to_the_same_weights(tmp_path: Path, start_run) -> None:
    profile = tmp_path / "resume.yaml"
    profile.write_text(PROFILE)
    straight_runs, broken_runs = tmp_path / "straight", tmp_path / "broken"
    straight = start_run(straight_runs, profile, tmp_path / "straight.log")  # the uninterrupted reference, run alongside

    first = start_run(broken_runs, profile, tmp_path / "first.log")
    killed_at = wait_for_checkpoint(first, tmp_path / "first.log", broken_runs, after=0)
    first.send_signal(signal.SIGKILL)  # no handler, no cleanup: as a power cut or the OOM killer
    assert first.wait(timeout=60) == -signal.SIGKILL

    second = start_run(broken_runs, profile, tmp_path / "second.log")
    stopped_after = wait_for_checkpoint(second, tmp_path / "second.log", broken_runs, after=killed_at)
    second.send_signal(signal.SIGTERM)
    second.send_signal(signal.SIGCONT)
    status, second_err = finish(second, tmp_path / "second.log")
    assert f"student: resumed from checkpoint at step {killed_at}/{TOTAL_STEPS}" in second_err
    assert status == 128 + signal.SIGTERM, second_err[-3000:]
    last_line = second_err.strip().splitlines()[-1]
    match = re.fullmatch(r"interrupted by SIGTERM: student: stopped at step (\d+); checkpoint in (.+); rerun the same command to resume", last_line)
    assert match, last_line
    stopped_at = int(match.group(1))
    assert stopped_after <= stopped_at < TOTAL_STEPS and checkpoint_step(broken_runs) == stopped_at  # checkpointed on the way out

    status, third_err = finish(start_run(broken_runs, profile, tmp_path / "third.log"), tmp_path / "third.log")
    assert status == 0, third_err[-3000:]
    status, straight_err = finish(straight, tmp_path / "straight.log")
    assert status == 0, straight_err[-3000:]

    broken_dir, straight_dir = broken_runs / "resume" / "distill", straight_runs / "resume" / "distill"
    summary = json.loads((broken_dir / "manifest.json").read_text())["summary"]["student"]
    assert summary["resumed_from_step"] == stopped_at and summary["steps"] == TOTAL_STEPS
    for name in ("student.safetensors", "student_head.safetensors"):
        reference, resumed = tensors(straight_dir / name), tensors(broken_dir / name)
        assert reference.keys() == resumed.keys()
        for key, tensor in reference.items():
            assert torch.equal(tensor, resumed[key]), f"{name}: {key} differs after kill + stop + resume"
    assert (broken_dir / "student_history.json").read_text() == (straight_dir / "student_history.json").read_text()


# --- the pieces, in-process ----------------------------------------------------------------------------------------


def test_first_signal_sets_the_request_second_interrupts_and_handlers_are_restored() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with handle_stop_signals() as request:
        assert not stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the Python-level handler runs at the next bytecode boundary
        assert request.signal == signal.SIGTERM and request.signal_name == "SIGTERM" and stop_requested(7)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert not stop_requested() and request.signal == signal.SIGTERM  # kept for reporting


def test_a_signal_during_training_writes_a_checkpoint_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT arrives during step 5 (sent by the data loader): the step finishes, a checkpoint is written, training stops."""
    import pipeline.distill.trainer as trainer

    real_images_to_tensor = trainer.images_to_tensor
    calls = []

    def images_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_images_to_tensor(*args, **kwargs)

    monkeypatch.setattr(trainer, "images_to_tensor", images_then_signal)
    with handle_stop_signals(), pytest.raises(TrainingInterrupted, match="stopped at step 5"):
        torch.manual_seed(0)
        optim = OptimConfig(epochs=6, batch_size=8, lr=0.01, warmup_epochs=0.5, checkpoint_every_steps=3)
        train_recognition_model(small_student(), tiny_faces(), SPEC, MarginConfig(scale=16.0, m2=0.2), optim, seed=0,
                                checkpoint_dir=tmp_path / "ckpt", should_stop=stop_requested)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ckpt")["global_step"] == 5  # off the every-3 cadence: written by the stop
    reference, _, _ = train(tmp_path / "straight", max_steps=None)
    resumed, _, result = train(tmp_path / "ckpt", max_steps=None)
    assert result.resumed_from_step == 5
    assert all(torch.equal(t, resumed.state_dict()[k]) for k, t in reference.state_dict().items())


def _stages(calls: list[str]) -> list[Stage]:
    def first(context: StageContext) -> None:
        calls.append("first")
        previous = sorted(p.name for p in context.work_dir.iterdir() if p.name != ".fingerprint")
        (context.work_dir / "progress.txt").write_text(str(context.config.seed))
        (context.out_dir / "value.txt").write_text(f"{context.config.seed} resumed={previous}")
        if "stop" in calls:
            os.kill(os.getpid(), signal.SIGTERM)

    def second(context: StageContext) -> None:
        calls.append("second")
        (context.out_dir / "double.txt").write_text((context.input_dir("first") / "value.txt").read_text() * 2)

    return [Stage("first", first, (), ("seed",)), Stage("second", second, ("first",), ())]


def test_a_stop_signal_stops_the_runner_before_the_next_stage(tmp_path: Path) -> None:
    calls = ["stop"]
    with handle_stop_signals(), pytest.raises(StopRequested, match="stopped before stage 'second' on SIGTERM"):
        StageRunner(RunConfig(), _stages(calls), tmp_path).run()
    assert calls == ["stop", "first"] and (tmp_path / "default" / "first" / "manifest.json").is_file()
    assert not (tmp_path / "default" / "second").exists()


def test_resumable_work_is_kept_for_the_same_fingerprint_and_discarded_otherwise(tmp_path: Path) -> None:
    work = tmp_path / "default" / "work" / "first"
    StageRunner(RunConfig(seed=1), _stages([]), tmp_path).run()
    (tmp_path / "default" / "first" / "value.txt").write_text("tampered")  # the stage reruns, same fingerprint
    StageRunner(RunConfig(seed=1), _stages([]), tmp_path).run()
    assert (tmp_path / "default" / "first" / "value.txt").read_text() == "1 resumed=['progress.txt']"  # work kept
    StageRunner(RunConfig(seed=2), _stages([]), tmp_path).run()  # another config: the old progress must not be resumed
    assert (tmp_path / "default" / "first" / "value.txt").read_text() == "2 resumed=[]"
    assert (work / "progress.txt").read_text() == "2"
    StageRunner(RunConfig(seed=2), _stages([]), tmp_path).run(force=True)  # forced: from scratch
    assert (tmp_path / "default" / "first" / "value.txt").read_text() == "2 resumed=[]"


def test_a_crash_between_the_two_renames_of_a_stage_swap_loses_nothing(tmp_path: Path) -> None:
    StageRunner(RunConfig(seed=1), _stages([]), tmp_path).run()
    run_dir = tmp_path / "default"
    (run_dir / "first").rename(run_dir / ".first.old")  # what `_replace` leaves if killed between its renames
    calls: list[str] = []
    outcomes = StageRunner(RunConfig(seed=1), _stages(calls), tmp_path).run()
    assert [o.status for o in outcomes] == ["cached", "cached"] and calls == []
    assert not (run_dir / ".first.old").exists()


def test_every_stage_starts_from_the_run_seed_whatever_ran_before(tmp_path: Path) -> None:
    """A stage run in a fresh process (after a kill) must draw what it would have drawn after earlier stages."""
    draws: list[float] = []

    def draw(context: StageContext) -> None:
        draws.append(float(torch.rand(1)))
        (context.out_dir / "draw.txt").write_text(str(draws[-1]))

    torch.manual_seed(123)
    StageRunner(RunConfig(seed=5), [Stage("draw", draw, (), ("seed",))], tmp_path / "a").run()
    torch.rand(1000)  # another stage consumed random numbers first
    StageRunner(RunConfig(seed=5), [Stage("draw", draw, (), ("seed",))], tmp_path / "b").run()
    StageRunner(RunConfig(seed=6), [Stage("draw", draw, (), ("seed",))], tmp_path / "c").run()
    assert draws[0] == draws[1] != draws[2]


def test_the_resume_profile_validates() -> None:
    """The profile above is valid under the current config schema (a typo would make the slow test meaningless)."""
    import yaml

    config = RunConfig.model_validate(yaml.safe_load(PROFILE))
    assert config.distill.optim.checkpoint_every_steps == 2 and config.student.model_args["input_size"] == 32
