"""`python -m app.profile_training`: where the run's student spends a training step (benchmarks/step_profile.py).

The data stage runs or is reused (as `python -m pipeline run --until data` would), then the student trains a few steps
alone, as the baseline stage trains it (no augmentation), under torch.profiler; the two tables are printed.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from app.cli import configure_logging, one_line, parse_overrides
from app.stages import STAGES
from benchmarks.step_profile import profile_markdown, profile_training_steps
from pipeline.config import load_config, profile_path
from pipeline.data.store import load_training_set
from pipeline.errors import PipelineError
from pipeline.models.registry import create_model
from pipeline.stages.common import run_preprocess_spec
from pipeline.stages.runner import StageRunner


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 ok, 2 bad input."""
    parser = argparse.ArgumentParser(prog="python -m app.profile_training", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", help="configs/<name>.yaml or a path (default: default)")
    parser.add_argument("--runs-dir", default="runs", type=Path)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps, after the warm-up ones")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = load_config(profile_path(args.profile), parse_overrides(args.overrides))
        runner = StageRunner(config, STAGES, args.runs_dir)
        runner.run(until="data")
        result = profile_training_steps(partial(create_model, config.student.model, **config.student.model_args),
                                        load_training_set(runner.run_dir / "data"), run_preprocess_spec(config), config.distill.margin,
                                        config.distill.optim.model_copy(update={"augment": None}), config.seed, args.steps)
    except PipelineError as exc:
        print(f"error: {one_line(exc)}")
        return 2
    print(profile_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
