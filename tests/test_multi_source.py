"""Several data sources in one training set: identity folders keep their identities (numbered after the sources
before them), unlabelled folders and synthetic faces come in labelled -1, and only distillation samples those."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.cli import main
from app.stages.data_stage import concatenate_sources, load_extra_source
from pipeline.config import ExtraSourceConfig
from pipeline.data.arrays import FaceArrays
from pipeline.data.store import load_training_set
from pipeline.distill.trainer import usable_rows
from pipeline.errors import PipelineError
from tests.conftest import read_json


def write_face(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((112, 112, 3), value, dtype=np.uint8)
    image[40:70, 30:80] = 255 - value
    cv2.imwrite(str(path), image)


def identity_folder(root: Path, identities: int, per_identity: int, first_value: int = 0) -> Path:
    for identity in range(identities):
        for index in range(per_identity):
            write_face(root / f"person_{identity}" / f"{index}.png", first_value + 10 * identity + index)
    return root


def test_extra_sources_number_identities_after_the_main_one(tmp_path):
    main_set = FaceArrays(np.zeros((4, 112, 112, 3), np.uint8), np.array([0, 0, 1, 1]))
    labelled = load_extra_source(ExtraSourceConfig(kind="image_folder", path=str(identity_folder(tmp_path / "b", 3, 2))),
                                 (112, 112), 0.0, seed=1)
    nested = tmp_path / "unlabelled"
    write_face(nested / "a.png", 5)
    write_face(nested / "deeper" / "b.jpg", 9)
    (nested / ".hidden").mkdir()
    write_face(nested / ".hidden" / "c.png", 9)
    unlabelled = load_extra_source(ExtraSourceConfig(kind="unlabelled_folder", path=str(nested)), (112, 112), 0.0, seed=2)
    synthetic = load_extra_source(ExtraSourceConfig(kind="synthetic", synthetic={"num_train_identities": 2, "images_per_identity": 3},
                                                    max_images=5), (112, 112), 0.0, seed=3)
    assert list(unlabelled.labels) == [-1, -1] and len(synthetic.labels) == 5 and (synthetic.labels == -1).all()
    combined = concatenate_sources([("main", main_set), ("b", labelled), ("unlabelled", unlabelled), ("synthetic", synthetic)])
    assert list(combined.labels) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, -1, -1, -1, -1, -1, -1, -1]
    assert combined.num_identities == 5 and combined.images.shape == (17, 112, 112, 3)


def test_labelled_false_and_bad_sources_are_config_errors(tmp_path):
    forced = load_extra_source(ExtraSourceConfig(kind="image_folder", path=str(identity_folder(tmp_path / "b", 2, 1)), labelled=False),
                               (112, 112), 0.0, seed=0)
    assert (forced.labels == -1).all()
    with pytest.raises(ValueError, match="needs a path"):
        ExtraSourceConfig(kind="unlabelled_folder")
    with pytest.raises(ValueError, match="cannot be labelled"):
        ExtraSourceConfig(kind="unlabelled_folder", path="x", labelled=True)


def test_only_distillation_samples_unlabelled_faces():
    labels = np.array([0, -1, 1, -1, 2])
    np.testing.assert_array_equal(usable_rows(labels, needs_teacher=False, description="baseline"), [0, 2, 4])
    assert usable_rows(labels, needs_teacher=True, description="distill") is None
    assert usable_rows(np.array([0, 1]), needs_teacher=False, description="baseline") is None
    with pytest.raises(PipelineError, match="no training face has an identity label"):
        usable_rows(np.array([-1, -1]), needs_teacher=False, description="baseline")


def write_bin(path: Path, pairs: int) -> Path:
    encoded = []
    for index in range(2 * pairs):
        ok, data = cv2.imencode(".png", np.full((112, 112, 3), 17 * index % 256, np.uint8))
        encoded.append(data.tobytes())
    path.write_bytes(pickle.dumps((encoded, [i % 2 == 0 for i in range(pairs)]), protocol=4))
    return path


def test_data_stage_records_every_source(tmp_path):
    main_root = identity_folder(tmp_path / "main", 2, 2)
    unlabelled = identity_folder(tmp_path / "loose", 1, 3, first_value=100)
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "run_name: sources\n"
        f"data:\n  source: image_folder\n  train_path: {main_root}\n"
        f"  extra_sources:\n    - {{kind: unlabelled_folder, path: {unlabelled}, name: loose}}\n"
        "    - {kind: synthetic, synthetic: {num_train_identities: 2, images_per_identity: 2}, labelled: true}\n"
        f"  verification:\n    - {{kind: bin, path: {write_bin(tmp_path / 'v.bin', 4)}, name: v}}\n"
    )
    assert main(["run", "--profile", str(profile), "--runs-dir", str(tmp_path / "runs"), "--until", "data"]) == 0
    run_dir = tmp_path / "runs" / "sources"
    summary = read_json(run_dir / "data" / "manifest.json")["summary"]
    assert summary["train_sources"] == {
        "main": {"images": 4, "labelled": 4, "identities": 2},
        "loose": {"images": 3, "labelled": 0, "identities": 0},
        "synthetic": {"images": 4, "labelled": 4, "identities": 2},
    }
    assert summary["train_unlabelled_images"] == 3 and summary["train_identities"] == 4
    assert list(load_training_set(run_dir / "data").labels) == [0, 0, 1, 1, -1, -1, -1, 2, 2, 3, 3]


def test_missing_extra_source_is_one_line_before_any_stage(tmp_path, capsys):
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"data:\n  extra_sources:\n    - {{kind: unlabelled_folder, path: {tmp_path / 'nowhere'}}}\n")
    assert main(["run", "--profile", str(profile), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere'}: dataset folder does not exist"
    assert not (tmp_path / "runs" / "default" / "data").exists()
