"""The data stage's fingerprint follows the data, not only the config: added identities and a replaced .bin rerun it.

The listings are files, not images: listing and hashing never decode a face, so most cases use placeholder bytes.
One case runs the real data stage twice over a small identity folder to see `cached` turn into `ran`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config, profile_path
from pipeline.data.arrays import VerificationPairs
from pipeline.data.binset import write_bin
from pipeline.data.image_decode import encode_face
from pipeline.stages import STAGES
from pipeline.stages.data_stage import data_input_listings
from pipeline.stages.runner import StageRunner

DATA_STAGE = STAGES[0]


@pytest.fixture(autouse=True)
def listing_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Listings go to this test's folder, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


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


def test_adding_an_identity_folder_changes_the_fingerprint_and_the_log_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train, verification = tmp_path / "train", tmp_path / "verify.bin"
    for identity in ("a", "b"):
        identity_folder(train, identity, 4)
    verification.write_bytes(b"pairs")
    runner = user_data_runner(tmp_path, train, verification)
    before = runner.fingerprint(DATA_STAGE)
    assert runner.fingerprint(DATA_STAGE) == before  # nothing changed: the same key, so `data cached`
    identity_folder(train, "c", 3)
    with caplog.at_level(logging.INFO):
        after = runner.fingerprint(DATA_STAGE)
    assert after != before
    assert f"data: inputs changed: {train} (3 files added)" in caplog.messages
    (train / "a" / "0.jpg").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert runner.fingerprint(DATA_STAGE) != after
    assert f"data: inputs changed: {train} (1 file removed)" in caplog.messages


def test_a_bin_replaced_by_other_bytes_of_the_same_size_and_time_changes_the_fingerprint(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train, verification = tmp_path / "train", tmp_path / "verify.bin"
    identity_folder(train, "a", 2)
    verification.write_bytes(b"first version of the pairs")
    stamp = verification.stat().st_mtime_ns
    runner = user_data_runner(tmp_path, train, verification)
    before = runner.fingerprint(DATA_STAGE)
    verification.write_bytes(b"other version of the pairs")  # same length
    os.utime(verification, ns=(stamp, stamp))
    with caplog.at_level(logging.INFO):
        assert runner.fingerprint(DATA_STAGE) != before
    assert f"data: inputs changed: {verification} (1 file changed)" in caplog.messages


def test_synthetic_data_lists_nothing_so_its_fingerprint_is_as_before() -> None:
    assert data_input_listings(load_config(profile_path("tiny"))) == []


def test_added_identity_reruns_the_data_stage(tmp_path: Path) -> None:
    """The real stage: cached while nothing changes, rerun (and holding the new identity) once a folder is added."""
    rng = np.random.default_rng(0)

    def faces(identity: str, count: int) -> None:
        (train / identity).mkdir(parents=True)
        for number in range(count):
            (train / identity / f"{number}.png").write_bytes(encode_face(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)))

    train = tmp_path / "train"
    for identity in ("a", "b", "c"):
        faces(identity, 3)
    verification = write_bin(tmp_path / "verify.bin", VerificationPairs(rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8),
                                                                        np.array([True, False])))
    runner = user_data_runner(tmp_path, train, verification)
    assert [o.status for o in runner.run(until="data")] == ["ran"]
    assert [o.status for o in runner.run(until="data")] == ["cached"]
    faces("d", 3)
    outcome = runner.run(until="data")[0]
    assert outcome.status == "ran" and outcome.manifest["summary"]["train_identities"] == 4


def test_a_hashed_file_is_read_again_only_when_its_size_times_or_inode_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.data import source_listing

    big = tmp_path / "train.rec"
    big.write_bytes(b"records")
    fresh = source_listing.HashMemo()
    fresh.sha256(big)
    assert str(big) not in fresh.known  # written just now: a second write could fall in the same timestamp tick
    monkeypatch.setattr(source_listing, "RACY_NS", -1)
    memo = source_listing.HashMemo()
    digest = memo.sha256(big)

    def must_not_read(path: Path) -> str:
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(source_listing, "sha256_of", must_not_read)
    assert source_listing.HashMemo(memo.current()).sha256(big) == digest
    os.utime(big, ns=(1, 1))  # moves mtime and ctime: read again
    with pytest.raises(AssertionError, match="read again"):
        source_listing.HashMemo(memo.current()).sha256(big)
