"""A stage commits only when it succeeded: a write the machine refuses fails it, keeps its previous results byte for
byte, caches nothing, and says in one line which file could not be written; a missing stage file is one line too."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from torch import nn

from app.cli import print_summary
from app.stages.export_stage import export_one
from deploy.formats import FORMATS, ExportFormat, ExportRequest
from pipeline.artifacts import ArtifactWriteError, write_bytes_atomic
from pipeline.config import RunConfig
from pipeline.errors import DataError
from pipeline.preprocess import PreprocessSpec
from pipeline.stages.common import write_json
from pipeline.stages.runner import Stage, StageContext, StageRunner
from tests.conftest import REPO_ROOT

FREE = r"\d+\.\d MiB free there"
KEPT = "the previous version, if any, is intact"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".lock")


# --- a stage whose write fails ---------------------------------------------------------------------------------------


def two_stages(full_disk: bool = False) -> list[Stage]:
    def first(context: StageContext) -> None:
        (context.out_dir / "value.txt").write_text(str(context.config.seed))

    def second(context: StageContext) -> None:
        target = context.out_dir / "double.txt"
        with open(target, "w") as stream:  # a library writing for itself, not through pipeline.artifacts
            stream.write("half")
            if full_disk:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        target.write_text(str(2 * int((context.input_dir("first") / "value.txt").read_text())))

    return [Stage("first", first, (), ("seed",)), Stage("second", second, ("first",), ())]


def test_enospc_in_a_stage_keeps_its_previous_results_caches_nothing_and_names_the_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "default"
    StageRunner(RunConfig(seed=1), two_stages(), tmp_path).run()
    before = snapshot(run_dir / "second")
    with pytest.raises(ArtifactWriteError) as failed:
        StageRunner(RunConfig(seed=2), two_stages(full_disk=True), tmp_path).run()
    assert re.fullmatch(rf"{re.escape(str(run_dir / 'second' / 'double.txt'))}: could not write it "
                        rf"\(No space left on device \[ENOSPC\], {FREE}\); {KEPT}", str(failed.value))
    assert snapshot(run_dir / "second") == before
    assert leftovers(run_dir) == []  # the staging folder went with the failure
    outcomes = StageRunner(RunConfig(seed=2), two_stages(), tmp_path).run()  # space freed: the same command
    assert [o.status for o in outcomes] == ["cached", "ran"]
    assert (run_dir / "second" / "double.txt").read_text() == "4"


def blob_stages(size: int) -> list[Stage]:
    def blob(context: StageContext) -> None:
        write_bytes_atomic(context.out_dir / "blob.bin", bytes(size))
        context.summary["bytes"] = size

    return [Stage("blob", blob, (), ("seed",))]


def test_the_kernel_refusing_a_write_fails_the_stage_and_keeps_the_previous_results(tmp_path: Path) -> None:
    """RLIMIT_FSIZE in a child process: the kernel itself fails the write (EFBIG), as it would on a full disk."""
    run_dir = tmp_path / "default"
    StageRunner(RunConfig(seed=1), blob_stages(1024), tmp_path).run()
    before = snapshot(run_dir / "blob")
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
        from app.cli import one_line
        from pipeline.config import RunConfig
        from pipeline.errors import PipelineError
        from pipeline.stages.runner import StageRunner
        from tests.test_disk_full import blob_stages
        try:
            StageRunner(RunConfig(seed=2), blob_stages(1 << 20), Path({str(tmp_path)!r})).run()
        except PipelineError as exc:
            print(one_line(exc))
            sys.exit(2)
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"})
    assert child.returncode == 2, child.stderr[-2000:]
    assert re.fullmatch(rf"{re.escape(str(run_dir / 'blob' / 'blob.bin'))}: could not write it "
                        rf"\(File too large \[EFBIG\], {FREE}\); {KEPT}", child.stdout.strip())
    assert snapshot(run_dir / "blob") == before
    assert leftovers(run_dir) == []
    assert [o.status for o in StageRunner(RunConfig(seed=2), blob_stages(1 << 20), tmp_path).run()] == ["ran"]


# --- the export stage ------------------------------------------------------------------------------------------------


SPEC = PreprocessSpec(height=16, width=16, embedding_dim=8)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 8))


def onnx_export_stage(context: StageContext) -> None:
    """The export stage's loop over one format: ONNX fp32 of a tiny model, then its records."""
    record = export_one(FORMATS["onnx"], ExportRequest(tiny_model(), SPEC, context.out_dir, "fp32"))
    write_json(context.out_dir, "exports.json", [{k: record[k] for k in ("format", "precision", "status", "files")}])


