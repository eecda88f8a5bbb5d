"""The contract every runner keeps through the base class: `with` releases it (also when the body raises), `infer`
refuses a batch that is not the spec's (one line naming the runner) before the backend sees it, and an embedding of
the wrong shape from a backend is an error, not a result. Real runners: PyTorch and ONNX Runtime on a tiny model."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deploy.runners.base import Runner
from deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from deploy.runners.torch_runner import TorchRunner
from pipeline.preprocess import PreprocessSpec, preprocess

SPEC = PreprocessSpec(height=16, width=16, embedding_dim=8)


def tiny_model() -> nn.Module:
    """Conv 3->8 -> global average pool -> flatten: takes any input size, as real convolutional models do."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(tiny_model(), (torch.zeros(2, 3, SPEC.height, SPEC.width),), str(path), dynamo=False, opset_version=17,
                      input_names=[SPEC.input_name], output_names=[SPEC.output_name],
                      dynamic_axes={SPEC.input_name: {0: "batch"}, SPEC.output_name: {0: "batch"}})
    return path


@pytest.fixture(params=["pytorch", "onnxruntime"])
def make_runner(request: pytest.FixtureRequest, onnx_path: Path) -> Callable[[], Runner]:
    if request.param == "pytorch":
        return lambda: TorchRunner(tiny_model(), SPEC, threads=1)
    return lambda: OnnxRuntimeRunner(onnx_path, SPEC)


def faces(count: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def good_batch() -> np.ndarray:
    return preprocess(faces(2), SPEC)


class CloseCountingRunner(TorchRunner):
    """The real PyTorch runner, counting its closes."""

    closes = 0

    def close(self) -> None:
        self.closes += 1
        super().close()


class WrongWidthRunner(TorchRunner):
    """A backend that returns each embedding twice over: 16 values where the spec says 8."""

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        embeddings = super()._infer(batch)
        return np.concatenate([embeddings, embeddings], axis=1)


class DroppingRunner(TorchRunner):
    """A backend that loses the last face of every batch."""

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return super()._infer(batch)[:-1]


# --- with: the runner is released however the body ends ---------------------------------------------------------------


def test_with_gives_the_runner_and_closes_it_once() -> None:
    runner = CloseCountingRunner(tiny_model(), SPEC, threads=1)
    with runner as entered:
        assert entered is runner and runner.closes == 0
        entered.infer(good_batch())
    assert runner.closes == 1


def test_with_closes_the_runner_when_the_body_raises_and_the_error_goes_on() -> None:
    runner = CloseCountingRunner(tiny_model(), SPEC, threads=1)
    with pytest.raises(KeyError, match="from the body"), runner:
        raise KeyError("from the body")
    assert runner.closes == 1


def test_with_releases_the_onnxruntime_session_also_on_error_and_close_stays_idempotent(onnx_path: Path) -> None:
    with pytest.raises(RuntimeError, match="from the body"), OnnxRuntimeRunner(onnx_path, SPEC) as runner:
        assert runner.session is not None and runner.infer(good_batch()).shape == (2, 8)
        raise RuntimeError("from the body")
    assert runner.session is None
    runner.close()  # a second close after `with` is harmless
    assert runner.session is None


# --- inputs: checked once, in the base class, before the backend runs -------------------------------------------------


def test_a_good_batch_gives_float32_embeddings_of_the_spec(make_runner: Callable[[], Runner]) -> None:
    with make_runner() as runner:
        embeddings = runner.infer(good_batch())
        assert embeddings.dtype == np.float32 and embeddings.shape == (2, SPEC.embedding_dim)
        assert runner.embed(faces(3)).shape == (3, SPEC.embedding_dim)


def test_pytorch_and_onnxruntime_agree_through_the_checked_path(onnx_path: Path) -> None:
    with TorchRunner(tiny_model(), SPEC, threads=1) as reference, OnnxRuntimeRunner(onnx_path, SPEC) as candidate:
        np.testing.assert_allclose(candidate.infer(good_batch()), reference.infer(good_batch()), rtol=1e-4, atol=1e-5)


def _nan_batch() -> np.ndarray:
    batch = good_batch()
    batch[1, 0, 2, 3] = np.nan
    batch[0, 2, 0, 0] = np.inf
    return batch


BAD_BATCHES = {
    "float64": (lambda: good_batch().astype(np.float64), "the batch is float64, expected float32 (as preprocess() returns it)"),
    "uint8 faces": (lambda: faces(2), "the batch is uint8, expected float32 (as preprocess() returns it)"),
    "not an array": (lambda: good_batch().tolist(), "the batch must be a numpy ndarray, got list"),
    "rank 3": (lambda: good_batch()[0], "the batch has 3 dimensions (3, 16, 16), expected 4: (N, 3, 16, 16) (NCHW)"),
    "spatial size": (lambda: preprocess(faces(2, 20), PreprocessSpec(height=20, width=20)),
                     "the batch has shape (2, 3, 20, 20), expected (N, 3, 16, 16) (NCHW)"),
    "NHWC layout": (lambda: np.ascontiguousarray(good_batch().transpose(0, 2, 3, 1)),
                    "the batch has shape (2, 16, 16, 3), expected (N, 3, 16, 16) (NCHW): that is the NHWC layout"),
    "empty": (lambda: good_batch()[:0], "the batch is empty"),
    "NaN and Inf": (_nan_batch, "the batch holds 2 NaN/Inf values"),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_a_bad_batch_is_one_line_naming_the_runner_and_never_reaches_the_backend(
    make_runner: Callable[[], Runner], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_batch, problem = BAD_BATCHES[case]
    with make_runner() as runner:
        reached = []
        monkeypatch.setattr(runner, "_infer", lambda batch: reached.append(batch))
        with pytest.raises(ValueError) as raised:
            runner.infer(make_batch())
    assert str(raised.value) == f"{runner.label}: {problem}"
    assert runner.label in ("pytorch/fp32", "onnxruntime/fp32") and "\n" not in str(raised.value)
    assert reached == []


def test_an_nhwc_spec_takes_nhwc_and_names_an_nchw_batch() -> None:
    spec = PreprocessSpec(height=16, width=16, embedding_dim=8, layout="NHWC")

    class ToNCHW(nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return batch.permute(0, 3, 1, 2)

    with TorchRunner(nn.Sequential(ToNCHW(), tiny_model()), spec, threads=1) as runner:
        assert runner.embed(faces(2)).shape == (2, 8)
        with pytest.raises(ValueError, match=re.escape("pytorch/fp32: the batch has shape (2, 3, 16, 16), expected (N, 16, 16, 3) "
                                                       "(NHWC): that is the NCHW layout")):
            runner.infer(good_batch())


# --- outputs: a backend's embeddings must be (N, embedding_dim) --------------------------------------------------------


def test_a_backend_returning_the_wrong_embedding_width_raises_naming_it() -> None:
    with WrongWidthRunner(tiny_model(), SPEC, threads=1) as runner:
        with pytest.raises(RuntimeError, match=re.escape("pytorch/fp32: the backend returned embeddings of shape (2, 16), expected (2, 8)")):
            runner.infer(good_batch())
        with pytest.raises(RuntimeError, match=re.escape("shape (3, 16), expected (3, 8)")):
            runner.embed(faces(3))  # embed goes through the checked infer, not around it


def test_a_backend_returning_too_few_embeddings_raises() -> None:
    with DroppingRunner(tiny_model(), SPEC, threads=1) as runner, pytest.raises(RuntimeError, match=re.escape("shape (1, 8), expected (2, 8)")):
        runner.infer(good_batch())
