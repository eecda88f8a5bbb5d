"""The data stage's fingerprint follows the data, not only the config: added identities and a replaced .bin rerun it.

The data stage names its sources to the runner (`Stage.input_digests`); the runner keys the stage on their digests,
records them with each source's file count in the manifest, and logs which source changed. Nothing is written outside
the run folder. Listing and hashing never decode a face, so most cases use placeholder bytes; one case runs the real
data stage over a small identity folder to see `cached` turn into `ran` and the log name the source.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.stages import STAGES
from app.stages.data_stage import data_input_digests
from pipeline import artifacts
from pipeline.artifacts import HashMemo, sha256_file
from pipeline.config import load_config, profile_path
from pipeline.data.arrays import VerificationPairs
from pipeline.data.binset import write_bin
from pipeline.data.image_decode import encode_face
from pipeline.stages.fingerprint import INPUT_HASHES
from pipeline.stages.runner import StageRunner

DATA_STAGE = STAGES[0]


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The user's cache gets nothing of this project's: the data inputs are recorded in the run folder only."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield tmp_path / "cache"
    assert not (tmp_path / "cache" / "face-distill-export").exists()


def identity_folder(root: Path, identity: str, images: int, payload: bytes = b"placeholder") -> None:
    (root / identity).mkdir(parents=True, exist_ok=True)
    for number in range(images):
        (root / identity / f"{number}.jpg").write_bytes(payload + bytes([number]))


def user_data_runner(tmp_path: Path, train: Path, verification: Path) -> StageRunner:
    config = load_config(profile_path("tiny"), {
        "data.source": "image_folder", "data.train_path": str(train),
        "data.verification": [{"kind": "bin", "path": str(verification)}],
    })
    return StageRunner(config, STAGES, tmp_path / "runs")


def test_adding_or_removing_images_changes_the_digest_of_that_source_only(tmp_path: Path) -> None:
    train, verification = tmp_path / "train", tmp_path / "verify.bin"
    for identity in ("a", "b"):
        identity_folder(train, identity, 4)
    verification.write_bytes(b"pairs")
    runner = user_data_runner(tmp_path, train, verification)
    before = runner.fingerprint(DATA_STAGE)
    assert set(before["input_digests"]) == {str(train), str(verification)}
    assert runner.fingerprint(DATA_STAGE) == before  # nothing changed: the same key, so `data cached`
    identity_folder(train, "c", 3)
    after = runner.fingerprint(DATA_STAGE)
    assert after["input_digests"][str(train)] != before["input_digests"][str(train)]
    assert after["input_digests"][str(verification)] == before["input_digests"][str(verification)]
    (train / "a" / "0.jpg").unlink()
    assert runner.fingerprint(DATA_STAGE)["input_digests"][str(train)] not in {
        before["input_digests"][str(train)], after["input_digests"][str(train)]}
    digests = data_input_digests(runner.config, sha256_file)
    assert digests[str(train)].files == 10 and digests[str(verification)].files is None


def test_a_bin_replaced_by_other_bytes_of_the_same_size_and_time_changes_the_fingerprint(tmp_path: Path) -> None:
    train, verification = tmp_path / "train", tmp_path / "verify.bin"
    identity_folder(train, "a", 2)
    verification.write_bytes(b"first version of the pairs")
    stamp = verification.stat().st_mtime_ns
    runner = user_data_runner(tmp_path, train, verification)
    before = runner.fingerprint(DATA_STAGE)
    verification.write_bytes(b"other version of the pairs")  # same length
    os.utime(verification, ns=(stamp, stamp))
    assert runner.fingerprint(DATA_STAGE)["input_digests"][str(verification)] != before["input_digests"][str(verification)]


def test_synthetic_data_names_no_input_so_its_fingerprint_is_as_before(tmp_path: Path) -> None:
    config = load_config(profile_path("tiny"))
    assert data_input_digests(config, sha256_file) == {}
    assert "input_digests" not in StageRunner(config, STAGES, tmp_path / "runs").fingerprint(DATA_STAGE)


def test_a_changed_source_reruns_the_data_stage_and_the_log_names_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real stage: cached while nothing changes; rerun, naming the source, once a folder is added, an image is
    removed, or the .bin is replaced by one of the same size and time."""
    rng = np.random.default_rng(0)

    def faces(identity: str, count: int) -> None:
        (train / identity).mkdir(parents=True)
        for number in range(count):
            (train / identity / f"{number}.png").write_bytes(encode_face(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)))

    pair_images = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)

    def rerun(expected_change: str) -> dict:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pipeline.stages"):
            outcome = runner.run(until="data")[0]
        assert outcome.status == "ran"
        assert [m for m in caplog.messages if m.startswith("[data] inputs changed")] == [f"[data] inputs changed: {expected_change}"]
        return outcome.manifest

    train = tmp_path / "train"
    for identity in ("a", "b", "c"):
        faces(identity, 3)
    verification = write_bin(tmp_path / "verify.bin", VerificationPairs(pair_images, np.array([True, False])))
    runner = user_data_runner(tmp_path, train, verification)
    first = runner.run(until="data")[0]
    assert first.status == "ran" and first.manifest["input_file_counts"] == {str(train): 9}
    assert set(first.manifest["input_digests"]) == {str(train), str(verification)}
    assert [o.status for o in runner.run(until="data")] == ["cached"]

    faces("d", 3)
    manifest = rerun(f"{train} (12 files, was 9)")
    assert manifest["summary"]["train_identities"] == 4 and manifest["input_file_counts"] == {str(train): 12}

    (train / "d" / "0.png").unlink()
    rerun(f"{train} (11 files, was 12)")

    stamp = verification.stat().st_mtime_ns
    size = verification.stat().st_size
    write_bin(verification, VerificationPairs(pair_images[::-1], np.array([True, False])))  # the same images, reordered
    os.utime(verification, ns=(stamp, stamp))
    assert verification.stat().st_size == size
    rerun(f"{verification} (contents changed)")
    assert [o.status for o in runner.run(until="data")] == ["cached"]


def test_a_hashed_file_is_read_again_only_when_its_size_times_or_inode_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "train.rec"
    big.write_bytes(b"records")
    fresh = HashMemo()
    fresh.sha256(big)
    assert str(big) not in fresh.known  # written just now: a second write could fall in the same timestamp tick
    monkeypatch.setattr(artifacts, "RACY_NS", -1)
    memo = HashMemo()
    digest = memo.sha256(big)

    def must_not_read(path: Path) -> str:
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(artifacts, "sha256_file", must_not_read)
    assert HashMemo(memo.current()).sha256(big) == digest
    os.utime(big, ns=(1, 1))  # moves mtime and ctime: read again
    with pytest.raises(AssertionError, match="read again"):
        HashMemo(memo.current()).sha256(big)
    assert HashMemo({str(big): "not an entry"}).known == {}  # a damaged memo is not trusted


def test_the_runner_keeps_the_hashes_in_the_run_folder_so_an_unchanged_bin_is_not_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, verification = tmp_path / "train", tmp_path / "verify.bin"
    identity_folder(train, "a", 2)
    verification.write_bytes(b"pairs")
    monkeypatch.setattr(artifacts, "RACY_NS", -1)
    runner = user_data_runner(tmp_path, train, verification)
    before = runner.fingerprint(DATA_STAGE)
    assert (runner.run_dir / INPUT_HASHES).is_file()

    def must_not_read(path: Path) -> str:
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(artifacts, "sha256_file", must_not_read)
    assert user_data_runner(tmp_path, train, verification).fingerprint(DATA_STAGE) == before  # a later run, same memo
