"""configs/real.yaml: a pretrained EdgeFace teacher distilled on real aligned faces given by path (${FACE_DATA_ROOT},
${FACE_MODELS_ROOT}, default ../shared/data and ../shared/models).

The end-to-end test runs the profile's data, teacher, students and evaluation on a subset with a narrow student and a
few steps (the full profile is `make bench-real`); it skips, naming where it looked, when the real data is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.cli import main
from pipeline.config import load_config, profile_path
from pipeline.data.real_data import default_models_root, default_real_data_root, expected_models_root, expected_real_data_root
from pipeline.data.store import load_training_set

REAL_ROOT = default_real_data_root()
MODELS_ROOT = default_models_root()
SUBSET = {
    "data.min_images_per_identity": 2, "data.max_identities": 40,
    "data.extra_sources": [{"kind": "image_folder", "path": "${FACE_DATA_ROOT}/celeba299", "name": "celeba299", "max_images": 60,
                            "labelled": False}],
    "data.verification": [{"kind": "bin", "path": "${FACE_DATA_ROOT}/lfw/dev.bin", "name": "lfw_dev_bin"}],
    "student.model_args": {"width": 0.25}, "distill.optim.max_steps": 4, "distill.optim.batch_size": 32,
    "distill.optim.eval_every_steps": 2,
}


def test_profile_paths_follow_face_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FACE_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("FACE_MODELS_ROOT", str(tmp_path / "models"))
    config = load_config(profile_path("real"))
    assert config.data.train_path == str(tmp_path / "lfw" / "train")
    assert config.data.extra_sources[0].path == str(tmp_path / "celeba299")
    assert config.teacher.checkpoint == str(tmp_path / "models" / "edgeface" / "edgeface_xs_q.pt")
    assert [v.path for v in config.data.verification] == [str(tmp_path / "lfw" / "dev.bin"), str(tmp_path / "lfw" / "dev_pairs.txt")]
    assert config.data.verification[1].image_root == str(tmp_path / "lfw" / "dev_images")


def test_absent_data_root_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FACE_DATA_ROOT", str(tmp_path / "nowhere"))
    assert main(["run", "--profile", "real", "--runs-dir", str(tmp_path / "runs"), "--until", "data"]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere' / 'lfw' / 'train'}: does not exist" in error and "set FACE_DATA_ROOT" in error


def test_absent_models_root_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FACE_DATA_ROOT", str(REAL_ROOT or tmp_path))
    monkeypatch.setenv("FACE_MODELS_ROOT", str(tmp_path / "no-models"))
    if REAL_ROOT is None:  # make the data paths exist so the checkpoint is the first thing missing
        for folder in ("lfw/train", "celeba299", "lfw/dev_images"):
            (tmp_path / folder).mkdir(parents=True)
        for name in ("lfw/dev.bin", "lfw/dev_pairs.txt"):
            (tmp_path / name).write_bytes(b"")
    assert main(["run", "--profile", "real", "--runs-dir", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"error: {tmp_path / 'no-models' / 'edgeface' / 'edgeface_xs_q.pt'}: does not exist: {tmp_path / 'no-models'} "
                     "(FACE_MODELS_ROOT, default shared/models beside the repository) does not hold it; set FACE_MODELS_ROOT to "
                     "the folder with edgeface/")
    assert not (tmp_path / "runs" / "real" / "data").exists()


@pytest.mark.slow
@pytest.mark.skipif(REAL_ROOT is None or MODELS_ROOT is None,
                    reason=f"real face data or EdgeFace not found ({expected_real_data_root()}, {expected_models_root()}; "
                           "set FACE_DATA_ROOT / FACE_MODELS_ROOT)")
def test_real_profile_distils_edgeface_on_real_faces(tmp_path):
    overrides = [f"--set={key}={json.dumps(value)}" for key, value in SUBSET.items()]
    assert main(["run", "--profile", "real", "--runs-dir", str(tmp_path), "--until", "evaluate", *overrides]) == 0
    run_dir = tmp_path / "real"
    train = load_training_set(run_dir / "data")
    labelled = train.labels[train.labels >= 0]
    counts = np.bincount(labelled)
    assert len(counts) == 40 and counts.min() >= 2  # the subset knobs: whole identities with at least 2 faces
    assert (train.labels == -1).sum() == 60  # celeba299's first 60 faces, unlabelled: distillation inputs only
    data_summary = json.loads((run_dir / "data" / "manifest.json").read_text())["summary"]
    assert data_summary["source"] == "image_folder" and set(data_summary["train_sources"]) == {"train", "celeba299"}
    assert data_summary["verification_sets"] == {"lfw_dev_bin": {"pairs": 1200, "same": 600}}
    distill = json.loads((run_dir / "distill" / "manifest.json").read_text())["summary"]["student"]
    assert distill["teacher_signals"] == "live" and distill["augment"] and distill["margin_weight"] == 0.0
    curve = json.loads((run_dir / "distill" / "student_curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4] and all(0 <= p["accuracy"] <= 100 for p in curve)
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["lfw_dev_bin"]
    assert set(metrics) == {"teacher", "student_nokd", "student"}
    assert metrics["teacher"]["accuracy"] >= 0.988  # EdgeFace-XS, scored by the evaluate stage
    for label, result in metrics.items():
        assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["auc"] <= 1.0, label
    print("real subset accuracy:", {label: round(100 * m["accuracy"], 1) for label, m in metrics.items()})
