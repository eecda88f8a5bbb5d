"""Check an exported model against its manifest (the preprocessing contract) before any face goes through it.

Convolutional models take other input sizes without complaint and return the wrong number of values, so a
model exported for another size, or a hand-edited manifest, would otherwise surface as a shape error deep in
the parity or benchmark code, or as nonsense embeddings. Each check names the model file and both shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.preprocess import PreprocessSpec


class ModelManifestMismatch(DataError):
    """An exported model whose input or output shape is not the one its manifest declares."""


def manifest_input_shape(spec: PreprocessSpec) -> tuple[int, int, int]:
    """One image's input shape as the manifest declares it, without the batch dimension."""
    return (3, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, 3)


def check_declared_shapes(model_path: str | Path, input_shape: Sequence, output_shape: Sequence | None, spec: PreprocessSpec) -> None:
    """For formats that declare static shapes (ONNX): symbolic dimensions (names, None, -1) match anything."""
    expected = manifest_input_shape(spec)
    declared = list(input_shape)
    if len(declared) != 1 + len(expected) or not all(_fits(dim, want) for dim, want in zip(declared[1:], expected, strict=True)):
        raise ModelManifestMismatch(
            model_path, f"model input is {_shape_text(declared)} but the manifest says [batch, {', '.join(map(str, expected))}] "
            f"({spec.layout}); re-export the model or use the manifest it was exported with")
    if output_shape is not None and len(output_shape) >= 1 and not _fits(list(output_shape)[-1], spec.embedding_dim):
        raise ModelManifestMismatch(
            model_path, f"model output is {_shape_text(list(output_shape))} but the manifest says {spec.embedding_dim}-value embeddings")


def check_probe_embedding(model_path: str | Path, spec: PreprocessSpec, infer: Callable[[np.ndarray], np.ndarray]) -> None:
    """For formats that declare no input shape (ncnn): one blank input of the manifest's size must give one
    embedding of the manifest's length."""
    probe = np.zeros((1, *manifest_input_shape(spec)), dtype=np.float32)
    try:
        values = np.asarray(infer(probe)).size
    except Exception as exc:  # backends raise their own types for an input they cannot take
        raise ModelManifestMismatch(model_path, f"does not run on the manifest's input {_shape_text(probe.shape)} "
                                    f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if values != spec.embedding_dim:
        raise ModelManifestMismatch(
            model_path, f"the manifest's input {_shape_text(probe.shape)} gives {values} output values, not one "
            f"{spec.embedding_dim}-value embedding: the model was exported for another input size or embedding size")


def _fits(declared: object, expected: int) -> bool:
    return not isinstance(declared, int) or declared <= 0 or declared == expected


def _shape_text(shape: Sequence) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"
