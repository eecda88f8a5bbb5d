"""`make docker-check`: docker/Dockerfile's CPU targets (`deploy`, `full`) and its Jetson target built and run for real,
without a Docker daemon or a registry (what ../shared/ENV.md measured to work here).

- The base image: Debian bookworm made by `debootstrap --variant=minbase` with python3 and pip, standing in for
  `python:3.11-slim` (the Dockerfile's BASE_IMAGE build argument; users keep theirs). Its /etc/pip.conf installs from
  /wheels only: pip in a build cannot reach the registry here, so the Python packages come as a wheelhouse made on
  the host and mounted into every RUN step. The Dockerfile itself is built unchanged.
- Images are built with buildah (`--storage-driver vfs --isolation chroot`), then run with `buildah run`:
  the deploy image times a run's exports with its own entrypoint (docker/device-benchmark.sh; the latency JSON must
  load with the project's schema), runs device parity on the same faces as the host (`app.device_parity here`; the
  rows must pass), and must hold no torch; the full image runs `python -m pipeline run --profile tiny` to the end.
- The Jetson image as far as this machine goes (`--targets jetson`): the `jetson` target built for linux/arm64
  under qemu-user emulation (binfmt_misc, Debian's qemu-user-static) on an arm64 bookworm base standing in for L4T
  (its BASE_IMAGE; no TensorRT, CUDA or JetPack torch there, so TORCH_INDEX_URL stays empty and the
  TensorRT rows say why they were skipped), then its entrypoint run, emulated, on the run's ncnn exports.
- build/docker/check.json records build times, image sizes, the latency rows and the parity rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks.latency import format_latency_table, load_latency_document
from pipeline.artifacts import write_json_atomic
from pipeline.errors import PipelineError
from pipeline.run_layout import DOCKER_DEPLOY_DEVICE, EXPORTS_FILE, LATENCY_FILE, MODEL_MANIFEST, RunLayout, read_export_records

log = logging.getLogger("app.docker_check")
REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
BASE_IMAGE = "localhost/face-distill-base:bookworm"
ARM_BASE_IMAGE = "localhost/face-distill-base:bookworm-arm64"
IMAGES = {"deploy": "localhost/face-distill:cpu-deploy", "full": "localhost/face-distill:cpu", "jetson": "localhost/face-distill:jetson-standin"}
ARM_WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PIP_CONF = "[global]\nno-index = true\nfind-links = /wheels\nbreak-system-packages = true\nno-cache-dir = true\n"
NEEDED = {"buildah": "buildah", "debootstrap": "debootstrap", "qemu-aarch64-static": "qemu-user-static"}


class DockerCheckError(PipelineError):
    """A step of the image check failed: the message names the step and the tool's last words."""


def buildah(*args: str, timeout: float = 3600) -> str:
    """One buildah command on the vfs storage driver (no overlay mounts in this sandbox); its stdout, or a one-line error."""
    command = ["buildah", "--storage-driver", "vfs", *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        tail = " | ".join((completed.stderr or completed.stdout).strip().splitlines()[-4:])
        raise DockerCheckError(f"buildah {args[0]} failed (exit {completed.returncode}): {tail}")
    return completed.stdout


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "--storage-driver", "vfs", "inspect", "--type", "image", name],
                          capture_output=True, check=False).returncode == 0


def check_tools() -> None:
    missing = [package for command, package in NEEDED.items() if shutil.which(command) is None]
    if missing:
        raise DockerCheckError(f"docker-check needs {', '.join(missing)}: apt-get install {' '.join(missing)}")


