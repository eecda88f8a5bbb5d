"""Stage `report`: report.md and a self-contained report.html with the figures."""

from __future__ import annotations

from benchmarks.report import build_report, config_as_yaml
from pipeline.run_layout import RunLayout
from pipeline.stages.runner import StageContext


def run_report_stage(context: StageContext) -> None:
    build_report(context.run_dir, context.out_dir, config_as_yaml(context.config.model_dump(mode="json")))
    context.summary["report"] = str(RunLayout(context.run_dir).report_file)
