"""Online augmentation: each face's view depends on its own seed alone (so resume and data-parallel ranks augment as
one uninterrupted run does), every part can be turned off, and the teacher sees exactly the student's view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import AugmentConfig, MarginConfig, OptimConfig
from pipeline.data.arrays import FaceArrays
from pipeline.distill.augment import augment_faces
from pipeline.distill.batches import epoch_batches
from pipeline.distill.losses import create_loss
from pipeline.distill.teacher_signals import FrozenTeacher
from pipeline.distill.trainer import WeightedLoss, train_recognition_model
from pipeline.errors import PipelineError
from pipeline.models.registry import create_model
from pipeline.preprocess import PreprocessSpec

OFF = AugmentConfig(scale=0, shift=0, rotate_degrees=0, brightness=0, contrast=0, saturation=0, grayscale_probability=0,
                    blur_probability=0, jpeg_probability=0, occlusion_probability=0)


def faces(count: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_row_depends_on_its_seed_alone():
    images, seeds = faces(), np.arange(100, 108, dtype=np.uint64)
    whole = augment_faces(images, seeds, AugmentConfig())
    part = augment_faces(images[[5, 2]], seeds[[5, 2]], AugmentConfig())
    np.testing.assert_array_equal(part, whole[[5, 2]])
    np.testing.assert_array_equal(augment_faces(images, seeds, AugmentConfig()), whole)
    assert whole.dtype == np.uint8 and whole.shape == images.shape
    assert not np.array_equal(augment_faces(images, seeds + 1, AugmentConfig()), whole)


def test_everything_off_is_the_identity():
    images = faces()
    np.testing.assert_array_equal(augment_faces(images, np.arange(8, dtype=np.uint64), OFF), images)


@pytest.mark.parametrize("part", ["shift", "brightness", "grayscale_probability", "jpeg_probability", "occlusion_probability"])
def test_each_part_changes_faces(part):
    value = {"shift": 0.2, "brightness": 0.5}.get(part, 1.0)
    config = OFF.model_copy(update={part: value})
    images = faces(16)
    changed = augment_faces(images, np.arange(16, dtype=np.uint64), config)
    assert (changed != images).any(axis=(1, 2, 3)).mean() > 0.5, part


def test_occlusion_is_a_grey_box():
    config = OFF.model_copy(update={"occlusion_probability": 1.0, "occlusion_size": (0.5, 0.5)})
    occluded = augment_faces(faces(4), np.arange(4, dtype=np.uint64), config)
    assert ((occluded == 128).all(axis=-1).sum(axis=(1, 2)) >= 16 * 16).all()


def test_bad_ranges_are_config_errors():
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentConfig(jpeg_quality=(90, 30))
    with pytest.raises(ValueError, match="occlusion_size"):
        AugmentConfig(occlusion_size=(0.0, 0.2))


def test_batches_carry_seeds_without_changing_order_or_flips():
    batches = list(epoch_batches(20, 5, seed=3, epoch=1, hflip=True))
    rng = np.random.default_rng([3, 1])
    order, flips = rng.permutation(20), rng.random(20) < 0.5
    np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), order)
    np.testing.assert_array_equal(np.concatenate([b.flipped for b in batches]), flips[order])
    seeds = np.concatenate([b.augment_seeds for b in batches])
    assert len(set(seeds.tolist())) == 20


class RecordingTeacher(torch.nn.Module):
    """A teacher that remembers every batch it embedded (to compare with what the student saw)."""

    def __init__(self):
        super().__init__()
        self.embedding_dim = 32
        self.projection = torch.nn.Linear(3 * 32 * 32, 32)
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.detach().clone())
        return self.projection(images.flatten(1))


def test_live_teacher_sees_the_students_augmented_view_and_resume_is_exact(tmp_path, one_torch_thread):
    rng = np.random.default_rng(0)
    train_set = FaceArrays(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(4), 4))
    optim = OptimConfig(epochs=2, batch_size=8, lr=0.01, warmup_epochs=0.5, checkpoint_every_steps=1, augment=AugmentConfig())

    def run(folder, stop_at=None):
        torch.manual_seed(0)
        student = create_model("mobilefacenet", width=0.25, input_size=32, embedding_dim=32)
        teacher = RecordingTeacher()
        captured = []
        student.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().clone()))
        try:
            train_recognition_model(student, train_set, PreprocessSpec(height=32, width=32), MarginConfig(scale=16.0, m2=0.2), optim, 0,
                                    tmp_path / folder, [WeightedLoss("embedding_kd", 1.0, create_loss("embedding_kd"))],
                                    FrozenTeacher(teacher), margin_weight=0.0,
                                    should_stop=None if stop_at is None else lambda step: step == stop_at)
        except PipelineError:
            pass
        return student, teacher, captured

    student, teacher, captured = run("straight")
    assert len(teacher.seen) == 4
    for seen, student_input in zip(teacher.seen, captured):
        torch.testing.assert_close(seen, student_input, rtol=0, atol=0)
    run("resumed", stop_at=1)
    resumed, _, _ = run("resumed")
    for name, tensor in student.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_cached_signals_refuse_augmentation(tmp_path):
    from pipeline.distill.teacher_signals import TeacherSignals

    train_set = FaceArrays(faces(8), np.repeat(np.arange(2), 4))
    signals = TeacherSignals(np.zeros((8, 2, 32), np.float32))
    with pytest.raises(PipelineError, match="augmentation needs a live teacher"):
        train_recognition_model(create_model("mobilefacenet", width=0.25, input_size=32, embedding_dim=32), train_set,
                                PreprocessSpec(height=32, width=32), MarginConfig(), OptimConfig(augment=AugmentConfig()), 0,
                                tmp_path, [WeightedLoss("embedding_kd", 1.0, create_loss("embedding_kd"))], signals)


def test_training_tensor_is_preprocess_of_the_augmented_faces():
    """The device-side normalisation is `preprocess`'s arithmetic: training sees what every runner would be fed."""
    from pipeline.distill.batches import images_to_tensor
    from pipeline.preprocess import preprocess

    images, seeds, flipped = faces(6, 112), np.arange(6, dtype=np.uint64), np.array([0, 1, 0, 1, 1, 0], bool)
    for spec in (PreprocessSpec(), PreprocessSpec(color_order="BGR", mean=(1.0, 2.0, 3.0), std=(50.0, 60.0, 70.0))):
        mirrored = images.copy()
        mirrored[flipped] = mirrored[flipped, :, ::-1]
        expected = preprocess(augment_faces(mirrored, seeds, AugmentConfig()), spec)
        np.testing.assert_array_equal(images_to_tensor(images, flipped, spec, AugmentConfig(), seeds).numpy(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (augmentation on the training GPU)")
def test_gpu_augmentation_matches_the_host():
    """On a GPU the same seeds give the same views, up to a rounding step of the resampling."""
    from pipeline.distill.augment import augment_pixels

    images, seeds = faces(16, 112), np.arange(16, dtype=np.uint64)
    config = AugmentConfig(jpeg_probability=0.5)
    on_gpu = augment_pixels(torch.from_numpy(images).cuda().permute(0, 3, 1, 2), seeds, config).permute(0, 2, 3, 1).cpu()
    difference = (on_gpu.int() - torch.from_numpy(augment_faces(images, seeds, config)).int()).abs()
    assert difference.float().mean() < 0.05 and difference.max() <= 64  # JPEG can move an edge pixel of a rounded row
