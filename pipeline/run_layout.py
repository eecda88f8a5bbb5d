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
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict  # pydantic validates only this TypedDict on Python < 3.12

from pipeline.artifacts import sha256_json
from pipeline.errors import DataError
from pipeline.export_catalog import FORMAT_SPECS

EXPORTS_FILE = "exports.json"  # export stage: one record per exported artifact
MODEL_MANIFEST = "model_manifest.json"  # export stage: model name and preprocessing spec beside the exported files
METRICS_FILE = "metrics.json"  # evaluate stage: every model on every verification set
LATENCY_FILE = "latency.json"  # benchmark stage (and the Android/Jetson drivers): the latency document
PARITY_FILE = "parity.json"  # parity stage: every export against the PyTorch reference
NATIVE_PARITY_DIR, NATIVE_PARITY_FILE = "native_parity", "native_parity.json"  # the C++ tool's parity rows
DEVICE_PARITY_GLOB = "devices/parity/*.json"  # written by `make parity-android` / the Jetson image, same schema
DEVICE_LATENCY_GLOB = "devices/*.json"  # latency files from phones and boards (benchmarks/android.py, device-benchmark.sh)
DOCKER_DEPLOY_DEVICE = "docker-cpu-deploy"  # `make docker-check`'s device parity name: devices/parity/docker-cpu-deploy.json
EXPORTS_DIGEST = "exports_digest"  # field of device parity and latency files: which export of the run they measured
REPORT_FILE = "report.md"  # report stage (report.html beside it)
ABLATION_DIR = "ablation"  # app/ablation.py: its table, read by the report
BUDGET_FILE = "budget.json"  # app/budgeted_run.py: the step count a wall-clock budget gave


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

    def device_engine_dir(self, name: str) -> Path:
        """TensorRT engines device parity built on the device called `name` (the export folder stays the host's)."""
        return self.run_dir / DEVICE_PARITY_GLOB.partition("/")[0] / "engines" / name

    def device_parity_files(self) -> list[Path]:
        return sorted(self.run_dir.glob(DEVICE_PARITY_GLOB))

    def device_latency_file(self, name: str) -> Path:
        """Where a phone's or board's latency file goes (`android_<serial>`, a Jetson's name)."""
        return self.run_dir / DEVICE_LATENCY_GLOB.rpartition("/")[0] / f"{name}.json"

    def device_latency_files(self) -> list[Path]:
        return sorted(self.run_dir.glob(DEVICE_LATENCY_GLOB))

    @property
    def report_file(self) -> Path:
        return self.run_dir / "report" / REPORT_FILE

    @property
    def ablation_dir(self) -> Path:
        return self.run_dir / ABLATION_DIR

    @property
    def budget_file(self) -> Path:
        return self.run_dir / BUDGET_FILE


ExportStatus = Literal["exported", "skipped", "failed", "dropped"]


def _known_format(name: str) -> str:
    if name not in FORMAT_SPECS:
        raise ValueError(f"unknown export format {name!r}")
    return name


@with_config(ConfigDict(extra="allow"))
class ExportRecord(TypedDict):
    """One format x precision in exports.json, as the export stage writes it and every reader may rely on it.

    A TypedDict (records are JSON documents, read as such by the deploy images) validated by pydantic where it is
    written and where it is read: a status outside `ExportStatus` or a missing file list is an error naming the file,
    not a KeyError three modules later. A format's own facts (opset, blob names, the int8 gate's numbers, ...) ride
    along as extra keys."""

    format: Annotated[str, AfterValidator(_known_format)]
    precision: Literal["fp32", "fp16", "int8"]
    status: ExportStatus
    files: list[str]
    reason: NotRequired[str]  # why skipped or dropped
    error: NotRequired[str]  # why failed
    export_time_s: NotRequired[float]
    bytes: NotRequired[int]


EXPORT_RECORDS = TypeAdapter(list[ExportRecord])