def test_a_full_disk_during_export_fails_the_stage_instead_of_committing_failed_rows(tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "default"
    StageRunner(RunConfig(seed=1), [Stage("export", onnx_export_stage, (), ("seed",))], tmp_path).run()
    before = snapshot(run_dir / "export")
    assert json.loads(before["exports.json"])[0]["status"] == "exported"

    real_save = onnx.save

    def full_disk(proto: onnx.ModelProto, path: str, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(proto.SerializeToString()[:100])  # some of it reaches the disk, then it is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(onnx, "save", full_disk)
    with pytest.raises(ArtifactWriteError) as failed:
        StageRunner(RunConfig(seed=2), [Stage("export", onnx_export_stage, (), ("seed",))], tmp_path).run()
    assert re.fullmatch(rf"{re.escape(str(run_dir / 'export' / 'student_fp32.onnx'))}: could not write it "
                        rf"\(No space left on device \[ENOSPC\], {FREE}\); {KEPT}", str(failed.value))
    assert snapshot(run_dir / "export") == before  # the good export is still there, its manifest included
    assert leftovers(run_dir) == []

    monkeypatch.setattr(onnx, "save", real_save)  # space freed: the same command redoes the export
    outcomes = StageRunner(RunConfig(seed=2), [Stage("export", onnx_export_stage, (), ("seed",))], tmp_path).run()
    assert [o.status for o in outcomes] == ["ran"]
    assert json.loads((run_dir / "export" / "manifest.json").read_text())["config"] == {"seed": 2}


def failing_format(error: Exception) -> ExportFormat:
    def export(request: ExportRequest) -> dict:
        raise error

    return dataclasses.replace(FORMATS["ncnn"], export=export)


def test_a_converter_failure_stays_a_per_format_row(tmp_path: Path) -> None:
    record = export_one(failing_format(RuntimeError("pnnx failed (exit 1): unsupported operator aten::foo")),
                        ExportRequest(tiny_model(), SPEC, tmp_path, "fp16"))
    assert record["status"] == "failed" and record["files"] == []
    assert record["error"] == "RuntimeError: pnnx failed (exit 1): unsupported operator aten::foo"


def test_a_write_fault_inside_a_converter_names_the_export_not_the_tools_scratch_file(tmp_path: Path) -> None:
    """A tool that wraps the OSError of its own scratch file (here under the same disk) still fails the stage."""
    scratch = tmp_path / "pnnx-1234" / "student.pt"
    try:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(scratch))
    except OSError as quota:
        wrapped = RuntimeError(f"trace failed: {quota}")
        wrapped.__cause__ = quota
    with pytest.raises(ArtifactWriteError) as failed:
        export_one(failing_format(wrapped), ExportRequest(tiny_model(), SPEC, tmp_path / "export", "fp16"))
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'export' / 'student_fp16.ncnn.param'))}: could not write it "
                        rf"\(Disk quota exceeded \[EDQUOT\], {FREE}\); {KEPT}", str(failed.value))


# --- a stage file gone missing when the CLI prints its summary -------------------------------------------------------


def finished_run(run_dir: Path) -> Path:
    (run_dir / "report").mkdir(parents=True)
    (run_dir / "report" / "report.md").write_text("# report\n")
    scores = {"accuracy": 0.9, "accuracy_std": 0.01}
    write_json(run_dir / "evaluate", "metrics.json", {"pairs": {"student": scores, "student_nokd": {**scores, "accuracy": 0.8}}})
    write_json(run_dir / "parity", "parity.json", {"verification_set": "pairs", "results": []})
    return run_dir


def test_a_missing_latency_file_skips_the_summary_table_with_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    run_dir = finished_run(tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        assert print_summary(run_dir) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"summary table skipped: {run_dir / 'benchmark' / 'latency.json'}: cannot read latency results (No such file or directory)"]
    assert "Report: " in capsys.readouterr().out


def test_missing_parity_results_are_one_line_naming_the_file(tmp_path: Path) -> None:
    run_dir = finished_run(tmp_path / "run")
    (run_dir / "parity" / "parity.json").unlink()
    with pytest.raises(DataError) as failed:
        print_summary(run_dir)
    assert str(failed.value) == (f"{run_dir / 'parity' / 'parity.json'}: cannot read it (No such file or directory); "
                                 "rerun the stage that writes it")
