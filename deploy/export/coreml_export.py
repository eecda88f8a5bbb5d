"""Export the student to a CoreML ML Program (.mlpackage) that carries its preprocessing spec.

The package is a folder, so "atomic" means: build it completely in a staging folder beside the target, then
swap it in with renames; a crash leaves either the old package or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import coremltools as ct
import numpy as np
import torch

from pipeline.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

COREML_PRECISIONS = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}
# ML Programs need iOS15+; iOS16 / macOS13 also allows fp16 inputs/outputs, should a later export want them.
COREML_MINIMUM_TARGET = ct.target.iOS16
COREML_MINIMUM_TARGET_NAME = "iOS16"


def export_coreml(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    out_path: Path,
    precision: str = "fp32",
    max_batch: int | None = 64,
) -> dict:
    """Trace at batch 1 and convert; the batch dimension is flexible (1..max_batch) unless that fails.

    Inputs and outputs stay float32 at the interface whatever the compute precision, so callers feed the same
    preprocessed arrays to every backend. `max_batch=None` asks for a fixed batch of 1.
    """
    if precision not in COREML_PRECISIONS:
        raise ValueError(f"CoreML precision must be one of {sorted(COREML_PRECISIONS)}, got {precision!r}")
    if spec.layout != "NCHW":
        raise ValueError(f"CoreML export needs an NCHW spec, got {spec.layout}")
    out_path = Path(out_path)
    if out_path.suffix != ".mlpackage":
        raise ValueError(f"an ML Program is saved as a .mlpackage folder, got {out_path}")
    started = time.perf_counter()
    traced = _trace(model, spec)
    mlmodel, batch_info, conversion_warnings = _convert_with_batch_fallback(traced, spec, precision, max_batch)
    convert_seconds = time.perf_counter() - started
    _describe(mlmodel, spec, precision)
    _save_package_atomic(mlmodel, out_path)
    total_seconds = time.perf_counter() - started
    result = {
        "path": out_path,
        "precision": precision,
        "input_name": spec.input_name,
        "input_shape": [1, 3, spec.height, spec.width],  # the default shape; batch_range says what else is allowed
        "output_name": spec.output_name,
        "output_shape": [1, spec.embedding_dim],
        **batch_info,
        "minimum_deployment_target": COREML_MINIMUM_TARGET_NAME,
        "package_bytes": sum(f.stat().st_size for f in out_path.rglob("*") if f.is_file()),
        "convert_seconds": round(convert_seconds, 3),
        "export_seconds": round(total_seconds, 3),
        "coremltools_version": ct.__version__,
        "warnings": conversion_warnings,
    }
    logger.info(
        "CoreML %s export: traced %s, converted in %.1f s (batch %s), wrote %s (%d B) in %.1f s total",
        precision, type(model).__name__, convert_seconds,
        batch_info["batch_range"] if batch_info["flexible_batch"] else "fixed 1", out_path, result["package_bytes"],
        total_seconds,
    )
    return result


def _trace(model: torch.nn.Module, spec: PreprocessSpec) -> torch.jit.ScriptModule:
    was_training = model.training
    model.eval()
    try:
        example_input = torch.randn(1, 3, spec.height, spec.width, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return torch.jit.trace(model, example_input)
    finally:
        model.train(was_training)


def _convert_with_batch_fallback(
    traced: torch.jit.ScriptModule, spec: PreprocessSpec, precision: str, max_batch: int | None
) -> tuple[ct.models.MLModel, dict, list[str]]:
    """Convert with a flexible batch (ct.RangeDim); if that fails, convert at batch 1 and record why."""
    fallback_reason = None
    if max_batch is not None and max_batch > 1:
        batch_dim = ct.RangeDim(lower_bound=1, upper_bound=max_batch, default=1, symbol="batch")
        try:
            mlmodel, caught = _convert(traced, spec, precision, batch_dim)
            return mlmodel, {"flexible_batch": True, "batch_range": [1, max_batch], "batch_fallback": None}, caught
        except Exception as error:  # noqa: BLE001 - any converter failure means: retry with a fixed batch
            fallback_reason = f"{type(error).__name__}: {error}"
            logger.warning("CoreML flexible batch failed (%s); converting at batch 1", fallback_reason)
    mlmodel, caught = _convert(traced, spec, precision, 1)
    return mlmodel, {"flexible_batch": False, "batch_range": None, "batch_fallback": fallback_reason}, caught


def _convert(
    traced: torch.jit.ScriptModule, spec: PreprocessSpec, precision: str, batch_dim: int | ct.RangeDim
) -> tuple[ct.models.MLModel, list[str]]:
    # coremltools logs every converted op at INFO; keep its own warnings, drop the per-op chatter.
    with warnings.catch_warnings(record=True) as caught, _quieter_logger("coremltools", logging.WARNING):
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", ResourceWarning)  # coremltools' own temp folders, not ours
        mlmodel = ct.convert(
            traced,
            convert_to="mlprogram",
            inputs=[
                ct.TensorType(name=spec.input_name, shape=(batch_dim, 3, spec.height, spec.width), dtype=np.float32)
            ],
            outputs=[ct.TensorType(name=spec.output_name, dtype=np.float32)],
            compute_precision=COREML_PRECISIONS[precision],
            minimum_deployment_target=COREML_MINIMUM_TARGET,
        )
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    for message in messages:
        logger.warning("coremltools: %s", message)
    return mlmodel, messages


@contextlib.contextmanager
def _quieter_logger(name: str, level: int) -> Iterator[None]:
    target = logging.getLogger(name)
    previous = target.level
    target.setLevel(max(level, previous))
    try:
        yield
    finally:
        target.setLevel(previous)


def _describe(mlmodel: ct.models.MLModel, spec: PreprocessSpec, precision: str) -> None:
    """Metadata a deployer reads in Xcode: what the input must be and what comes out."""
    mlmodel.short_description = (
        f"Face embedding ({spec.embedding_dim}-d, not L2-normalised) from a {spec.height}x{spec.width} aligned face; "
        f"{precision} compute."
    )
    mlmodel.author = "face distill-and-export pipeline (MobileFaceNet student)"
    mlmodel.input_description[spec.input_name] = (
        f"{spec.color_order} face, NCHW float32, (pixel - mean) / std with mean {list(spec.mean)} std {list(spec.std)}"
    )
    mlmodel.output_description[spec.output_name] = f"(N, {spec.embedding_dim}) embedding; L2-normalise before cosine"
    mlmodel.user_defined_metadata["preprocess"] = json.dumps(spec.to_dict(), sort_keys=True)
    mlmodel.user_defined_metadata["precision"] = precision


def _save_package_atomic(mlmodel: ct.models.MLModel, out_path: Path) -> None:
    """Save into a staging folder beside `out_path`, then swap by rename; the old package goes only after."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.stem}.", suffix=".staging", dir=out_path.parent))
    try:
        new_package = staging / out_path.name
        mlmodel.save(str(new_package))
        previous = staging / f"previous{out_path.suffix}"
        if out_path.exists():
            out_path.rename(previous)
        try:
            new_package.rename(out_path)
        except OSError:
            if previous.exists():
                previous.rename(out_path)
            raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