def make_base(work: Path, arch: str = "amd64") -> float:
    """debootstrap a minimal bookworm with python3 + pip, pip pointed at /wheels; import it as the base image of `arch`
    (arm64: its programs run under qemu-aarch64 through binfmt_misc). Seconds."""
    started = time.perf_counter()
    rootfs = work / f"rootfs-{arch}"
    shutil.rmtree(rootfs, ignore_errors=True)
    log.info("base: debootstrap --arch=%s --variant=minbase bookworm (python3, pip) into %s", arch, rootfs)
    subprocess.run(["debootstrap", f"--arch={arch}", "--variant=minbase", "--include=python3,python3-pip,ca-certificates", "bookworm",
                    str(rootfs), DEBIAN_MIRROR], check=True, capture_output=True, timeout=3600)
    (rootfs / "etc" / "pip.conf").write_text(PIP_CONF)
    shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    archive = work / "base.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    container = buildah("from", "--arch", arch, "scratch").strip()
    try:
        buildah("add", container, str(archive), "/")
        buildah("config", "--arch", arch, "--os", "linux", "--env", "PYTHONDONTWRITEBYTECODE=1", "--cmd", "python3", container)
        buildah("commit", "--quiet", container, ARM_BASE_IMAGE if arch == "arm64" else BASE_IMAGE)
    finally:
        buildah("rm", container)
    shutil.rmtree(rootfs, ignore_errors=True)
    archive.unlink()
    return round(time.perf_counter() - started, 1)


def make_wheelhouse(wheels: Path) -> float:
    """Every wheel both targets install (requirements-deploy.txt; torch pinned as the Dockerfile pins it; the project
    with its ncnn extra, and its build backend), downloaded on the host for the image's Python 3.11. Seconds."""
    started = time.perf_counter()
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), "--only-binary", ":all:",
               "-r", str(REPO_ROOT / "docker" / "requirements-deploy.txt"), "torch==2.14.1", "torchvision==0.29.1",
               "setuptools>=68", "wheel"]
    subprocess.run(command, check=True, timeout=3600)
    project = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), f"{REPO_ROOT}[ncnn,coreml]"]
    subprocess.run(project, check=True, timeout=3600)
    for source in wheels.glob("*.tar.gz"):  # the project's own sdist: the image builds it from its COPY'd sources
        source.unlink()
    return round(time.perf_counter() - started, 1)


def make_arm_wheelhouse(wheels: Path) -> float:
    """The deploy layer's wheels for the Jetson stand-in: linux/aarch64, CPython 3.11 (bookworm's). Seconds."""
    started = time.perf_counter()
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [argument for platform in ARM_WHEEL_PLATFORMS for argument in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), "--only-binary", ":all:",
                    "--python-version", "3.11", "--implementation", "cp", *platforms,
                    "-r", str(REPO_ROOT / "docker" / "requirements-deploy.txt")], check=True, timeout=3600)
    return round(time.perf_counter() - started, 1)


def build_jetson_standin(wheels: Path) -> float:
    """docker/Dockerfile's jetson target for linux/arm64 on ARM_BASE_IMAGE, every RUN step emulated. Seconds."""
    started = time.perf_counter()
    log.info("build: Jetson stand-in (linux/arm64 under qemu) -> %s", IMAGES["jetson"])
    buildah("bud", "--isolation", "chroot", "--arch", "arm64", "--file", str(DOCKERFILE), "--ignorefile", f"{DOCKERFILE}.dockerignore",
            "--target", "jetson", "--build-arg", f"BASE_IMAGE={ARM_BASE_IMAGE}", "--volume", f"{wheels}:/wheels:ro",
            "--tag", IMAGES["jetson"], str(REPO_ROOT), timeout=5400)
    return round(time.perf_counter() - started, 1)


def ncnn_only_export(export_dir: Path, dest: Path) -> Path:
    """A copy of an export folder holding its ncnn exports alone (and the model manifest): what the stand-in times."""
    records = [r for r in read_export_records(export_dir) if r["format"] == "ncnn" and r["status"] == "exported"]
    if not records:
        raise DockerCheckError(f"{export_dir}: no exported ncnn model for the Jetson stand-in to run")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy2(export_dir / MODEL_MANIFEST, dest / MODEL_MANIFEST)
    for name in {name for record in records for name in record["files"]}:
        shutil.copy2(export_dir / name, dest / name)
    write_json_atomic(dest / EXPORTS_FILE, records)
    return dest


