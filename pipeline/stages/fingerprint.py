"""What decides whether a stage reruns: its fingerprint, and the manifest of its last run it is compared with.

A fingerprint holds the stage's config sections, the output hashes of its upstream stages, the hashes of the files
it reads whole (`Stage.external_files`), the digests of the named inputs it reads from outside the run folder
(`Stage.input_digests`) and the pipeline version; its sha256 is the key the manifest records. The runner
(`pipeline.stages.runner`) decides with it; this module only computes and compares, so that the decision can be
read apart from the running.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.artifacts import ArtifactWriteError, HashMemo, sha256_file, write_json_atomic
from pipeline.config import RunConfig
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.stages.runner import Stage

log = logging.getLogger("pipeline.stages")
MANIFEST = "manifest.json"
INPUT_HASHES = ".input_hashes.json"  # `HashMemo` of the files that `input_digests` hashed, kept for the next run


@dataclass(frozen=True)
class InputDigest:
    """One named input a stage reads from outside the run folder (a data source): a digest of what the stage reads
    from it, and how many files it holds (None for a single file), recorded so that a change can be told in numbers."""

    digest: str
    files: int | None = None


# (config, a sha256 of a file that reuses the hash of a file unchanged since the last run) -> {input name: digest}
InputDigests = Callable[[RunConfig, Callable[[Path], str]], dict[str, InputDigest]]


def config_subset(config: RunConfig, sections: tuple[str, ...]) -> dict[str, Any]:
    dumped = config.model_dump(mode="json")
    return {section: dumped[section] for section in sections}


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable manifest, the stage will rerun", path)
        return None


def hash_outputs(folder: Path) -> dict[str, str]:
    """Hash of every file a stage wrote (bundles such as .mlpackage folders hash as one entry)."""
    outputs: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST:
            continue
        outputs[path.name] = sha256_file(path)
    return outputs


def outputs_intact(stage_dir: Path, manifest: dict[str, Any]) -> bool:
    for name, digest in manifest.get("outputs", {}).items():
        path = stage_dir / name
        if not path.exists() or sha256_file(path) != digest:
            log.warning("%s: output %s is missing or changed since it was written; rerunning", stage_dir.name, name)
            return False
    return True


def input_changes(manifest: dict[str, Any], digests: dict[str, InputDigest]) -> list[str]:
    """Each named input whose digest differs from the one `manifest` recorded, as "name (what changed)"; nothing for a
    manifest that recorded no digests (written before its stage had any)."""
    if "input_digests" not in manifest:
        return []
    before: dict[str, str] = manifest["input_digests"]
    counts_before: dict[str, int] = manifest.get("input_file_counts", {})
    changes = []
    for name, now in digests.items():
        if name not in before:
            changes.append(f"{name} (new input)")
        elif before[name] != now.digest:
            was = counts_before.get(name)
            if now.files is None:
                changes.append(f"{name} (contents changed)")
            elif was is not None and was != now.files:
                changes.append(f"{name} ({_files(now.files)}, was {was})")
            else:
                changes.append(f"{name} ({_files(now.files)} as before, some changed)")
    changes += [f"{name} (no longer read)" for name in before if name not in digests]
    return changes


def _files(count: int) -> str:
    return f"{count} file{'' if count == 1 else 's'}"


class Fingerprinter:
    """Computes stages' fingerprints for one run folder, remembering the hashes of big input files between runs."""

    def __init__(self, config: RunConfig, run_dir: Path):
        self.config = config
        self.run_dir = run_dir
        self._hash_memo: HashMemo | None = None
        self._hash_memo_saved: dict[str, list] = {}

    def compute(self, stage: Stage) -> tuple[dict[str, Any], dict[str, InputDigest]]:
        """The fingerprint of `stage` and the digests of its named inputs (recorded beside it in the manifest)."""
        upstream = {}
        for name in stage.inputs:
            manifest = read_manifest(self.run_dir / name)
            if manifest is None:
                raise PipelineError(f"stage {stage.name!r} needs {name!r}, which has no results in {self.run_dir / name}")
            upstream[name] = manifest["outputs"]
        external = {path: sha256_file(path) for path in stage.external_files(self.config)}
        fingerprint = {
            "config": config_subset(self.config, stage.config_sections),
            "inputs": upstream,
            "external_files": external,
            "pipeline_version": __version__,
        }
        digests = self._input_digests(stage)
        if digests:  # absent otherwise, so that a stage without named inputs keeps the key it had before they existed
            fingerprint["input_digests"] = {name: digest.digest for name, digest in digests.items()}
        return fingerprint, digests

    def _input_digests(self, stage: Stage) -> dict[str, InputDigest]:
        if stage.input_digests is None:
            return {}
        memo = self._memo()
        digests = stage.input_digests(self.config, memo.sha256)
        self._save_memo(memo)
        return digests

    def _memo(self) -> HashMemo:
        """The hashes remembered from the last run, kept in the run folder (not a cache of the user's) beside the
        manifests they feed; an unreadable memo only costs reading the files again."""
        if self._hash_memo is None:
            try:
                stored = json.loads((self.run_dir / INPUT_HASHES).read_text())
            except (OSError, ValueError):
                stored = {}
            self._hash_memo = HashMemo(stored)
            self._hash_memo_saved = dict(self._hash_memo.known)
        return self._hash_memo

    def _save_memo(self, memo: HashMemo) -> None:
        remembered = memo.current()
        if remembered == self._hash_memo_saved:
            return
        try:
            write_json_atomic(self.run_dir / INPUT_HASHES, remembered)
            self._hash_memo_saved = remembered
        except ArtifactWriteError as exc:  # only time is lost: the next run hashes the files again
            log.warning("%s", exc)
