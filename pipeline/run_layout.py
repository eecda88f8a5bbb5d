"""Where a run folder (runs/<run>/) keeps what its stages and tools write: the one module that spells those names.

Why: the layout is a contract between the stages that write it and everything that reads it (the CLI summary, the
report, `python -m pipeline evaluate`, device parity on a phone or Jetson, the Android latency driver). Spelled in
one torch-free module, a rename cannot leave a reader behind, and the deploy side can find a run's files without the
training stack. tests/test_run_layout.py fails when another module spells one of these file names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EXPORTS_FILE = "exports.json"  # export stage: one record per exported artifact
MODEL_MANIFEST = "model_manifest.json"  # export stage: model name and preprocessing spec beside the exported files
METRICS_FILE = "metrics.json"  # evaluate stage: every model on every verification set
LATENCY_FILE = "latency.json"  # benchmark stage (and the Android/Jetson drivers): the latency document
PARITY_FILE = "parity.json"  # parity stage: every export against the PyTorch reference
NATIVE_PARITY_DIR, NATIVE_PARITY_FILE = "native_parity", "native_parity.json"  # the C++ tool's parity rows
DEVICE_PARITY_GLOB = "devices/parity/*.json"  # written by `make parity-android` / the Jetson image, same schema
REPORT_FILE = "report.md"  # report stage (report.html beside it)
ABLATION_DIR = "ablation"  # benchmarks/ablation.py: its table, read by the report
BUDGET_FILE = "budget.json"  # benchmarks/budgeted_run.py: the step count a wall-clock budget gave


def reference_embeddings_name(set_name: str) -> str:
    return f"student_embeddings_{set_name}.npy"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder's shared files (stage folders are named after their stages)."""

    run_dir: Path

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def exports_file(self) -> Path:
        return self.run_dir / "export" / EXPORTS_FILE

    @property
    def model_manifest(self) -> Path:
        return self.run_dir / "export" / MODEL_MANIFEST

    def reference_embeddings_file(self, set_name: str) -> Path:
        """The evaluate stage's PyTorch student embeddings of a verification set: what every parity run compares to."""
        return self.run_dir / "evaluate" / reference_embeddings_name(set_name)

    @property
    def metrics_file(self) -> Path:
        return self.run_dir / "evaluate" / METRICS_FILE

    @property
    def latency_file(self) -> Path:
        return self.run_dir / "benchmark" / LATENCY_FILE

    @property
    def parity_file(self) -> Path:
        return self.run_dir / "parity" / PARITY_FILE

    @property
    def native_parity_file(self) -> Path:
        return self.run_dir / NATIVE_PARITY_DIR / NATIVE_PARITY_FILE

    def device_parity_file(self, name: str) -> Path:
        """Where device parity for the device called `name` goes (a phone's serial, 'jetson-<host>')."""
        return self.run_dir / DEVICE_PARITY_GLOB.rpartition("/")[0] / f"{name}.json"

    def device_parity_files(self) -> list[Path]:
        return sorted(self.run_dir.glob(DEVICE_PARITY_GLOB))

    @property
    def report_file(self) -> Path:
        return self.run_dir / "report" / REPORT_FILE

    @property
    def ablation_dir(self) -> Path:
        return self.run_dir / ABLATION_DIR

    @property
    def budget_file(self) -> Path:
        return self.run_dir / BUDGET_FILE


def failed_parity(parity_payload: dict) -> list[dict]:
    """Results that could run and did not pass: these make the command exit non-zero.

    "skipped" (cannot run here) and "dropped" (an INT8 variant not kept because it missed its gate at export)
    do not count: neither is shipped as a working model.
    """
    return [r for r in parity_payload["results"] if r["status"] in {"fail", "error"}]


def all_parity_results(run_dir: Path) -> dict:
    """Every parity row of a run: the parity stage's, the native tool's (x86, emulated ARM) and devices' files.

    One table in the report and one exit status: a backend that fails on a phone fails like one that fails here.
    """
    layout = RunLayout(run_dir)
    payload = json.loads(layout.parity_file.read_text())
    results = list(payload["results"])
    if layout.native_parity_file.is_file():
        results += json.loads(layout.native_parity_file.read_text())["results"]
    for device_file in layout.device_parity_files():
        results += json.loads(device_file.read_text())["results"]
    return {"verification_set": payload.get("verification_set"), "results": results}