def check_jetson_standin(run_dir: Path, out_dir: Path) -> dict:
    """The Jetson image's entrypoint, emulated, on the run's ncnn exports: a latency JSON in the project's schema whose
    times are qemu's (never read as a Jetson's)."""
    export = ncnn_only_export(run_dir / "export", out_dir / "jetson-export")
    results = out_dir / "jetson-results"
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    started = time.perf_counter()
    status, output = run_in(IMAGES["jetson"], ["docker/device-benchmark.sh", "/models/export", "/results/latency-jetson.json",
                                               "--threads", "1", "--warmup-runs", "1", "--timed-runs", "5", "--min-timed-seconds", "0",
                                               "--max-timed-seconds", "30", "--throughput-runs", "1"],
                            [f"{export}:/models/export:ro", f"{results}:/results"])
    if status != 0:
        raise DockerCheckError(f"device-benchmark.sh in {IMAGES['jetson']} exited {status}: {' | '.join(output.strip().splitlines()[-4:])}")
    latency = load_latency_document(results / "latency-jetson.json")
    return {"emulated": "linux/arm64 under qemu-aarch64 (binfmt_misc): times are not a Jetson's", "machine": latency["device"].get("abi"),
            "latency_results": latency["results"], "latency_skipped": latency.get("skipped", []),
            "wall_s": round(time.perf_counter() - started, 1)}


def build_target(target: str, wheels: Path) -> float:
    """docker/Dockerfile's `target`, built on BASE_IMAGE with the wheelhouse mounted at /wheels. Seconds."""
    started = time.perf_counter()
    log.info("build: %s target -> %s", target, IMAGES[target])
    buildah("bud", "--isolation", "chroot", "--file", str(DOCKERFILE), "--ignorefile", f"{DOCKERFILE}.dockerignore",
            "--target", target, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--volume", f"{wheels}:/wheels:ro",
            "--tag", IMAGES[target], str(REPO_ROOT), timeout=5400)
    return round(time.perf_counter() - started, 1)


SIZE_UNITS = {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "TB": 1e6}


def image_size_mb(name: str) -> float:
    """The image's size as `buildah images` reports it ("685 MB", "7.9 GB": decimal units), in MB."""
    value, unit = json.loads(buildah("images", "--json", name))[0]["size"].split()
    return round(float(value) * SIZE_UNITS[unit], 1)


def run_in(image: str, command: list[str], volumes: list[str], timeout: float = 3600) -> tuple[int, str]:
    """`command` in a fresh container of `image` (buildah run), the volumes mounted; (exit status, output)."""
    container = buildah("from", "--quiet", image).strip()
    try:
        arguments = ["buildah", "--storage-driver", "vfs", "run", "--isolation", "chroot"]
        for volume in volumes:
            arguments += ["--volume", volume]
        completed = subprocess.run([*arguments, container, "--", *command], capture_output=True, text=True, timeout=timeout,
                                   check=False)
        return completed.returncode, completed.stdout + completed.stderr
    finally:
        buildah("rm", container)


def check_deploy_image(run_dir: Path, out_dir: Path, profile: str) -> dict:
    """Latency with the image's entrypoint script, device parity on the host's faces, and no torch inside."""
    results = out_dir / "deploy-results"
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    started = time.perf_counter()
    status, output = run_in(IMAGES["deploy"], ["docker/device-benchmark.sh", "/models/export", f"/results/{LATENCY_FILE}"],
                            [f"{run_dir / 'export'}:/models/export:ro", f"{results}:/results"])
    if status != 0:
        raise DockerCheckError(f"device-benchmark.sh in {IMAGES['deploy']} exited {status}: {' | '.join(output.strip().splitlines()[-4:])}")
    latency = load_latency_document(results / LATENCY_FILE)  # the project's schema, or a one-line DataError
    latency_s = round(time.perf_counter() - started, 1)
    status, output = run_in(IMAGES["deploy"], ["python3", "-m", "app.device_parity", "--run-dir", "/run", "--profile", profile,
                                               "here", "--formats", "onnx", "ncnn", "--name", DOCKER_DEPLOY_DEVICE],
                            [f"{run_dir}:/run"])
    parity_path = RunLayout(run_dir).device_parity_file(DOCKER_DEPLOY_DEVICE)
    parity = json.loads(parity_path.read_text()) if parity_path.is_file() else {"results": []}
    torch_status, _ = run_in(IMAGES["deploy"], ["python3", "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"], [])
    return {"latency_results": latency["results"], "latency_skipped": latency.get("skipped", []), "latency_wall_s": latency_s,
            "parity_exit": status, "parity_rows": [{k: r.get(k) for k in ("backend", "precision", "status", "cosine_min", "accuracy_delta_points")}
                                                  for r in parity["results"]],
            "parity_output_tail": output.strip().splitlines()[-6:], "torch_free": torch_status == 0}


