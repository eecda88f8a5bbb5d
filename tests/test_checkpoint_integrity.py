"""Damaged weights never reach a stage's output: checkpoints are verified before a resume (falling back to the one
before), a model with NaN/Inf weights is not saved, a backend's NaN embeddings are a failed parity row naming the
images, and torch's refusal of an unsafe checkpoint keeps its warning."""

from __future__ import annotations

import logging
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deploy.parity import check_parity
from deploy.parity_run import RunnerChoice, parity_for_record
from pipeline.config import MarginConfig, OptimConfig, ParityConfig
from pipeline.data.arrays import VerificationPairs
from pipeline.distill.checkpoint import PREVIOUS_FILE, TENSORS_FILE, CheckpointDamaged, load_checkpoint, resume_checkpoint, save_checkpoint
from pipeline.distill.trainer import TrainingInterrupted, train_recognition_model
from pipeline.errors import DataError
from pipeline.models.saved import NonFiniteWeightsError, load_external_weights, save_model, save_weights
from pipeline.preprocess import PreprocessSpec
from tests.test_trainer import SPEC, small_student, tiny_faces

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train(checkpoint_dir: Path, stop_at: int | None = None) -> tuple[torch.nn.Module, int]:
    """12 steps (3 epochs of 4), a checkpoint every 3 steps and at each epoch end; returns the model and the resumed step."""
    torch.manual_seed(0)
    model = small_student()
    optim = OptimConfig(epochs=3, batch_size=8, lr=0.01, warmup_epochs=0.5, checkpoint_every_steps=3, fused_kernels=False)
    _, result = train_recognition_model(model, tiny_faces(), SPEC, MarginConfig(scale=16.0, m2=0.2), optim, seed=0,
                                        checkpoint_dir=checkpoint_dir,
                                        should_stop=None if stop_at is None else lambda step: step == stop_at)
    return model, result.resumed_from_step


def flip_a_bit_in_the_tensors(path: Path) -> None:
    """XOR one low mantissa bit in the middle of the tensor data: still a finite number, and still a valid file."""
    data = bytearray(path.read_bytes())
    header_size = struct.unpack("<Q", data[:8])[0]
    data[8 + header_size + (len(data) - 8 - header_size) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_newest_checkpoint_falls_back_to_the_previous_one_and_reaches_the_same_weights(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference, _ = train(tmp_path / "straight")
    with pytest.raises(TrainingInterrupted, match="stopped at step 7"):
        train(tmp_path / "damaged", stop_at=7)  # checkpoints at steps 6 (kept as the previous one) and 7
    newest = tmp_path / "damaged" / TENSORS_FILE
    flip_a_bit_in_the_tensors(newest)
    with caplog.at_level(logging.WARNING, logger="pipeline.distill.checkpoint"):
        resumed, resumed_from = train(tmp_path / "damaged")
    assert resumed_from == 6
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.distill.checkpoint"] == [
        f"{newest}: discarded: its tensors do not match the sha256 recorded when it was written (damaged on disk); "
        f"falling back to the previous checkpoint {PREVIOUS_FILE}"]
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_damaged_checkpoints_with_nothing_before_them_start_from_step_0(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, {"weights": torch.arange(1000, dtype=torch.float32), "global_step": 3})
    flip_a_bit_in_the_tensors(folder / TENSORS_FILE)
    with pytest.raises(CheckpointDamaged, match="do not match the sha256"):
        load_checkpoint(folder)
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(folder) is None
    assert caplog.messages == [f"{folder / TENSORS_FILE}: discarded: its tensors do not match the sha256 recorded when it was "
                               "written (damaged on disk); no earlier checkpoint, so training starts from step 0"]
    assert not (folder / TENSORS_FILE).exists()


def test_each_save_keeps_the_checkpoint_it_replaces(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    for step in (1, 2, 3):
        save_checkpoint(folder, {"weights": torch.full((4,), float(step)), "global_step": step})
    assert load_checkpoint(folder)["global_step"] == 3
    (folder / PREVIOUS_FILE).replace(folder / TENSORS_FILE)
    assert load_checkpoint(folder)["global_step"] == 2


def test_a_checkpoint_written_before_digests_still_resumes(tmp_path: Path) -> None:
    """Checkpoints of runs started before this check carry no digest: they resume as before, unverified."""
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, {"weights": torch.ones(3), "global_step": 5})
    from safetensors import safe_open

    with safe_open(str(folder / TENSORS_FILE), framework="pt") as stored:
        metadata = {k: v for k, v in (stored.metadata() or {}).items() if k != "tensors_sha256"}
        tensors = {k: stored.get_tensor(k) for k in stored.keys()}
    save_file(tensors, str(folder / TENSORS_FILE), metadata=metadata)
    assert resume_checkpoint(folder)["global_step"] == 5


def test_a_model_with_non_finite_weights_is_not_saved(tmp_path: Path) -> None:
    model = small_student()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"student \(mobilefacenet\): 1 weight tensors hold NaN or Inf"):
        save_model(tmp_path, "student", model, "mobilefacenet", {})
    assert not (tmp_path / "student.safetensors").exists()
    save_weights(tmp_path / "outside.safetensors", model)  # a user's checkpoint with a NaN is refused on load, naming it
    with pytest.raises(DataError, match=r"outside\.safetensors: 1 weight tensors hold NaN or Inf"):
        load_external_weights(tmp_path / "outside.safetensors")


class NaNRunner:
    """A backend whose embeddings of two images are NaN and Inf."""

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = embeddings

    def embed(self, images: np.ndarray, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out = self.embeddings.copy()
        out[3, 0], out[6, 5] = np.nan, np.inf
        return out

    def close(self) -> None:
        pass


def test_nan_embeddings_from_a_backend_are_a_failed_parity_row_naming_the_images() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((8, 16)).astype(np.float32)
    pairs = VerificationPairs(np.zeros((8, 4, 4, 3), np.uint8), np.array([True, False, True, False]), "toy")
    record = {"format": "onnx", "precision": "fp32", "status": "exported", "files": [], "bytes": 1}
    choice = RunnerChoice("fake", lambda export_dir, record, spec, threads: NaNRunner(reference))
    result = parity_for_record(Path("."), record, PreprocessSpec(height=4, width=4), pairs, reference, ParityConfig(), runner=choice)
    assert result.status == "fail"
    assert result.reason == "the backend gave non-finite embeddings (NaN/Inf) for 2 of 8 images: 3, 6"
    assert result.details["non_finite_images"] == [3, 6]
    named = check_parity("onnx", "fp32", reference, NaNRunner(reference).embed(pairs.images), pairs,
                         ParityConfig().gates["fp32"], image_names=[f"face{i}.png" for i in range(8)])
    assert named.reason.endswith("images: face3.png, face6.png")


def test_an_unsafe_teacher_checkpoint_keeps_torchs_warning(tmp_path: Path) -> None:
    class RunsCode:
        def __reduce__(self):
            return exec, ("pass",)

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": RunsCode()}, protocol=2))
    with pytest.raises(DataError) as raised:
        load_external_weights(evil)
    message = str(raised.value)
    assert message.startswith(f"{evil}: cannot load checkpoint safely (UnpicklingError: Weights only load failed: "
                              "Unsupported global: GLOBAL exec was not an allowed global by default. ")
    assert "\n" not in message and "\x1b" not in message
    assert message.endswith("Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but it can "
                            "result in arbitrary code execution. Do it only if you got the file from a trusted source.)")
