"""The stage runner: each stage maps declared inputs to outputs under runs/<run>/<stage>/ with a manifest.

A stage is skipped when its fingerprint (`pipeline.stages.fingerprint`: its config sections, the hashes of its
upstream outputs, the digests of what it reads from outside the run folder, the pipeline version) matches its
manifest and its outputs still hash as recorded; otherwise it reruns, and the log names each outside input that
changed (`Stage.input_digests`). A stage writes into a staging folder of its own process that replaces the old
results only on success, so a failure (a full disk included) never costs earlier results and leaves nothing cached;
a failed write is reported by the name the file would have had in the stage's folder. Long stages keep resumable
work (checkpoints) in runs/<run>/work/<stage>/, tagged with the stage's fingerprint and discarded when the
fingerprint changes or the stage is forced, so a checkpoint trained under another config is never resumed. One run
at a time writes into a run folder (`pipeline.run_lock`): a second one is refused with the name of the first. A stop
signal (see `pipeline.interrupts`) stops the run before the next stage. Each stage starts from the run's seed, so
its numbers do not depend on what ran before.

Under torchrun (`pipeline.distill.distributed`) rank 0 owns the run folder: it decides whether a stage is cached and
tells the others; a `distributed` stage (training) runs on every rank, the others writing into a private staging
folder that is thrown away; other stages run on rank 0 alone, and the other ranks leave after the last
distributed stage of the run.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.artifacts import ArtifactWriteError, sha256_json, write_error, write_fault, write_json_atomic, write_text_atomic
from pipeline.config import RunConfig
from pipeline.distill.distributed import Distributed, current
from pipeline.errors import PipelineError
from pipeline.inputs import check_input_paths
from pipeline.interrupts import raise_if_stop_requested, stop_requested
from pipeline.run_lock import RunLock, RunLockedError, pid_alive
from pipeline.stages.fingerprint import (
    MANIFEST, Fingerprinter, InputDigests, hash_outputs, input_changes, outputs_intact, read_manifest,
)

log = logging.getLogger("pipeline.stages")
WORK_FINGERPRINT = ".fingerprint"
STAGING_MARK = ".staging"  # .<stage>.staging.<pid>: one per process, so two processes never write into one


@dataclass
class StageContext:
    """What a stage function sees: config, where to write, where its inputs are, and a place for its summary."""

    config: RunConfig
    run_dir: Path
    out_dir: Path
    work_dir: Path
    extra_inputs: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    def input_dir(self, stage: str) -> Path:
        return self.run_dir / stage


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], None]
    inputs: tuple[str, ...] = ()
    config_sections: tuple[str, ...] = ()
    external_files: Callable[[RunConfig], list[str]] = lambda config: []  # hashed whole on every run (a checkpoint)
    description: str = ""
    distributed: bool = False  # runs on every torchrun rank (training); otherwise on rank 0 only
    input_digests: InputDigests | None = None  # named inputs too large to hash whole on every run (data folders)


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "cached"
    wall_time_s: float
    manifest: dict[str, Any]


class StageRunner:
    """Runs stages in order, skipping the fresh ones; `force` and `from_stage` override the cache."""

    def __init__(self, config: RunConfig, stages: list[Stage], runs_root: Path, distributed: Distributed | None = None):
        self.config = config
        self.stages = stages
        self.run_dir = runs_root / config.run_name
        self.names = [stage.name for stage in stages]
        self.ctx = distributed or current()
        self._fingerprints = Fingerprinter(config, self.run_dir)

    def fingerprint(self, stage: Stage) -> dict[str, Any]:
        """What decides whether `stage` reruns; its sha256 is the key its manifest records."""
        return self._fingerprints.compute(stage)[0]

    def run(self, from_stage: str | None = None, until: str | None = None, force: bool = False) -> list[StageOutcome]:
        for name in (from_stage, until):
            if name is not None and name not in self.names:
                raise PipelineError(f"unknown stage {name!r}; stages: {', '.join(self.names)}")
        lock = self._lock()
        try:
            if lock is not None:
                remove_leftover_staging(self.run_dir)
            return self._run_locked(from_stage, until, force)
        finally:
            if lock is not None:
                lock.release()

    def _lock(self) -> RunLock | None:
        """Rank 0 (or a plain run) holds the run folder; under torchrun every rank learns whether it got it."""
        lock = RunLock(self.run_dir) if self.ctx.is_main else None
        refusal = None
        if lock is not None:
            try:
                lock.acquire()
            except RunLockedError as exc:
                refusal = str(exc)
        refusal = self.ctx.broadcast_from_main(refusal)
        if refusal is not None:
            raise RunLockedError(refusal)
        return lock

    def _run_locked(self, from_stage: str | None, until: str | None, force: bool) -> list[StageOutcome]:
        check_input_paths(self.config)
        first_forced = self.names.index(from_stage) if from_stage else None
        last = self.names.index(until) if until else len(self.names) - 1
        in_range = self.stages[: last + 1]
        last_shared = max((i for i, stage in enumerate(in_range) if stage.distributed), default=-1)
        outcomes = []
        for index, stage in enumerate(in_range):
            raise_if_stop_requested(f"stage {stage.name!r}")
            forced = force or (first_forced is not None and index >= first_forced)
            if self.ctx.enabled and index > last_shared:
                if not self.ctx.is_main:
                    log.info("rank %d: the distributed stages are done; rank 0 runs the rest", self.ctx.rank)
                    break
                outcomes.append(self._run_stage(stage, forced, shared=False))
            else:
                outcomes.append(self._run_stage(stage, forced, shared=self.ctx.enabled))
        return outcomes

    def _run_stage(self, stage: Stage, forced: bool, shared: bool = False) -> StageOutcome:
        """Run or skip one stage; `shared`: every rank calls this, and rank 0's decision binds them all."""
        stage_dir = self.run_dir / stage.name
        decision = None
        if not shared or self.ctx.is_main:
            self._recover_interrupted_swap(stage_dir)
            fingerprint, digests = self._fingerprints.compute(stage)
            key = sha256_json(fingerprint)
            manifest = read_manifest(stage_dir)
            if manifest is not None and manifest.get("fingerprint") != key:
                for change in input_changes(manifest, digests):
                    log.info("[%s] inputs changed: %s", stage.name, change)
            cached = not forced and manifest is not None and manifest.get("fingerprint") == key and outputs_intact(stage_dir, manifest)
            work_dir = None if cached else self._prepare_work_dir(stage.name, key, forced)
            file_counts = {name: digest.files for name, digest in digests.items() if digest.files is not None}
            decision = (cached, fingerprint, key, work_dir, file_counts)
        if shared:
            cached, fingerprint, key, work_dir, file_counts = self.ctx.broadcast_from_main(decision)
            if cached and not self.ctx.is_main:
                manifest = read_manifest(stage_dir)  # rank 0 read it when it decided
        else:
            cached, fingerprint, key, work_dir, file_counts = decision
        if cached:
            log.info("[%s] cached: inputs and config unchanged (%s)", stage.name, stage_dir)
            return StageOutcome(stage.name, "cached", 0.0, manifest)
        if shared and not self.ctx.is_main:
            return self._follow_stage(stage, fingerprint, work_dir)

        staging = staging_dir(self.run_dir, stage.name)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        context = StageContext(self.config, self.run_dir, staging, work_dir, fingerprint["inputs"])
        log.info("[%s] running: %s", stage.name, stage.description or stage.name)
        for name, outputs in fingerprint["inputs"].items():
            log.info("[%s] reads %s/: %s", stage.name, name, ", ".join(outputs))
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        started = time.perf_counter()
        try:
            seed_global_rngs(self.config.seed)
            stage.run(context)
            wall = time.perf_counter() - started
            manifest = {
                "stage": stage.name,
                "fingerprint": key,
                **fingerprint,
                **({"input_file_counts": file_counts} if file_counts else {}),
                "outputs": hash_outputs(staging),
                "summary": context.summary,
                "started_at": started_at,
                "wall_time_s": round(wall, 3),
                "versions": library_versions(),
            }
            write_json_atomic(staging / MANIFEST, manifest)
            self._replace(staging, stage_dir)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)  # never committed; on a full disk this frees what it took
            if stop_requested():
                log.warning("[%s] stopped on request after %.1f s; resumable work is kept in %s", stage.name, time.perf_counter() - started, work_dir)
            else:
                log.error("[%s] failed after %.1f s; its previous results and earlier stages' are intact in %s", stage.name,
                          time.perf_counter() - started, self.run_dir)
            named = naming_destination(exc, staging, stage_dir)
            if named is not None:
                raise named from exc
            raise
        log.info("[%s] wrote %s (%s) in %.1f s", stage.name, stage_dir, ", ".join(manifest["outputs"]), wall)
        if shared:
            self.ctx.barrier()  # the other ranks read these results in the next stage
        return StageOutcome(stage.name, "ran", wall, manifest)

    def _follow_stage(self, stage: Stage, fingerprint: dict[str, Any], work_dir: Path) -> StageOutcome:
        """A rank other than 0: take part in a distributed stage, writing into a private folder that is discarded."""
        started = time.perf_counter()
        private = self.run_dir / f".rank{self.ctx.rank}" / stage.name
        shutil.rmtree(private, ignore_errors=True)
        private.mkdir(parents=True)
        try:
            if stage.distributed:
                seed_global_rngs(self.config.seed)
                stage.run(StageContext(self.config, self.run_dir, private, work_dir, fingerprint["inputs"]))
        finally:
            shutil.rmtree(private.parent, ignore_errors=True)
        self.ctx.barrier()  # wait for rank 0's results of this stage
        wall = time.perf_counter() - started
        return StageOutcome(stage.name, "ran", wall, read_manifest(self.run_dir / stage.name) or {})

    def _prepare_work_dir(self, name: str, key: str, forced: bool) -> Path:
        """The stage's resumable work, kept only when it was made under the same fingerprint and not forced."""
        work_dir = self.run_dir / "work" / name
        marker = work_dir / WORK_FINGERPRINT
        if work_dir.exists():
            made_under = marker.read_text().strip() if marker.is_file() else None
            if forced or made_under != key:
                why = "the stage is forced" if forced else "its config or inputs changed"
                log.info("[%s] discarding resumable work in %s: %s", name, work_dir, why)
                shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            write_text_atomic(marker, key + "\n")
        return work_dir

    @staticmethod
    def _recover_interrupted_swap(final: Path) -> None:
        """A crash between the two renames of `_replace` leaves only the retired folder: put it back."""
        retired = final.with_name(f".{final.name}.old")
        if retired.is_dir() and not final.exists():
            log.warning("%s: restoring the previous results from %s (a run stopped while swapping them)", final, retired)
            retired.rename(final)

    @staticmethod
    def _replace(staging: Path, final: Path) -> None:
        """Swap the new results in with renames; the old folder is removed only after the swap."""
        retired = final.with_name(f".{final.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        if final.exists():
            final.rename(retired)
        try:
            staging.rename(final)
        except OSError:
            if retired.is_dir() and not final.exists():
                retired.rename(final)
            raise
        shutil.rmtree(retired, ignore_errors=True)


def staging_dir(run_dir: Path, stage: str, pid: int | None = None) -> Path:
    """Where this process builds a stage's new results before they replace the old ones."""
    return run_dir / f".{stage}{STAGING_MARK}.{os.getpid() if pid is None else pid}"


def remove_leftover_staging(run_dir: Path) -> None:
    """Staging folders of runs that died (or of this process's failed stages): called with the run lock held.

    A folder of a live process other than this one is left alone: its pid was reused, or a run on another host
    shares the folder without a working lock, and either way it is not this run's to delete.
    """
    for path in sorted(run_dir.glob(f".*{STAGING_MARK}*")):
        owner = path.name.rpartition(f"{STAGING_MARK}.")[2]
        pid = int(owner) if owner.isdigit() else None  # no pid: a staging folder of an older version
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            log.warning("%s: left in place, its process %d is alive", path, pid)
            continue
        log.info("%s: removing what an unfinished stage left behind", path)
        shutil.rmtree(path, ignore_errors=True)


def naming_destination(exc: BaseException, staging: Path, final: Path) -> ArtifactWriteError | None:
    """A failed write as one line that names the file in the stage's folder, not in its staging folder.

    `ArtifactWriteError`s (atomic writes) and bare OSErrors of the WRITE_FAULTS kind (a full disk under a library
    that writes for itself); any other error is the stage's own and stays as raised (None).
    """
    if isinstance(exc, ArtifactWriteError):
        destination = _inside(Path(exc.path), staging, final)
        return ArtifactWriteError(destination, exc.problem) if destination is not None else None
    fault = write_fault(exc)
    if fault is None or not isinstance(exc, Exception) or isinstance(exc, PipelineError):
        return None
    failed_on = Path(fault.filename) if fault.filename else None
    destination = _inside(failed_on, staging, final) if failed_on is not None else None
    # a file outside the staging folder (a tool's scratch file) makes the stage's folder the destination; the
    # message then adds the scratch file's folder if it lies on another disk, the one to free
    return write_error(destination or final, fault, temp_path=failed_on if destination else None)


def _inside(path: Path, staging: Path, final: Path) -> Path | None:
    """`path` inside `staging`, spelled inside `final` (the name the reader knows); None for any other path."""
    try:
        return final / path.relative_to(staging)
    except ValueError:
        return None


def seed_global_rngs(seed: int) -> None:
    """Every stage starts from the same global RNG state, so weights a stage initialises (e.g. a model built before
    its trainer seeds) do not depend on which stages ran, or were cached, earlier in the same process."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def library_versions() -> dict[str, str]:
    """Versions that change numbers: recorded in every manifest so a figure can be reproduced."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform(), "pipeline": __version__}
    for package in ("torch", "timm", "numpy", "onnx", "onnxruntime", "onnxsim", "ncnn", "pnnx", "coremltools", "opencv-python-headless"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
