"""One run at a time per run folder: a second one is refused naming the first; a dead run's lock is taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from pipeline.config import CONFIG_DIR, RunConfig
from pipeline.run_lock import LOCK_FILE, RunLock, RunLockedError
from pipeline.stages.runner import Stage, StageContext, StageRunner, staging_dir
from tests.conftest import REPO_ROOT


def _stages(seen: list[Path]) -> list[Stage]:
    def first(context: StageContext) -> None:
        seen.append(context.out_dir)
        (context.out_dir / "value.txt").write_text(str(context.config.seed))

    return [Stage("first", first, (), ("seed",))]


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(finished.stdout)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """Another process holding runs/tiny (what a first `python -m pipeline run --profile tiny` does while it runs)."""
    run_dir = tmp_path / "runs" / "tiny"
    script = textwrap.dedent(f"""
        import sys, time
        from pipeline.run_lock import RunLock
        with RunLock({str(run_dir)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", script, "--profile", "tiny"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process, run_dir
    finally:
        process.kill()
        process.wait()


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(holder: tuple[subprocess.Popen, Path]) -> None:
    process, run_dir = holder
    calls: list[Path] = []
    with pytest.raises(RunLockedError) as refused:
        StageRunner(RunConfig(run_name="tiny"), _stages(calls), run_dir.parent).run()
    message = str(refused.value)
    assert "\n" not in message and calls == []
    assert message.startswith(f"{run_dir} is in use by another run: pid {process.pid} on {socket.gethostname()}, started 20")
    assert message.endswith(f"{Path(sys.executable).name} -c --profile tiny; wait for it to finish or stop it")
    assert not any(run_dir.glob(".*.staging*"))  # the refused run wrote nothing


def test_the_cli_refuses_a_second_run_in_one_line_with_exit_status_2(holder: tuple[subprocess.Popen, Path],
                                                                     capsys: pytest.CaptureFixture) -> None:
    process, run_dir = holder
    status = main(["run", "--profile", str(CONFIG_DIR / "tiny.yaml"), "--runs-dir", str(run_dir.parent)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2
    assert lines[-1].startswith(f"error: {run_dir} is in use by another run: pid {process.pid} on ")
    assert not (run_dir / "data").exists()


def test_the_lock_is_released_when_its_holder_dies(holder: tuple[subprocess.Popen, Path]) -> None:
    process, run_dir = holder
    process.kill()
    process.wait()  # killed: no code of it ran to release the lock, the kernel did
    calls: list[Path] = []
    assert [o.status for o in StageRunner(RunConfig(run_name="tiny"), _stages(calls), run_dir.parent).run()] == ["ran"]


def test_a_lock_left_by_a_dead_process_is_taken_over_and_its_staging_folders_removed(tmp_path: Path,
                                                                                      caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "default"
    run_dir.mkdir()
    dead = _dead_pid()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started_at": "2024-01-01T00:00:00+00:00",
                                                 "command": "python -m pipeline run --profile default"}))
    for leftover in (staging_dir(run_dir, "first", dead), run_dir / ".first.staging"):  # this version's and an older one's
        leftover.mkdir()
        (leftover / "half_written.npy").write_bytes(b"\0" * 10)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        staging_dir(run_dir, "second", alive.pid).mkdir()  # not this run's to delete
        with caplog.at_level(logging.INFO):
            outcomes = StageRunner(RunConfig(), _stages([]), tmp_path).run()
        assert [o.status for o in outcomes] == ["ran"]
        taken_over = [r.getMessage() for r in caplog.records if "taking over the lock" in r.getMessage()]
        assert taken_over == [f"{run_dir}: taking over the lock of a run that no longer holds it (pid {dead} on "
                              f"{socket.gethostname()}, started 2024-01-01T00:00:00+00:00: python -m pipeline run --profile default, exited)"]
        assert sorted(p.name for p in run_dir.glob(".*.staging*")) == [f".second.staging.{alive.pid}"]
    finally:
        alive.kill()
        alive.wait()
    assert (run_dir / LOCK_FILE).read_text() == ""  # released: names nobody


def test_each_process_stages_into_its_own_folder(tmp_path: Path) -> None:
    seen: list[Path] = []
    StageRunner(RunConfig(), _stages(seen), tmp_path).run()
    assert seen == [tmp_path / "default" / f".first.staging.{os.getpid()}"]
    other = subprocess.run([sys.executable, "-c", "import os; from pathlib import Path; from pipeline.stages.runner import staging_dir; "
                            "print(os.getpid(), staging_dir(Path('r'), 'first'))"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    pid, folder = other.stdout.split()
    assert folder == f"r/.first.staging.{pid}" and int(pid) != os.getpid()


def test_a_run_inside_a_run_on_the_same_folder_is_refused_and_the_lock_freed_after_a_failure(tmp_path: Path) -> None:
    """flock is per open file, so even this process cannot open a second writer on the folder."""
    def nested(context: StageContext) -> None:
        StageRunner(RunConfig(), _stages([]), tmp_path).run()

    with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} on "):
        StageRunner(RunConfig(), [Stage("nested", nested)], tmp_path).run()
    with RunLock(tmp_path / "default"):  # the failed run released it
        pass
