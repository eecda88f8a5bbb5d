"""configs/real.yaml: the pipeline on real aligned faces given by path (${FACE_DATA_ROOT}, default ../shared/data).

The end-to-end test runs the profile's data, teacher, students and evaluation on a subset with tiny models (the
full profile is `make bench-real`); it skips, naming where it looked, when the real data is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import load_config, profile_path
from pipeline.data.real_data import default_real_data_root, expected_real_data_root
from pipeline.data.store import load_training_set

REAL_ROOT = default_real_data_root()
SUBSET = {
    "data.min_images_per_identity": 2, "data.max_identities": 40,
    "data.verification": [{"kind": "bin", "path": "${FACE_DATA_ROOT}/lfw/dev.bin", "name": "lfw_dev_bin"}],
    "teacher.model_args": {"depth": 1}, "teacher.optim.epochs": 3, "teacher.optim.batch_size": 32,
    "student.model_args": {"width": 0.25}, "distill.optim.epochs": 3, "distill.optim.batch_size": 32,
}


def test_profile_paths_follow_face_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FACE_DATA_ROOT", str(tmp_path))
    config = load_config(profile_path("real"))
    assert config.data.train_path == str(tmp_path / "lfw" / "train")
    assert [v.path for v in config.data.verification] == [str(tmp_path / "lfw" / "dev.bin"), str(tmp_path / "lfw" / "dev_pairs.txt")]
    assert config.data.verification[1].image_root == str(tmp_path / "lfw" / "dev_images")


def test_absent_data_root_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FACE_DATA_ROOT", str(tmp_path / "nowhere"))
    assert main(["run", "--profile", "real", "--runs-dir", str(tmp_path / "runs"), "--until", "data"]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere' / 'lfw' / 'train'}: does not exist" in error and "set FACE_DATA_ROOT" in error


@pytest.mark.slow
@pytest.mark.skipif(REAL_ROOT is None, reason=f"real face data not found at {expected_real_data_root()} (set FACE_DATA_ROOT)")
def test_real_profile_trains_and_evaluates_on_real_faces(tmp_path):
    overrides = [f"--set={key}={json.dumps(value)}" for key, value in SUBSET.items()]
    assert main(["run", "--profile", "real", "--runs-dir", str(tmp_path), "--until", "evaluate", *overrides]) == 0
    run_dir = tmp_path / "real"
    train = load_training_set(run_dir / "data")
    counts = np.bincount(train.labels)
    assert len(counts) == 40 and counts.min() >= 2  # the subset knobs: whole identities with at least 2 faces
    data_summary = json.loads((run_dir / "data" / "manifest.json").read_text())["summary"]
    assert data_summary["source"] == "image_folder"
    assert data_summary["verification_sets"] == {"lfw_dev_bin": {"pairs": 1200, "same": 600}}
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["lfw_dev_bin"]
    assert set(metrics) == {"teacher", "student_nokd", "student"}
    for label, result in metrics.items():
        assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["auc"] <= 1.0, label
    print("real subset accuracy:", {label: round(100 * m["accuracy"], 1) for label, m in metrics.items()})
