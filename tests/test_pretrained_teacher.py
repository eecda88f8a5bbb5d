"""The shipped teacher: packed fp16 with its record, pinned by sha256, loaded by the default profile instead of training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from app.cli import main
from pipeline.artifacts import sha256_file
from pipeline.config import load_config, profile_path
from pipeline.distill.checkpoint import load_module_weights
from pipeline.models.registry import create_model
from pipeline.models.saved import load_model
from pipeline.pretrained_teacher import pack_teacher


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny profile's data and teacher stages (a 1-block ViT trained for a few steps)."""
    runs_dir = tmp_path_factory.mktemp("runs")
    assert main(["run", "--profile", "tiny", "--runs-dir", str(runs_dir), "--until", "teacher"]) == 0
    return runs_dir / "tiny"


@pytest.fixture(scope="module")
def packed(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    stem = tmp_path_factory.mktemp("pretrained") / "tiny_teacher"
    return stem.with_suffix(".safetensors"), pack_teacher(teacher_run, stem)


def test_packed_teacher_is_fp16_and_embeds_like_the_trained_one(teacher_run: Path, packed: tuple[Path, dict]) -> None:
    path, record = packed
    weights = load_file(str(path))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    assert record["sha256"] == sha256_file(path) and record["bytes"] == path.stat().st_size
    assert record["seed"] == 0 and len(record["data_sha256"]) == 64
    assert record["config"]["teacher"]["model"] == record["model"] == "vit_face_tiny"
    trained = load_model(teacher_run / "teacher", "teacher")
    shipped = create_model(record["model"], **record["model_args"]).eval()
    load_module_weights(shipped, weights, path)
    faces = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 112, 112)).astype(np.float32))
    with torch.inference_mode():
        cosine = torch.nn.functional.cosine_similarity(trained(faces), shipped(faces))
    assert float(cosine.min()) > 0.999


def test_a_pinned_teacher_loads_and_a_different_file_is_one_line_exit_2(packed: tuple[Path, dict], tmp_path: Path, capsys) -> None:
    path, record = packed
    base = ["run", "--profile", "tiny", "--runs-dir", str(tmp_path / "runs"), "--until", "teacher", "--set", f"teacher.checkpoint={path}"]
    assert main([*base, "--set", f"teacher.checkpoint_sha256={record['sha256']}"]) == 0
    manifest = json.loads((tmp_path / "runs" / "tiny" / "teacher" / "manifest.json").read_text())
    assert manifest["summary"]["source"] == "checkpoint"
    capsys.readouterr()
    assert main([*base, "--run-name", "other", "--set", "teacher.checkpoint_sha256=" + "ab" * 32]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the lines before it are the data stage's progress bars
    assert error.startswith(f"error: {path}: sha256 {record['sha256'][:16]}... is not teacher.checkpoint_sha256 abababab")
    assert "make teacher-pretrain" in error


def test_teacher_checkpoint_flag_replaces_the_profiles_pin(packed: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = packed
    profile = yaml.safe_load(profile_path("tiny").read_text())
    profile["teacher"].update({"checkpoint": str(path.with_name("profiles_own_teacher.safetensors")), "checkpoint_sha256": "cd" * 32})
    profile_file = tmp_path / "pinned.yaml"
    profile_file.write_text(yaml.safe_dump(profile))
    assert main(["run", "--profile", str(profile_file), "--runs-dir", str(tmp_path / "runs"), "--until", "teacher",
                 "--teacher-checkpoint", str(path)]) == 0


def test_retraining_the_teacher_in_a_fresh_process_reproduces_the_packed_file_bit_for_bit(tmp_path: Path) -> None:
    """What `make teacher-pretrain` promises at full size, on the tiny profile: same machine, fresh process, same hash."""
    digests = []
    for name in ("first", "second"):
        subprocess.run([sys.executable, "-m", "pipeline", "run", "--profile", "tiny", "--runs-dir", str(tmp_path / name),
                        "--until", "teacher"], check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
        digests.append(pack_teacher(tmp_path / name / "tiny", tmp_path / f"{name}_packed")["sha256"])
    assert digests[0] == digests[1]


def test_a_trained_teacher_records_its_accuracy_curve(tmp_path: Path) -> None:
    assert main(["run", "--profile", "tiny", "--runs-dir", str(tmp_path), "--until", "teacher",
                 "--set", "teacher.optim.eval_every_steps=4"]) == 0
    curve = json.loads((tmp_path / "tiny" / "teacher" / "teacher_curve.json").read_text())
    assert [point["step"] for point in curve][:2] == [4, 8] and all(0 <= point["accuracy"] <= 100 for point in curve)


def test_the_default_profiles_teacher_is_the_shipped_file_it_pins() -> None:
    teacher = load_config(profile_path("default")).teacher
    path = Path(teacher.checkpoint)
    record = json.loads(path.with_suffix(".json").read_text())
    assert sha256_file(path) == teacher.checkpoint_sha256 == record["sha256"]
    assert (record["model"], record["model_args"]) == (teacher.model, teacher.model_args)
    assert path.stat().st_size < 10e6
