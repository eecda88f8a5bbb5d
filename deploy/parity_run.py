"""Run the parity gate over every exported artifact: one result per format x precision, never silently dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deploy.formats import get_format
from deploy.parity import ParityResult, check_parity, skipped
from deploy.preprocess import PreprocessSpec
from pipeline.config import ParityConfig
from pipeline.data.arrays import VerificationPairs

log = logging.getLogger(__name__)


def parity_for_exports(
    export_dir: Path,
    records: list[dict],
    spec: PreprocessSpec,
    pairs: VerificationPairs,
    reference: np.ndarray,
    parity: ParityConfig,
    threads: int = 1,
) -> list[ParityResult]:
    """Embed `pairs` with each exported model's runner and gate it against the PyTorch `reference` embeddings."""
    limit = parity.max_images or len(pairs.images)
    limit -= limit % 2
    images, reference = np.asarray(pairs.images[:limit]), reference[:limit]
    subset = VerificationPairs(images, pairs.issame[: limit // 2], pairs.name)
    results = []
    for record in records:
        backend, precision = record["format"], record["precision"]
        if record.get("status") != "exported":
            results.append(ParityResult(backend, precision, "error", f"export failed: {record.get('error', 'unknown error')}"))
            continue
        export_format = get_format(backend)
        runnable, why_not = export_format.runnable_here()
        if not runnable:
            if record.get("validated"):
                facts = ", ".join(f"{k} {v}" for k, v in record["validated"].items())
                why_not = f"prediction skipped: {why_not}; package validated ({facts}, preprocessing metadata)"
            results.append(skipped(backend, precision, why_not))
            log.info("parity %s/%s: skipped: %s", backend, precision, why_not)
            continue
        gate = parity.gates.get(precision)
        if gate is None:
            results.append(ParityResult(backend, precision, "error", f"no parity gate configured for precision {precision!r}"))
            continue
        runner = export_format.make_runner(export_dir, record, spec, threads)
        try:
            candidate = runner.embed(images, batch_size=32, progress=True)
        finally:
            runner.close()
        result = check_parity(backend, precision, reference, candidate, subset, gate)
        log.info("parity %s: %s (cos min %.6f, mean %.6f, max abs %.2e, accuracy delta %+.2f pts)%s", result.label, result.status,
                 result.cosine_min, result.cosine_mean, result.max_abs_diff, result.accuracy_delta_points,
                 f": {result.reason}" if result.reason else "")
        results.append(result)
    return results
