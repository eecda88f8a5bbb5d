"""Run the parity gate over every exported artifact: one result per format x precision, never silently dropped.

When a backend fails the numeric gate and its format can list layer outputs (ONNX, ncnn), the worst image is
run through PyTorch and the backend layer by layer, and the first divergent layer goes into the result (and a
one-line summary into its reason).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deploy.formats import get_format
from deploy.parity import ParityResult, check_parity, skipped
from deploy.runners.base import Runner
from pipeline.config import GateConfig, ParityConfig
from pipeline.data.arrays import VerificationPairs
from pipeline.data.store import load_array, load_verification_sets
from pipeline.preprocess import PreprocessSpec
from pipeline.run_layout import ExportRecord, RunLayout

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerChoice:
    """Which runner parity puts an export through: its format's own (the default), or another over the same files
    (the native ncnn tool on this machine, under qemu, or on a phone), with the label its rows carry."""

    label: str
    make_runner: Callable[[Path, ExportRecord, PreprocessSpec, int], Runner]
    layer_outputs: Callable[[Path, ExportRecord, PreprocessSpec, np.ndarray], list] | None = None


def format_runner(format_name: str) -> RunnerChoice:
    export_format = get_format(format_name)
    return RunnerChoice(format_name, export_format.make_runner, export_format.layer_outputs)


def parity_image_rows(issame: np.ndarray, max_images: int | None) -> np.ndarray:
    """Image rows of a parity subset of at most `max_images` images: whole pairs, half same and half different.

    The first pairs of each class in file order, kept in file order. Taking the first N images instead would give
    a block-ordered set (lfw/dev.bin: 300 same, then 300 different, ...) a subset with one class, whose
    verification accuracy is undefined.
    """
    issame = np.asarray(issame, dtype=bool)
    num_pairs = len(issame) if max_images is None else min(len(issame), max_images // 2)
    if num_pairs >= len(issame):
        chosen = np.arange(len(issame))
    else:
        same, different = np.flatnonzero(issame), np.flatnonzero(~issame)
        take_same = min(len(same), max(num_pairs - len(different), (num_pairs + 1) // 2))
        chosen = np.sort(np.concatenate([same[:take_same], different[: num_pairs - take_same]]))
    return np.stack([2 * chosen, 2 * chosen + 1], axis=1).reshape(-1)


def parity_subset(pairs: VerificationPairs, max_images: int | None) -> VerificationPairs:
    """The verification images parity runs on (see `parity_image_rows`)."""
    return _select_rows(pairs, parity_image_rows(pairs.issame, max_images))


def subset_and_reference(pairs: VerificationPairs, reference: np.ndarray, max_images: int | None) -> tuple[VerificationPairs, np.ndarray]:
    """The parity subset and PyTorch's embeddings of exactly those images."""
    rows = parity_image_rows(pairs.issame, max_images)
    return _select_rows(pairs, rows), reference[rows]


