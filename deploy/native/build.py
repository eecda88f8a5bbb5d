"""Build libncnn from ncnn's source archive and the project's native tools against it, once per target, cached.

ncnn's wheels carry no C++ library and no tools, and its PyPI source archive is the only copy of ncnn's sources
this project may fetch (../shared/ENV.md). Its setup.py stamps the version with the day it runs, so pip rejects
the archive as inconsistent unless it runs under `faketime` at the release date.

Targets: `host` (this machine, x86-64), `aarch64-linux` (Debian's cross g++, run here under qemu-aarch64) and
`android-arm64` (the user's Android NDK, `ANDROID_NDK=/path`; cannot run here). Each libncnn build lives in
build/ncnn/<version>-<target>-<key>/, keyed by ncnn version, CMake flags and toolchain, and each tool build in
build/native/<target>-<key>/, keyed by the libncnn key and the tools' sources; an interrupted build resumes in
its work folder, and a finished one is only published (renamed into place) when it is complete.

    python -m deploy.native.build --target host aarch64-linux
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

NCNN_VERSION = "1.0.20260526"
NCNN_RELEASE_TIME = "2026-05-26 12:00:00"  # what setup.py must believe today is
SOURCE_DIR = Path(__file__).resolve().parent
REPO_ROOT = SOURCE_DIR.parents[1]
BUILD_DIR_ENV = "FACE_NATIVE_BUILD_DIR"
TOOLS = ("face_embed", "face_bench")
_TOOL_SOURCES = ("CMakeLists.txt", "npy.h", "npy.cpp", "net_setup.h", "net_setup.cpp", "face_embed.cpp", "face_bench.cpp")

# Every target: the library alone (ncnn's own tools are not in the archive), CPU only.
_COMMON_NCNN_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DNCNN_VULKAN=OFF", "-DNCNN_SHARED_LIB=OFF", "-DNCNN_BUILD_TOOLS=OFF",
    "-DNCNN_BUILD_EXAMPLES=OFF", "-DNCNN_BUILD_BENCHMARK=OFF", "-DNCNN_BUILD_TESTS=OFF", "-DNCNN_PYTHON=OFF",
)


class NativeBuildError(PipelineError):
    """A native build cannot start (a missing compiler, emulator or NDK) or failed (the log says where)."""


@dataclass(frozen=True)
class Target:
    """Where the tools will run, and how this machine builds (and, if it can, runs) them."""

    name: str
    description: str
    cmake_args: tuple[str, ...]  # toolchain selection, the same for libncnn and the tools
    ncnn_flags: tuple[str, ...]  # kernel variants: fewer variants build faster, but those kernels are then absent
    static: bool
    commands: tuple[str, ...]  # programs the build needs (DEBIAN_PACKAGES names the package of each)


# Debian packages by command, for the one-line "install it" errors (`make native-deps` installs them).
DEBIAN_PACKAGES = {"cmake": "cmake", "g++": "g++", "make": "make", "faketime": "faketime",
                   "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "qemu-aarch64": "qemu-user"}


def available_targets(android_ndk: str | None = None) -> dict[str, Target]:
    """Every target this project builds for; android-arm64 only where an NDK is given (ANDROID_NDK)."""
    ndk = android_ndk if android_ndk is not None else os.environ.get("ANDROID_NDK")
    targets = {
        # AVX-512/VNNI/XOP kernel variants left out: half of the x86 build time, and the parity path does not need them.
        "host": Target("host", "this machine (x86-64)", (), ("-DNCNN_AVX512=OFF", "-DNCNN_AVXVNNI=OFF", "-DNCNN_XOP=OFF"),
                       False, ("cmake", "g++", "make", "faketime")),
        # ARMv8.2 fp16 arithmetic and dot-product kernels kept (what phones run); SVE variants left out (no phone
        # that ships ncnn apps takes them, and they double the ARM build).
        "aarch64-linux": Target(
            "aarch64-linux", "64-bit ARM Linux (Debian cross g++; qemu-aarch64 here)",
            (f"-DCMAKE_TOOLCHAIN_FILE={SOURCE_DIR / 'toolchains' / 'aarch64-linux-gnu.cmake'}",),
            ("-DNCNN_ARM86SVE=OFF", "-DNCNN_ARM86SVE2=OFF"), True,
            ("cmake", "make", "faketime", "aarch64-linux-gnu-g++", "qemu-aarch64")),
    }
    if ndk:
        toolchain = Path(ndk) / "build" / "cmake" / "android.toolchain.cmake"
        targets["android-arm64"] = Target(
            "android-arm64", "Android arm64-v8a (the user's NDK)",
            (f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", "-DANDROID_ABI=arm64-v8a", "-DANDROID_PLATFORM=android-24"),
            ("-DNCNN_ARM86SVE=OFF", "-DNCNN_ARM86SVE2=OFF"), True, ("cmake", "make", "faketime"))
    return targets


def get_target(name: str) -> Target:
    targets = available_targets()
    if name not in targets:
        hint = " (set ANDROID_NDK=/path/to/ndk)" if name == "android-arm64" else ""
        raise NativeBuildError(f"unknown native target {name!r}{hint}; known: {', '.join(targets)}")
    return targets[name]


def build_root() -> Path:
    """build/ in the repository, or $FACE_NATIVE_BUILD_DIR."""
    return Path(os.environ.get(BUILD_DIR_ENV, REPO_ROOT / "build")).resolve()


def missing_commands(target: Target) -> list[str]:
    return [command for command in target.commands if shutil.which(command) is None]


def check_commands(target: Target) -> None:
    """A one-line error naming every missing program and its Debian package."""
    missing = missing_commands(target)
    if target.name == "android-arm64":
        toolchain = next(arg for arg in target.cmake_args if arg.startswith("-DCMAKE_TOOLCHAIN_FILE="))
        if not Path(toolchain.partition("=")[2]).is_file():
            raise NativeBuildError(f"ANDROID_NDK: {toolchain.partition('=')[2]} not found (point ANDROID_NDK at an NDK r23+)")
    if missing:
        packages = " ".join(DEBIAN_PACKAGES.get(command, command) for command in missing)
        raise NativeBuildError(f"the {target.name} build needs {', '.join(missing)}: run `make native-deps` "
                               f"(apt-get install {packages})")


def ncnn_source(root: Path | None = None) -> Path:
    """ncnn's source tree from its PyPI archive, downloaded once (under faketime) and unpacked into build/."""
    root = root or build_root()
    tree = root / "ncnn-src" / f"ncnn-{NCNN_VERSION}"
    if (tree / "CMakeLists.txt").is_file() and (tree / ".unpacked").is_file():
        return tree
    archive_dir = root / "ncnn-src"
    archive = archive_dir / f"ncnn-{NCNN_VERSION}.tar.gz"
    if not archive.is_file():
        if shutil.which("faketime") is None:
            raise NativeBuildError("fetching ncnn's source archive needs faketime: run `make native-deps` (apt-get install faketime)")
        archive_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading ncnn %s source archive from the package registry", NCNN_VERSION)
        command = ["faketime", NCNN_RELEASE_TIME, sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary", ":all:", f"ncnn=={NCNN_VERSION}", "-d", str(archive_dir)]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0 or not archive.is_file():
            tail = " | ".join(completed.stderr.strip().splitlines()[-2:])
            raise NativeBuildError(f"pip could not download ncnn=={NCNN_VERSION}'s source archive: {tail}")
    staging = archive_dir / f".unpack-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as bundle:
        bundle.extractall(staging, filter="data")
    shutil.rmtree(tree, ignore_errors=True)
    (staging / tree.name).rename(tree)
    shutil.rmtree(staging, ignore_errors=True)
    (tree / ".unpacked").write_text(str(archive.stat().st_size))
    return tree


def _key(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def ncnn_key(target: Target) -> str:
    return _key({"version": NCNN_VERSION, "cmake": target.cmake_args, "flags": _COMMON_NCNN_FLAGS + target.ncnn_flags,
                 "static": target.static})


def tools_key(target: Target) -> str:
    sources = {name: hashlib.sha256((SOURCE_DIR / name).read_bytes()).hexdigest() for name in _TOOL_SOURCES}
    sources["toolchains"] = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((SOURCE_DIR / "toolchains").glob("*"))]
    return _key({"ncnn": ncnn_key(target), "sources": sources})


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def _run_logged(command: list[str], log_path: Path, description: str, progress: bool = True) -> None:
    """Run a build command with its output in `log_path`, CMake's [ NN%] lines driving a progress bar."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log_file, tqdm(total=100, desc=description, unit="%", disable=not progress, leave=False) as bar:
        log_file.write(f"$ {' '.join(command)}\n")
        log_file.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            if match := _PERCENT.match(line):
                bar.update(max(0, int(match.group(1)) - bar.n))
        if process.wait() != 0:
            log_file.flush()
            errors = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if "error" in line.lower()]
            raise NativeBuildError(f"{description} failed (exit {process.returncode}); see {log_path}: "
                                   f"{errors[-1] if errors else 'no error line'}"[:400])


def build_ncnn(target: Target, root: Path | None = None, progress: bool = True) -> Path:
    """Install prefix of libncnn for `target`, building it if this version + flags + toolchain was never built."""
    root = root or build_root()
    key = ncnn_key(target)
    prefix = root / "ncnn" / f"{NCNN_VERSION}-{target.name}-{key}"
    if (prefix / ".complete").is_file():
        return prefix
    check_commands(target)
    source = ncnn_source(root)
    work = root / "ncnn" / f"work-{target.name}-{key}"  # kept on failure: make resumes where it stopped
    staging = prefix.with_name(prefix.name + ".installing")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    log.info("building libncnn %s for %s (%s); log: %s", NCNN_VERSION, target.name, target.description, work / "build.log")
    configure = ["cmake", "-S", str(source), "-B", str(work), f"-DCMAKE_INSTALL_PREFIX={staging}",
                 *_COMMON_NCNN_FLAGS, *target.ncnn_flags, *target.cmake_args]
    _run_logged(configure, work / "build.log", f"configure libncnn ({target.name})", progress=False)
    _run_logged(["cmake", "--build", str(work), "-j", str(os.cpu_count() or 1)], work / "build.log",
                f"build libncnn ({target.name})", progress)
    _run_logged(["cmake", "--install", str(work)], work / "build.log", f"install libncnn ({target.name})", progress=False)
    seconds = time.perf_counter() - started
    (staging / ".complete").write_text(json.dumps({"version": NCNN_VERSION, "target": target.name, "build_seconds": round(seconds, 1),
                                                   "flags": list(_COMMON_NCNN_FLAGS + target.ncnn_flags)}, indent=1))
    shutil.rmtree(prefix, ignore_errors=True)
    staging.rename(prefix)
    log.info("built libncnn for %s in %.0f s: %s", target.name, seconds, prefix)
    return prefix


@dataclass(frozen=True)
class NativeTools:
    """The built tools of one target: paths, and the facts a report cites (versions, build keys, build time)."""

    target: Target
    embed: Path
    bench: Path
    facts: dict


def build_tools(target: Target, root: Path | None = None, progress: bool = True) -> NativeTools:
    """face_embed and face_bench for `target`, built (with libncnn first if needed) unless cached."""
    root = root or build_root()
    prefix = build_ncnn(target, root, progress)
    out = root / "native" / f"{target.name}-{tools_key(target)}"
    facts_path = out / "build.json"
    if not facts_path.is_file():
        check_commands(target)
        work = out.with_name(out.name + ".work")
        staging = out.with_name(out.name + ".installing")
        shutil.rmtree(staging, ignore_errors=True)
        started = time.perf_counter()
        configure = ["cmake", "-S", str(SOURCE_DIR), "-B", str(work), f"-DCMAKE_INSTALL_PREFIX={staging}",
                     f"-Dncnn_DIR={_ncnn_cmake_dir(prefix)}", f"-DFACE_NATIVE_STATIC={'ON' if target.static else 'OFF'}",
                     "-DCMAKE_BUILD_TYPE=Release", *target.cmake_args]
        _run_logged(configure, work / "build.log", f"configure tools ({target.name})", progress=False)
        _run_logged(["cmake", "--build", str(work), "-j", str(os.cpu_count() or 1)], work / "build.log", f"build tools ({target.name})", progress)
        _run_logged(["cmake", "--install", str(work)], work / "build.log", f"install tools ({target.name})", progress=False)
        library = json.loads((prefix / ".complete").read_text())
        facts = {"target": target.name, "description": target.description, "ncnn_version": NCNN_VERSION,
                 "ncnn_flags": library["flags"], "ncnn_build_seconds": library["build_seconds"],
                 "tools_build_seconds": round(time.perf_counter() - started, 1), "static": target.static,
                 "ncnn_key": ncnn_key(target), "tools_key": tools_key(target)}
        (staging / "build.json").write_text(json.dumps(facts, indent=1))
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
        log.info("built %s for %s: %s", ", ".join(TOOLS), target.name, out / "bin")
    return NativeTools(target, out / "bin" / TOOLS[0], out / "bin" / TOOLS[1], json.loads(facts_path.read_text()))



def phone_tools(progress: bool = True) -> NativeTools:
    """The tools an Android phone runs: the NDK build where ANDROID_NDK is set, else the static aarch64 Linux build.

    A statically linked aarch64 ELF needs neither bionic nor the NDK: Android's shell runs it from /data/local/tmp as
    it is (what only a phone shows: its own CPU's kernels and timings). Built once, cached in build/."""
    targets = available_targets()
    return build_tools(targets.get("android-arm64") or targets["aarch64-linux"], progress=progress)


def _ncnn_cmake_dir(prefix: Path) -> Path:
    found = sorted(prefix.glob("lib*/cmake/ncnn"))
    if not found:
        raise NativeBuildError(f"{prefix}: no lib/cmake/ncnn in this libncnn install (rebuild: remove the folder)")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.native.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", nargs="+", default=["host"], help="host, aarch64-linux, android-arm64 (needs ANDROID_NDK)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        for name in args.target:
            started = time.perf_counter()
            tools = build_tools(get_target(name))
            print(f"{name}: {tools.embed} {tools.bench} (libncnn build {tools.facts['ncnn_build_seconds']:.0f} s, "
                  f"tools {tools.facts['tools_build_seconds']:.0f} s; this call {time.perf_counter() - started:.0f} s)")
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
