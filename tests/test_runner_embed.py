"""Runner.embed embeds each distinct face once and hands every row its own face's embedding back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy.runners.base import unique_rows
from deploy.runners.torch_runner import TorchRunner
from pipeline.preprocess import PreprocessSpec
from tests.conftest import input_sensitive_student


class CountingTorchRunner(TorchRunner):
    """The real PyTorch runner, counting the faces that reach inference."""

    inferred = 0

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.inferred += len(batch)
        return super()._infer(batch)


def test_repeated_faces_are_embedded_once_and_every_row_gets_its_faces_embedding(one_torch_thread) -> None:
    faces = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    rows = faces[[3, 0, 3, 1, 4, 0, 2, 3]]  # as a .bin holds them: one face per pair side
    runner = CountingTorchRunner(input_sensitive_student(), PreprocessSpec())
    embedded = runner.embed(rows, batch_size=4)
    assert runner.inferred == 5
    alone = TorchRunner(input_sensitive_student(), PreprocessSpec()).embed_rows(faces, batch_size=5)
    np.testing.assert_allclose(embedded, alone[[3, 0, 3, 1, 4, 0, 2, 3]], rtol=1e-4, atol=1e-5)


def test_unique_rows_tells_faces_apart_by_every_pixel() -> None:
    faces = np.zeros((3, 8, 8, 3), np.uint8)
    faces[1, 7, 7, 2] = 1  # one pixel differs
    faces[2] = faces[0]
    first, inverse = unique_rows(faces)
    assert first.tolist() == [0, 1] and inverse.tolist() == [0, 1, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (a curve point taken while training on a GPU)")
def test_a_model_on_the_gpu_embeds_there() -> None:
    faces = np.random.default_rng(1).integers(0, 256, (6, 112, 112, 3), dtype=np.uint8)
    on_host = TorchRunner(input_sensitive_student(), PreprocessSpec()).embed(faces, batch_size=3)
    on_gpu = TorchRunner(input_sensitive_student().cuda(), PreprocessSpec()).embed(faces, batch_size=3)
    cosine = (on_gpu * on_host).sum(1) / np.linalg.norm(on_gpu, axis=1) / np.linalg.norm(on_host, axis=1)
    assert cosine.min() > 0.999  # TF32 convolutions on the GPU, fp32 on the host