def _select_rows(pairs: VerificationPairs, rows: np.ndarray) -> VerificationPairs:
    return VerificationPairs(np.asarray(pairs.images)[rows], np.asarray(pairs.issame)[rows[0::2] // 2], pairs.name)


def parity_inputs(run_dir: Path) -> tuple[PreprocessSpec, VerificationPairs, np.ndarray, nn.Module | None]:
    """What every parity run compares: the export's preprocessing, the first verification set, PyTorch's embeddings
    of it, and the PyTorch student (for localising a failing backend's first bad layer; None where torch is not
    installed, as in the deploy images, which then report a failing backend without localising it)."""
    layout = RunLayout(run_dir)
    spec = PreprocessSpec.load(layout.model_manifest)
    pairs = load_verification_sets(layout.stage_dir("data"))[0]
    reference = load_array(layout.reference_embeddings_file(pairs.name), mmap=False)
    try:
        from pipeline.models.saved import load_model
    except ImportError as exc:
        log.info("parity without the PyTorch student (%s): a failing backend is reported, not localised", exc)
        return spec, pairs, reference, None
    return spec, pairs, reference, load_model(layout.stage_dir("distill"), "student")


def parity_for_exports(
    export_dir: Path,
    records: list[ExportRecord],
    spec: PreprocessSpec,
    pairs: VerificationPairs,
    reference: np.ndarray,
    parity: ParityConfig,
    threads: int = 1,
    model: nn.Module | None = None,
    runner: RunnerChoice | None = None,
) -> list[ParityResult]:
    """Embed `pairs` with each exported model's runner and gate it against the PyTorch `reference` embeddings.

    `model` (the PyTorch student) enables localising the first divergent layer of a failing backend; `runner`
    replaces every format's own runner (the native tool).
    """
    subset, reference = subset_and_reference(pairs, reference, parity.max_images)
    return [parity_for_record(export_dir, record, spec, subset, reference, parity, threads, model, runner) for record in records]


def parity_for_record(
    export_dir: Path,
    record: ExportRecord,
    spec: PreprocessSpec,
    subset: VerificationPairs,
    reference: np.ndarray,
    parity: ParityConfig,
    threads: int = 1,
    model: nn.Module | None = None,
    runner: RunnerChoice | None = None,
) -> ParityResult:
    """One export record -> one result, whatever happened to it (exported, skipped, dropped, failed)."""
    choice = runner or format_runner(record["format"])
    backend, precision = choice.label, record["precision"]
    status = record.get("status")
    if status == "dropped":
        return dropped_result(record)
    if status == "skipped":
        return skipped(backend, precision, record.get("reason", "export skipped"))
    if status != "exported":
        return ParityResult(backend, precision, "error", f"export failed: {record.get('error', 'unknown error')}")
    runnable, why_not = get_format(record["format"]).runnable_here() if runner is None else (True, "")
    if not runnable:
        if record.get("validated"):
            facts = ", ".join(f"{k} {v}" for k, v in record["validated"].items())
            why_not = f"prediction skipped: {why_not}; package validated ({facts}, preprocessing metadata)"
        log.info("parity %s/%s: skipped: %s", backend, precision, why_not)
        result = skipped(backend, precision, why_not)
        result.bytes = record.get("bytes")
        return result
    gate = parity.gates.get(precision)
    if gate is None:
        return ParityResult(backend, precision, "error", f"no parity gate configured for precision {precision!r}")
    try:
        # closing(), not the runner's own `with`: a RunnerChoice may make any object with embed() and close() (a test's fake)
        with closing(choice.make_runner(export_dir, record, spec, threads)) as backend_runner:
            candidate = backend_runner.embed(subset.images, batch_size=32, progress=True)
    except Exception as error:  # a runner that cannot load or run the export is a result, not a crash
        log.error("parity %s/%s: %s", backend, precision, error)
        return ParityResult(backend, precision, "error", f"could not run the export: {type(error).__name__}: {error}")
    try:
        result = check_parity(backend, precision, reference, candidate, subset, gate)
    except Exception as error:  # e.g. embeddings of another shape: a row that says so, not a traceback
        log.error("parity %s/%s: %s", backend, precision, error)
        return ParityResult(backend, precision, "error", f"could not compare with PyTorch: {type(error).__name__}: {error}")
    result.bytes = record.get("bytes")
    if result.cosine_min is not None and result.cosine_min < gate.min_cosine and parity.localize:
        localise_failure(result, choice, export_dir, record, spec, subset, gate, model)
    log.info("parity %s: %s (cos min %.6f, mean %.6f, max abs %.2e, accuracy delta %+.2f pts)%s", result.label, result.status,
             result.cosine_min, result.cosine_mean, result.max_abs_diff, result.accuracy_delta_points,
             f": {result.reason}" if result.reason else "")
    return result


def localise_failure(result: ParityResult, choice: RunnerChoice, export_dir: Path, record: ExportRecord, spec: PreprocessSpec,
              subset: VerificationPairs, gate: GateConfig, model: nn.Module | None) -> None:
    """Name the first layer that diverges on the worst image, where the runner can list its layer outputs."""
    layer_outputs = choice.layer_outputs
    if layer_outputs is None or model is None:
        why = "the format lists no layer outputs" if model is not None else "no PyTorch model given"
        result.details["localisation"] = f"not attempted: {why}"
        return
    from deploy.localize import first_divergent_layer

    worst = int(result.worst_images[0]["image"])
    try:
        divergence = first_divergent_layer(
            model, lambda batch: layer_outputs(export_dir, record, spec, batch), subset.images[worst], spec,
            gate.min_cosine, image_label=worst,
        )
    except Exception as error:  # localisation is a diagnosis; its failure must not hide the parity result
        log.warning("localisation of %s failed: %s", result.label, error)
        result.details["localisation"] = f"failed: {type(error).__name__}: {error}"
        return
    result.first_divergent_layer = divergence.to_dict()
    result.reason = f"{result.reason}; {divergence.summary()} (image {worst})" if result.reason else divergence.summary()
    log.info("parity %s: %s", result.label, divergence.summary())


def dropped_result(record: ExportRecord) -> ParityResult:
    """The parity row of an INT8 export that failed its gate at export time and was not kept."""
    gate_result = dict(record.get("gate_result") or {})
    keep = {key: gate_result.get(key) for key in (
        "num_images", "cosine_min", "cosine_mean", "max_abs_diff", "accuracy_reference", "accuracy_backend",
        "accuracy_delta_points", "pairs_flipped", "worst_images", "gate", "first_divergent_layer")}
    keep = {key: value for key, value in keep.items() if value is not None}
    # The report renders "<status>: <reason>", so the row reads "dropped: failed int8 gate (cos min ..., ...)".
    return ParityResult(record["format"], record["precision"], "dropped", record.get("reason", "failed its gate at export"),
                        bytes=record.get("bytes"), **keep)
