"""One writer per run folder: a lock file held with flock(2), whose body names the holder.

flock rather than a pid file alone: the kernel drops the lock when its holder dies, however it dies (kill -9,
out of memory, a reboot), so a dead run never blocks the next one and no pid has to be trusted; the JSON body is
only there so that a refused run can say who holds the folder, and so that a takeover can say whose lock it was.
The file is never deleted (unlinking a locked file lets two runs lock two different files of the same name).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


class RunLockedError(PipelineError):
    """Another run writes into this run folder; names it (pid, host, start time, command)."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started_at: str
    command: str

    @classmethod
    def this_process(cls) -> LockHolder:
        return cls(os.getpid(), socket.gethostname(), datetime.now(timezone.utc).isoformat(timespec="seconds"), _command_line())

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_at}: {self.command}"

    def exited(self) -> bool:
        """True when the holder ran on this host and its pid is gone (a child it forked may still hold the lock)."""
        return self.host == socket.gethostname() and not pid_alive(self.pid)


def _command_line() -> str:
    """This process's command as typed: `python -m pipeline run ...` rather than the path of __main__.py."""
    program, *arguments = sys.argv or [""]
    if Path(program).name == "__main__.py":
        program = f"-m {Path(program).parent.name}"
    return " ".join([Path(sys.executable).name, program, shlex.join(arguments)]).strip()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """`with RunLock(run_dir):` holds the run folder for this process or raises `RunLockedError` at once."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(_refusal(self.path.parent, holder)) from None
        except OSError as exc:  # a filesystem without flock (some network or FUSE mounts)
            log.warning("%s: cannot lock the run folder (%s); nothing keeps a second run out of it", self.path, exc.strerror)
        previous = _read_holder(fd)
        if previous is not None:
            log.warning("%s: taking over the lock of a run that no longer holds it (%s%s)", self.path.parent,
                        previous.describe(), ", exited" if previous.exited() else "")
        self._fd = fd
        self._write_holder(LockHolder.this_process())

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty file: nobody's lock, nothing to take over
        except OSError:
            pass
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None

    def _write_holder(self, holder: LockHolder) -> None:
        body = (json.dumps(asdict(holder), sort_keys=True) + "\n").encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, body, 0)
            os.fsync(self._fd)
        except OSError as exc:  # the lock holds without its body; a refused run then cannot say who holds it
            log.warning("%s: holding the lock, but could not write who holds it (%s)", self.path, exc.strerror)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> LockHolder | None:
    """The holder a lock file names, or None when it is empty (released) or unreadable."""
    try:
        raw = os.pread(fd, 1 << 16, 0)
        payload = json.loads(raw) if raw.strip() else None
        return LockHolder(int(payload["pid"]), str(payload["host"]), str(payload["started_at"]), str(payload["command"])) \
            if isinstance(payload, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _refusal(run_dir: Path, holder: LockHolder | None) -> str:
    if holder is None:  # locked a moment ago, body not yet written
        return f"{run_dir} is in use by another run (it has not yet written who it is); wait for it or stop it"
    note = " (that process has exited; a process it started still holds the lock)" if holder.exited() else ""
    return f"{run_dir} is in use by another run: {holder.describe()}{note}; wait for it to finish or stop it"

