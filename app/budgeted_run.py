"""Fit a profile's training schedule to a wall-clock budget on this machine, then run it.

Why: a schedule written in steps is reproducible but says nothing about time, and machines differ by 100x (2 CPU
cores against a GPU). This measures the distilled student's training throughput here with a short probe run (its own
run folder, so the real run starts clean), sets `distill.optim.max_steps` to what fits the budget, and runs the
profile with that fixed step count: the run stays deterministic and its curve (`eval_every_steps`) gives accuracy
against training time on this machine.

    python -m app.budgeted_run --profile real_gpu --minutes 6 [--until evaluate] [--set KEY=VALUE ...]

The rate is the probe's median step; the step count keeps 15 % for checkpoints and evaluations. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

from app.cli import one_line, parse_overrides
from pipeline.artifacts import write_json_atomic
from pipeline.config import load_config, profile_path
from pipeline.errors import PipelineError
from pipeline.run_layout import RunLayout
from pipeline.stages.fingerprint import read_manifest

log = logging.getLogger("app.budgeted_run")


def steps_for_budget(images_per_s: float, budget_s: float, batch_size: int, eval_every_steps: int | None,
                     safety: float = 0.85) -> int:
    """Training steps that fit `budget_s` at the measured rate, a multiple of the curve's interval where there is one.

    `safety` leaves room for what a step's median leaves out: checkpoints, epoch ends and the curve's evaluations
    (together 12 % of the distilled student's training on the GPU run in README)."""
    steps = int(safety * budget_s * images_per_s / batch_size)
    if eval_every_steps:
        steps = steps // eval_every_steps * eval_every_steps
    if steps < 1:
        raise PipelineError(f"{budget_s:.0f} s at {images_per_s:.1f} images/s is less than one step of {batch_size}")
    return steps


def steady_images_per_s(summary: dict, batch_size: int) -> float:
    """Training images/s from the probe's median step (its first steps pay one-off start-up costs: on a GPU they
    halved the probe's mean rate), else its mean rate."""
    median_step_s = float(summary.get("median_step_s") or 0.0)
    rate = batch_size / median_step_s if median_step_s > 0 else float(summary.get("images_per_s") or 0.0)
    if not math.isfinite(rate) or rate <= 0:
        raise PipelineError("the probe recorded no training throughput")
    return rate


def pipeline_run(profile: str, runs_dir: Path, sets: list[str], extra: list[str]) -> None:
    """One `python -m pipeline run` in a child process (its own torch state, as a user's run has)."""
    command = [sys.executable, "-m", "pipeline", "run", "--profile", profile, "--runs-dir", str(runs_dir), *extra]
    for pair in sets:
        command += ["--set", pair]
    log.info("running: %s", " ".join(command))
    finished = subprocess.run(command, check=False)
    if finished.returncode != 0:
        raise PipelineError(f"{' '.join(command)} exited with {finished.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.budgeted_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the distilled student's training")
    parser.add_argument("--probe-steps", type=int, default=60)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--until", help="stop the real run after this stage (as `pipeline run --until`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.minutes <= 0 or args.probe_steps < 2:
            raise PipelineError(f"--minutes must be > 0 and --probe-steps >= 2 (got {args.minutes}, {args.probe_steps})")
        config = load_config(profile_path(args.profile), parse_overrides(args.overrides))
        optim = config.distill.optim
        probe_name = f"{config.run_name}_probe"
        started = time.perf_counter()
        pipeline_run(args.profile, args.runs_dir, [*args.overrides, f"distill.optim.max_steps={args.probe_steps}",
                                                   "distill.optim.eval_every_steps=null", "distill.train_baseline=false"],
                     ["--run-name", probe_name, "--until", "distill"])
        probe_dir = args.runs_dir / probe_name / "distill"
        summary = ((read_manifest(probe_dir) or {}).get("summary") or {}).get("student")
        if not isinstance(summary, dict):
            raise PipelineError(f"{probe_dir}: the probe wrote no training summary")
        images_per_s = steady_images_per_s(summary, optim.batch_size)
        steps = steps_for_budget(images_per_s, args.minutes * 60, optim.batch_size, optim.eval_every_steps)
        log.info("probe: %.1f images/s at batch %d -> %d steps for %.1f min", images_per_s, optim.batch_size, steps, args.minutes)
        write_json_atomic(RunLayout(args.runs_dir / config.run_name).budget_file, {
            "profile": args.profile, "budget_minutes": args.minutes, "probe_steps": args.probe_steps,
            "probe_images_per_s": images_per_s, "batch_size": optim.batch_size, "max_steps": steps,
            "probe_wall_s": round(time.perf_counter() - started, 1),
        })
        pipeline_run(args.profile, args.runs_dir, [*args.overrides, f"distill.optim.max_steps={steps}"],
                     ["--until", args.until] if args.until else [])
    except PipelineError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