def checked_export_records(records: list[dict], source: Path) -> list[ExportRecord]:
    """`records` validated as export records; a wrong one is a one-line DataError naming `source` and the field."""
    try:
        return EXPORT_RECORDS.validate_python(records)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise DataError(source, f"export record {where}: {error['msg']}") from None


def _export_records_as_written(path: Path) -> list:
    """exports.json's list as the export stage wrote it (not yet checked record by record)."""
    try:
        records = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(path, f"cannot read the export records ({exc.strerror or exc}): run the export stage first") from exc
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(records, list):
        raise DataError(path, "expected a list of export records")
    return records


def read_export_records(export_dir: Path) -> list[ExportRecord]:
    """An export folder's exports.json, checked (a run's export/, or a device's rebuilt copy of it)."""
    path = Path(export_dir) / EXPORTS_FILE
    return checked_export_records(_export_records_as_written(path), path)


def exports_digest(export_dir: Path) -> str:
    """Which export a device measured: the sha256 of the export folder's records as written (canonical JSON).

    The records hold no file hashes, yet every export rewrites them (each one's export time and size, the int8 gate's
    figures), so they tell one export of a run from the next without reading the model files again on a device or for
    every report. Taken from the JSON itself, not the validated records, so that a reader's pydantic cannot move it.
    Writers of device files and the report both call this: one digest, computed one way."""
    path = Path(export_dir) / EXPORTS_FILE
    records = _export_records_as_written(path)
    checked_export_records(records, path)  # a wrong file is an error here too, never a digest
    return sha256_json(records)


def run_exports_digest(run_dir: Path) -> str | None:
    """The digest of the run's current exports; None where the export stage has written none."""
    exports_file = RunLayout(run_dir).exports_file
    return exports_digest(exports_file.parent) if exports_file.is_file() else None


MeasuredExport = Literal["current", "earlier", "unknown"]


def measured_export(document: dict, source: Path, current_digest: str | None) -> MeasuredExport:
    """Whether a device file measured the run's current exports: "earlier" where it measured another export,
    "unknown" where it records none (written before device files recorded their exports). Only "current" is shown."""
    recorded = document.get(EXPORTS_DIGEST)
    if recorded is None:
        return "unknown"
    if not isinstance(recorded, str):
        raise DataError(source, f"{EXPORTS_DIGEST} must be a sha256 hex string, not {type(recorded).__name__}")
    return "current" if recorded == current_digest else "earlier"


def read_device_parity(path: Path) -> dict:
    """A device parity file (the parity stage's schema plus its device tag), checked enough to read its rows."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DataError(path, f"cannot read device parity ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise DataError(path, "not a device parity file (expected an object with a \"results\" list)")
    return document


def failed_parity(parity_payload: dict) -> list[dict]:
    """Results that could run and did not pass: these make the command exit non-zero.

    "skipped" (cannot run here) and "dropped" (an INT8 variant not kept because it missed its gate at export)
    do not count: neither is shipped as a working model.
    """
    return [r for r in parity_payload["results"] if r["status"] in {"fail", "error"}]


def all_parity_results(run_dir: Path) -> dict:
    """Every parity row of a run: the parity stage's, the native tool's (x86, emulated ARM) and devices' files that
    measured the run's current exports (the report lists the others as stale).

    One table in the report and one exit status: a backend that fails on a phone fails like one that fails here.
    """
    layout = RunLayout(run_dir)
    payload = json.loads(layout.parity_file.read_text())
    results = list(payload["results"])
    if layout.native_parity_file.is_file():
        results += json.loads(layout.native_parity_file.read_text())["results"]
    device_files = layout.device_parity_files()
    current = run_exports_digest(run_dir) if device_files else None
    for device_file in device_files:
        document = read_device_parity(device_file)
        if measured_export(document, device_file, current) == "current":
            results += document["results"]
    return {"verification_set": payload.get("verification_set"), "results": results}
