"""Command line: `python -m pipeline run --profile default` runs (or resumes) the whole pipeline."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pipeline.config import load_config, profile_path
from pipeline.errors import DataError, PipelineError
from pipeline.run_layout import RunLayout

log = logging.getLogger("pipeline")
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    from app.stages import STAGE_NAMES

    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the staged pipeline; fresh stages are skipped")
    run.add_argument("--profile", default="default", help="configs/<name>.yaml or a path to a YAML file")
    run.add_argument("--runs-dir", default="runs", type=Path, help="where runs/<run-name>/<stage>/ are written")
    run.add_argument("--run-name", help="override the profile's run_name")
    run.add_argument("--from", dest="from_stage", choices=STAGE_NAMES, help="rerun this stage and every later one from scratch (their checkpoints are discarded)")
    run.add_argument("--until", choices=STAGE_NAMES, help="stop after this stage")
    run.add_argument("--force", action="store_true", help="rerun every stage from scratch, ignoring the cache and checkpoints; "
                     "without it, a rerun after a kill or Ctrl-C resumes from the last checkpoint")
    run.add_argument("--teacher-checkpoint", type=Path, help="use this trained teacher (safetensors or torch weights) instead of training one")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set distill.optim.epochs=2 (value parsed as JSON when it can be)")
    from app.evaluate_cli import add_evaluate_parser
    from pipeline.align.cli import add_align_parser
    from pipeline.pretrained_teacher import add_pack_teacher_parser

    add_align_parser(commands)
    add_evaluate_parser(commands)
    add_pack_teacher_parser(commands)
    return parser


def parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise PipelineError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_command(args: argparse.Namespace) -> int:
    from app.stages import STAGES
    from pipeline.distill.distributed import init_from_environment, shutdown
    from pipeline.stages.runner import StageRunner

    overrides = parse_overrides(args.overrides)
    if args.run_name:
        overrides["run_name"] = args.run_name
    if args.teacher_checkpoint:
        overrides["teacher.checkpoint"] = str(args.teacher_checkpoint.resolve())
    config = load_config(profile_path(args.profile), overrides)
    ctx = init_from_environment()  # under torchrun: join the job; rank 0 alone writes results and prints them
    try:
        runner = StageRunner(config, STAGES, args.runs_dir, ctx)
        started = time.perf_counter()
        outcomes = runner.run(from_stage=args.from_stage, until=args.until, force=args.force)
    finally:
        shutdown()
    if not ctx.is_main:
        return 0
    print(f"\nStages ({time.perf_counter() - started:.1f} s in all):")
    for outcome in outcomes:
        print(f"  {outcome.name:<10} {outcome.status:<7} {outcome.wall_time_s:8.1f} s")
    if "report" not in {outcome.name for outcome in outcomes}:
        return 0  # `--until` stopped earlier: an older report's figures would describe another run
    return print_summary(runner.run_dir)


def print_summary(run_dir: Path) -> int:
    """The accuracy/parity/latency table, the distillation verdict and where the report is; 1 if a parity gate failed.

    The table and verdict are a courtesy: a stage file that cannot be read skips them with one warning. The parity
    results decide the exit status, so unreadable ones are an error (one line, exit 2), never a traceback.
    """
    from benchmarks.latency import load_latency_document
    from benchmarks.report import distillation_verdict, model_labels, summary_rows
    from pipeline.run_layout import all_parity_results, failed_parity

    layout = RunLayout(run_dir)
    report = layout.report_file
    if not report.is_file():
        return 0
    parity = _read_stage_file(all_parity_results, run_dir, run_dir / "parity")
    try:
        metrics = _read_stage_file(lambda path: json.loads(path.read_text()), layout.metrics_file)
        latency = _read_stage_file(load_latency_document, layout.latency_file)
    except PipelineError as exc:
        log.warning("summary table skipped: %s", one_line(exc))
    else:
        print("\n| model [backend] | accuracy % | parity | p50 ms (batch 1, 1 thread) |\n|---|---|---|---|")
        for row in summary_rows(metrics, parity, latency, model_labels(run_dir)):
            print("| " + " | ".join(row) + " |")
        first_set = parity.get("verification_set") or next(iter(metrics))
        verdict = distillation_verdict(metrics[first_set])
        if verdict:
            print(f"\n{first_set}: {verdict}")
    print(f"\nReport: {report.resolve()}\n        {report.with_suffix('.html').resolve()}")
    failures = failed_parity(parity)
    for failure in failures:
        print(f"PARITY FAILED {failure['backend']}/{failure['precision']}: {failure['reason']}", file=sys.stderr)
    return 1 if failures else 0


def _read_stage_file(reader: Callable[[Path], T], path: Path, names: Path | None = None) -> T:
    """`reader(path)`, with a missing or unreadable file as one line naming it (`names`: what to name instead)."""
    try:
        return reader(path)
    except OSError as exc:
        raise DataError(exc.filename or names or path,
                        f"cannot read it ({exc.strerror or exc}); rerun the stage that writes it") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(names or path, f"unreadable stage results ({exc.__class__.__name__}: {exc})") from exc


def one_line(exc: BaseException) -> str:
    """An error as the single line the CLI prints (a library's multi-line text is joined, not cut)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or exc.__class__.__name__


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 ok, 1 a parity gate failed, 2 bad input or a broken artifact, 128+N stopped by signal N."""
    from pipeline.interrupts import StopRequest, handle_stop_signals

    args = build_parser().parse_args(argv)
    configure_logging()
    stop = StopRequest()
    try:
        with handle_stop_signals() as stop:
            if args.command == "align":
                from pipeline.align.cli import run_align

                return run_align(args)
            if args.command == "evaluate":
                from app.evaluate_cli import run_evaluate

                return run_evaluate(args)
            if args.command == "pack-teacher":
                from pipeline.pretrained_teacher import run_pack_teacher

                return run_pack_teacher(args)
            return run_command(args)
    except PipelineError as exc:
        if stop.signal is not None:  # training checkpointed and stopped, or the runner stopped between stages
            print(f"interrupted by {stop.signal_name}: {one_line(exc)}; rerun the same command to resume", file=sys.stderr)
            return 128 + stop.signal
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; rerun to resume", file=sys.stderr)
        return 128 + (stop.signal or 2)