def check_full_image(out_dir: Path) -> dict:
    """`python -m pipeline run --profile tiny` inside the full image, into a runs folder on the host."""
    runs = out_dir / "full-runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    started = time.perf_counter()
    status, output = run_in(IMAGES["full"], ["python3", "-m", "pipeline", "run", "--profile", "tiny", "--runs-dir", "/runs"],
                            [f"{runs}:/runs"])
    layout = RunLayout(runs / "tiny")
    metrics = layout.metrics_file
    return {"exit": status, "wall_s": round(time.perf_counter() - started, 1), "report_written": layout.report_file.is_file(),
            "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None, "output_tail": output.strip().splitlines()[-6:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.docker_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="a finished run whose exports the deploy image times")
    parser.add_argument("--profile", default="default", help="the run's profile (its parity gates apply)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "docker", help="work folder: wheelhouse, results, check.json")
    parser.add_argument("--targets", nargs="+", default=["deploy", "full", "jetson"], choices=list(IMAGES))
    parser.add_argument("--rebuild-base", action="store_true", help="debootstrap the base image again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run_dir, out = args.run_dir.resolve(), args.out.resolve()
    summary: dict = {"base_image": BASE_IMAGE, "build_s": {}, "size_mb": {}}
    try:
        check_tools()
        if "deploy" in args.targets and not RunLayout(run_dir).exports_file.is_file():
            raise DockerCheckError(f"{run_dir}: no finished export stage to time (run `make mobile-model`)")
        if args.rebuild_base or not image_exists(BASE_IMAGE):
            summary["build_s"]["base"] = make_base(out)
        summary["build_s"]["wheelhouse"] = make_wheelhouse(out / "wheels")
        for target in ("deploy", "full"):  # full builds FROM deploy
            if target in args.targets or (target == "deploy" and "full" in args.targets):
                summary["build_s"][target] = build_target(target, out / "wheels")
                summary["size_mb"][target] = image_size_mb(IMAGES[target])
        summary["size_mb"]["base"] = image_size_mb(BASE_IMAGE)
        if "deploy" in args.targets:
            summary["deploy"] = check_deploy_image(run_dir, out, args.profile)
        if "full" in args.targets:
            summary["full"] = check_full_image(out)
        if "jetson" in args.targets:
            if args.rebuild_base or not image_exists(ARM_BASE_IMAGE):
                summary["build_s"]["base_arm64"] = make_base(out, "arm64")
            summary["build_s"]["wheelhouse_arm64"] = make_arm_wheelhouse(out / "wheels-arm64")
            summary["build_s"]["jetson"] = build_jetson_standin(out / "wheels-arm64")
            summary["size_mb"]["jetson"] = image_size_mb(IMAGES["jetson"])
            summary["jetson"] = check_jetson_standin(run_dir, out)
    except (PipelineError, subprocess.SubprocessError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(out / "check.json", summary)
    print(f"build s: {summary['build_s']}; image MB: {summary['size_mb']}")
    failed = []
    if "deploy" in summary:
        deploy = summary["deploy"]
        print(format_latency_table(deploy["latency_results"]))
        print("parity in the deploy image: " + ", ".join(f"{r['backend']}/{r['precision']} {r['status']}" for r in deploy["parity_rows"]))
        print(f"deploy image torch-free: {deploy['torch_free']}")
        if deploy["parity_exit"] != 0 or not deploy["parity_rows"]:
            failed.append("deploy parity")
        if not deploy["torch_free"]:
            failed.append("deploy image holds torch")
    if "full" in summary:
        full = summary["full"]
        print(f"full image: pipeline run --profile tiny exit {full['exit']} in {full['wall_s']} s, report written: {full['report_written']}")
        if full["exit"] != 0 or not full["report_written"]:
            failed.append("full image run")
    if "jetson" in summary:
        print(f"Jetson stand-in, EMULATED ({summary['jetson']['emulated']}):")
        print(format_latency_table(summary["jetson"]["latency_results"]))
    print(f"wrote {out / 'check.json'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
