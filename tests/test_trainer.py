"""The shared training loop: it learns, it resumes to the same weights, and it stops cleanly on a NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import MarginConfig, OptimConfig
from pipeline.data.arrays import FaceArrays
from pipeline.distill.losses import create_loss
from pipeline.distill.teacher_signals import TeacherSignals
from pipeline.distill.trainer import NonFiniteLossError, TrainingInterrupted, WeightedLoss, train_recognition_model
from pipeline.errors import ConfigError
from pipeline.models.registry import create_model
from pipeline.preprocess import PreprocessSpec

SPEC = PreprocessSpec(height=32, width=32)


def tiny_faces(num_identities: int = 4, per_identity: int = 8) -> FaceArrays:
    """Identity = a coloured blob position; enough signal for a few steps to reduce the loss."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for identity in range(num_identities):
        for _ in range(per_identity):
            image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            row, col = divmod(identity, 2)
            image[row * 16 : row * 16 + 16, col * 16 : col * 16 + 16, identity % 3] = 220
            images.append(image)
            labels.append(identity)
    return FaceArrays(np.stack(images), np.array(labels, dtype=np.int64))


def small_student() -> torch.nn.Module:
    return create_model("mobilefacenet", width=0.25, input_size=32, embedding_dim=32)


def train(checkpoint_dir, max_steps, losses=None, teacher=None, epochs=6, stop_at=None):
    torch.manual_seed(0)
    model = small_student()
    optim = OptimConfig(epochs=epochs, batch_size=8, lr=0.01, warmup_epochs=0.5, checkpoint_every_steps=3, max_steps=max_steps)
    head, result = train_recognition_model(model, tiny_faces(), SPEC, MarginConfig(scale=16.0, m2=0.2), optim, seed=0,
                                           checkpoint_dir=checkpoint_dir, distill_losses=losses, teacher=teacher,
                                           should_stop=None if stop_at is None else lambda step: step == stop_at)
    return model, head, result


def test_margin_loss_decreases(tmp_path):
    _, _, result = train(tmp_path / "ckpt", max_steps=None)
    assert result.history[-1]["margin"] < result.history[0]["margin"]


def test_resume_reaches_the_same_weights(tmp_path):
    reference, _, _ = train(tmp_path / "straight", max_steps=None)
    with pytest.raises(TrainingInterrupted, match="stopped at step 7"):
        train(tmp_path / "interrupted", max_steps=None, stop_at=7)  # mid-epoch (4 steps per epoch), off the every-3 cadence
    resumed, _, result = train(tmp_path / "interrupted", max_steps=None)
    assert result.resumed_from_step == 7
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_embedding_kd_pulls_student_towards_teacher(tmp_path):
    faces = tiny_faces()
    rng = np.random.default_rng(1)
    teacher = TeacherSignals(np.repeat(rng.standard_normal((len(faces.labels), 1, 32)).astype(np.float32), 2, axis=1))
    losses = [WeightedLoss("embedding_kd", 5.0, create_loss("embedding_kd"))]
    _, _, result = train(tmp_path / "kd", max_steps=None, losses=losses, teacher=teacher, epochs=8)
    assert result.history[-1]["embedding_kd"] < result.history[0]["embedding_kd"]


def test_distill_loss_without_teacher_is_refused(tmp_path):
    losses = [WeightedLoss("embedding_kd", 1.0, create_loss("embedding_kd"))]
    with pytest.raises(Exception, match="needs teacher embeddings"):
        train(tmp_path / "x", max_steps=1, losses=losses)


def test_unknown_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown distillation loss 'fancy_kd'"):
        create_loss("fancy_kd")


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    faces = tiny_faces()
    poisoned = np.ones((len(faces.labels), 2, 32), dtype=np.float32)
    poisoned[faces.labels == 3] = np.nan  # identity 3's teacher signal is NaN: the first batch holding it fails
    losses = [WeightedLoss("embedding_kd", 1.0, create_loss("embedding_kd"))]
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step \d+ \(epoch 0\)") as error:
        train(tmp_path / "nan", max_steps=None, losses=losses, teacher=TeacherSignals(poisoned))
    assert str(tmp_path / "nan") in str(error.value)


def test_learning_rate_schedule_warms_up_then_decays():
    from pipeline.distill.trainer import learning_rate

    rates = [learning_rate(step, 100, 10, 1.0) for step in range(100)]
    assert rates[0] < rates[9] <= 1.0
    assert rates[10] > rates[50] > rates[99] >= 0.01
