"""Where the native tools run: this machine (directly or under qemu-user) or an Android phone over adb.

A host places input files where the tool can read them, runs the tool, and brings its outputs back, so the
code that builds a face_embed command line and reads its result is the same for every host.
"""

from __future__ import annotations

import itertools
import json
import shlex
import shutil
import subprocess
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from pipeline.config import parse_target_entry
from pipeline.errors import PipelineError


class ToolRunError(PipelineError):
    """The native tool exited non-zero, or printed no result line."""


class ToolHost(ABC):
    """Runs one native tool binary somewhere; `label` names that place in parity rows and logs."""

    label: str
    kind: str  # "native", "emulated" or "android"
    device: dict  # what the report says about the place (CPU model, ABI, emulated CPU, ...)

    @abstractmethod
    def place(self, local: Path) -> str:
        """Make `local` readable by the tool; the path the tool sees."""

    @abstractmethod
    def output_path(self, name: str) -> str:
        """Where the tool should write an output file called `name`."""

    @abstractmethod
    def output_dir(self, name: str) -> str:
        """Create a folder called `name` for the tool's outputs (the tool creates none); its path there."""

    @abstractmethod
    def fetch(self, tool_path: str, local: Path) -> None:
        """Bring an output the tool wrote back to `local`."""

    @abstractmethod
    def execute(self, arguments: list[str], timeout_s: float = 3600) -> str:
        """Run the tool with `arguments`; its stdout, or ToolRunError with the tail of its stderr."""

    def close(self) -> None:
        """Remove what the host put in place."""

    def run_json(self, arguments: list[str], timeout_s: float = 3600) -> dict:
        """Run the tool and parse the JSON line it prints last."""
        stdout = self.execute(arguments, timeout_s)
        lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
        if not lines:
            raise ToolRunError(f"{self.label}: the tool printed no result line: {stdout.strip()[-200:]!r}")
        return json.loads(lines[-1])

    def cpu_features(self) -> dict:
        """The CPU features ncnn detects where the tool runs (ncnn's own cpu_support_* queries)."""
        return self.run_json(["--cpu-info"], timeout_s=120)["cpu"]


def _failure(label: str, returncode: int, text: str) -> ToolRunError:
    tail = " | ".join(text.strip().splitlines()[-3:]) or "no output"
    return ToolRunError(f"{label}: the native tool exited with {returncode}: {tail}")


class LocalHost(ToolHost):
    """This machine: the tool runs as `prefix + [tool]` (prefix empty, or qemu-aarch64 -cpu <cpu>)."""

    def __init__(self, tool: Path, prefix: list[str], label: str, kind: str, device: dict) -> None:
        self.tool, self.prefix, self.label, self.kind, self.device = tool, prefix, label, kind, device
        self._scratch = Path(tempfile.mkdtemp(prefix="face-native-"))
        self._serial = itertools.count()  # concurrent runs on one host write to distinct names

    def place(self, local: Path) -> str:
        return str(Path(local).resolve())

    def output_path(self, name: str) -> str:
        return str(self._scratch / f"{next(self._serial)}_{name}")

    def output_dir(self, name: str) -> str:
        folder = Path(self.output_path(name))
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    def fetch(self, tool_path: str, local: Path) -> None:
        shutil.move(tool_path, local)

    def execute(self, arguments: list[str], timeout_s: float = 3600) -> str:
        command = [*self.prefix, str(self.tool), *arguments]
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ToolRunError(f"{self.label}: the native tool did not finish within {timeout_s:.0f} s") from exc
        if completed.returncode != 0:
            raise _failure(self.label, completed.returncode, completed.stderr + completed.stdout)
        return completed.stdout

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)


def qemu_host(tool: Path, cpu: str) -> LocalHost:
    """The aarch64 tool under qemu-user, emulating `cpu` (`max`: every feature qemu has, fp16 and dotprod included)."""
    return LocalHost(tool, ["qemu-aarch64", "-cpu", cpu], f"ncnn-arm64 (emulated: {cpu})", "emulated",
                     {"kind": "emulated", "name": f"qemu-aarch64 -cpu {cpu}", "cpu": cpu, "abi": "arm64"})


class AdbHost(ToolHost):
    """An Android phone: the tool and every input are pushed under `remote_dir`, outputs pulled back."""

    def __init__(self, adb, tool: Path, device: dict, remote_dir: str) -> None:
        self.adb, self.device, self.remote_dir = adb, device, remote_dir
        emulated = ", emulated" if device.get("emulated") else ""
        self.label = f"ncnn-android ({device.get('name', '?')}, {device.get('abi', '?')}, {device.get('cpu', '?')}{emulated})"
        self.kind = "android-emulated" if emulated else "android"
        self._pushed: dict[str, str] = {}
        self.adb.shell(f"mkdir -p {shlex.quote(remote_dir)}")
        self.remote_tool = self.place(tool)
        self.adb.shell(f"chmod 755 {shlex.quote(self.remote_tool)}")

    def place(self, local: Path) -> str:
        local = Path(local).resolve()
        if str(local) not in self._pushed:
            remote = f"{self.remote_dir}/{len(self._pushed)}_{local.name}"
            self.adb.run("push", str(local), remote)
            self._pushed[str(local)] = remote
        return self._pushed[str(local)]

    def output_path(self, name: str) -> str:
        return f"{self.remote_dir}/out_{name}"

    def output_dir(self, name: str) -> str:
        remote = self.output_path(name)
        self.adb.shell(f"mkdir -p {shlex.quote(remote)}")
        return remote

    def fetch(self, tool_path: str, local: Path) -> None:
        self.adb.run("pull", tool_path, str(local))

    def execute(self, arguments: list[str], timeout_s: float = 3600) -> str:
        # adb shell's own exit status is unreliable on old devices: the tool's is echoed after its output.
        command = " ".join(shlex.quote(part) for part in [self.remote_tool, *arguments])
        output = self.adb.shell(f"cd {shlex.quote(self.remote_dir)} && {command} 2>&1; echo face_native_exit=$?")
        lines = output.strip().splitlines()
        status = lines[-1] if lines else ""
        if status != "face_native_exit=0":
            code = int(status.partition("=")[2]) if status.startswith("face_native_exit=") else -1
            raise _failure(self.label, code, "\n".join(lines[:-1]))
        return "\n".join(lines[:-1])

    def close(self) -> None:
        try:
            self.adb.shell(f"rm -rf {shlex.quote(self.remote_dir)}")
        except PipelineError:
            pass  # the phone went away: nothing left to clean here


def open_local_host(entry: str, progress: bool = True) -> tuple[LocalHost, dict]:
    """A host for a `native_parity.targets` entry, building its tools first when they are not cached; and the build facts."""
    from deploy.native.build import build_tools, get_target

    target_name, cpu = parse_target_entry(entry)
    tools = build_tools(get_target(target_name), progress=progress)
    if cpu is None:
        host = LocalHost(tools.embed, [], "ncnn-native (x86-64)", "native", {"kind": "native", "name": "this machine", "abi": "x86_64"})
    else:
        host = qemu_host(tools.embed, cpu)
    return host, tools.facts
