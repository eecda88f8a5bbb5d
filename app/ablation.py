"""The ablation benchmark: every distillation variant trained with the same seeds, data, teacher and budget; one table.

`make ablation` runs configs/ablation.yaml (generated synthetic faces); `make ablation-real` runs
configs/ablation_real.yaml (aligned LFW under ../shared/data, skipped with the reason when it is absent).

Data and teacher come from the stage runner (trained once, cached, shared by every variant). Each (variant, seed)
trains with `train_student`, the function the `distill` stage uses, and is scored with the verification protocol of
the `evaluate` stage (10-fold accuracy; TAR@FAR where the pairs resolve it). Each result is stored under
runs/<run>/ablation/results/ with a fingerprint of everything it depends on, so a rerun skips finished trainings and a
killed training resumes from its checkpoint. The table goes to runs/<run>/ablation/ablation.md and ablation.json;
`stored_ablation(ablation_dir)` reads it back for the run report (`format_table`, `claims_table`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from app.stages.student_stages import StudentJob, train_student
from benchmarks.ablation_tables import FAR_TARGETS, ablation_markdown, ablation_rows, claims, untested_claims
from deploy.runners.torch_runner import TorchRunner
from pipeline import __version__
from pipeline.artifacts import sha256_json, write_json_atomic, write_text_atomic
from pipeline.config import DistillVariant, RunConfig, load_config, profile_path
from pipeline.data.arrays import VerificationPairs
from pipeline.data.store import load_verification_sets
from pipeline.distill.apt import apt_teacher_problem
from pipeline.errors import ConfigError, PipelineError
from pipeline.evaluation.verification import evaluate_verification
from pipeline.models.saved import load_model
from pipeline.models.vit_teacher import FaceViT
from pipeline.run_layout import ABLATION_DIR
from pipeline.stages.common import run_preprocess_spec
from pipeline.stages.fingerprint import read_manifest
from pipeline.stages.runner import StageRunner

log = logging.getLogger("app.ablation")

RESULT_FORMAT = 2  # bump when what a stored (variant, seed) result means changes, so old ones are retrained


def score_model(model, config: RunConfig, verification_sets: list[VerificationPairs]) -> dict[str, dict]:
    """Verification metrics of one model on every set, as the evaluate stage computes them (plus TAR@FAR=1e-2)."""
    runner = TorchRunner(model, run_preprocess_spec(config, model.embedding_dim))
    scores = {}
    for pairs in verification_sets:
        result = evaluate_verification(runner.embed(np.asarray(pairs.images), batch_size=64), pairs.issame, far_targets=FAR_TARGETS)
        scores[pairs.name] = {"accuracy": result.accuracy, "accuracy_std_folds": result.accuracy_std, "auc": result.auc,
                              "tar_at_far": result.tar_at_far, "num_pairs": result.num_pairs}
    return scores


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]; anything else is a one-line ConfigError naming the option."""
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 0,1,2") from None


def variants_of(config: RunConfig, names: list[str] | None) -> dict[str, DistillVariant]:
    variants = dict(config.distill.ablation.variants)
    if not variants:
        raise PipelineError("distill.ablation.variants is empty: the profile names no variants to compare")
    unknown = [name for name in names or [] if name not in variants]
    if unknown:
        raise PipelineError(f"unknown variant(s) {', '.join(unknown)}; the profile has: {', '.join(variants)}")
    return {name: variants[name] for name in names} if names else variants


def run_ablation(config: RunConfig, runs_dir: Path, variant_names: list[str] | None = None, seeds: list[int] | None = None) -> dict:
    """Train and score the requested (variant, seed) pairs, then write ablation.json/.md over every stored result.

    Partial runs accumulate: the table holds every (variant, seed) of the profile whose stored result is current
    (same fingerprint), so `--variants`/`--seeds` can spread the 21 trainings over several sessions.
    """
    started = time.perf_counter()
    requested = variants_of(config, variant_names)
    requested_seeds = list(seeds or config.distill.ablation.seeds)
    runner = StageRunner(config, _stages(), runs_dir)
    cpu_started = time.process_time()
    outcomes = runner.run(until="teacher")
    upstream_cpu = time.process_time() - cpu_started
    run_dir = runner.run_dir
    upstream = {name: read_manifest(run_dir / name)["outputs"] for name in ("data", "teacher")}
    verification_sets = load_verification_sets(run_dir / "data")
    out_dir, work_dir = run_dir / ABLATION_DIR, run_dir / "work" / ABLATION_DIR
    # CPU time of the data and teacher stages, recorded when they ran here (a later run finds them cached).
    upstream_cost = _cached(out_dir / "results" / "upstream.json", sha256_json(upstream), lambda: {
        "cpu_time_s": round(upstream_cpu, 1), "stages_ran": [o.name for o in outcomes if o.status == "ran"]})
    teacher = _cached(out_dir / "results" / "teacher.json", sha256_json({"upstream": upstream, "far": FAR_TARGETS}),
                      lambda: {"scores": score_model(load_model(run_dir / "teacher", "teacher"), config, verification_sets)})
    results = []
    for name, variant in config.distill.ablation.variants.items():
        for seed in sorted(set(config.distill.ablation.seeds) | (set(requested_seeds) if name in requested else set())):
            fingerprint = sha256_json({
                "variant": variant.model_dump(mode="json"), "seed": seed, "student": config.student.model_dump(mode="json"),
                "margin": config.distill.margin.model_dump(mode="json"), "optim": config.distill.optim.model_dump(mode="json"),
                "upstream": upstream, "far": FAR_TARGETS, "pipeline_version": __version__, "format": RESULT_FORMAT,
            })
            path = out_dir / "results" / f"{name}_seed{seed}.json"
            if name in requested and seed in requested_seeds:
                run_work = work_dir / f"{name}_seed{seed}_{fingerprint[:12]}"
                job = StudentJob(config, run_dir / "data", run_dir / "teacher", run_work, work_dir, run_work / "model",
                                 sha256_json(upstream)[:16], seed)
                result = _cached(path, fingerprint, lambda: _train_and_score(job, name, variant, verification_sets))
            else:
                result = _stored(path, fingerprint)
            if result is not None:
                results.append({"variant": name, "seed": seed, **result})
    trained = [name for name in config.distill.ablation.variants if any(r["variant"] == name for r in results)]
    document = {
        "run": config.run_name, "seeds": config.distill.ablation.seeds,
        "variants": {name: config.distill.ablation.variants[name].model_dump(mode="json") for name in trained},
        "verification_sets": [pairs.name for pairs in verification_sets], "teacher": teacher,
        "teacher_stage_wall_time_s": read_manifest(run_dir / "teacher").get("wall_time_s"),
        "data_stage_wall_time_s": read_manifest(run_dir / "data").get("wall_time_s"),
        "upstream_cpu": upstream_cost, "results": results,
        "training_wall_time_s": round(sum(r["wall_time_s"] for r in results), 1),
        "training_cpu_time_s": round(sum(r.get("cpu_time_s", 0.0) for r in results), 1),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    document["rows"] = ablation_rows(document)
    document["claims"] = claims(document)
    document["untested_claims"] = untested_claims(trained, apt_problem(load_model(run_dir / "teacher", "teacher")))
    write_json_atomic(out_dir / "ablation.json", document)
    write_text_atomic(out_dir / "ablation.md", ablation_markdown(document))
    return document


def apt_problem(teacher) -> str | None:
    """Why APT cannot run with this teacher (None where it can: the project's ViT teachers)."""
    return None if isinstance(teacher, FaceViT) else apt_teacher_problem(type(teacher).__name__)


def _stages():
    from app.stages import STAGES

    return STAGES


def _stored(path: Path, fingerprint: str) -> dict | None:
    """The result stored at `path` if it was computed under `fingerprint`, else None."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("fingerprint") == fingerprint:
            return stored
    return None


def _cached(path: Path, fingerprint: str, compute) -> dict:
    """A stored result whose fingerprint matches, or compute, store and return a fresh one."""
    stored = _stored(path, fingerprint)
    if stored is not None:
        return stored
    result = {**compute(), "fingerprint": fingerprint}
    write_json_atomic(path, result)
    return result


def _train_and_score(job: StudentJob, name: str, variant: DistillVariant, verification_sets: list[VerificationPairs]) -> dict:
    log.info("ablation: training %s (seed %d)", name, job.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = train_student(job, "student", variant)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    scores = score_model(load_model(job.out_dir, "student"), job.config, verification_sets)
    first = next(iter(scores.values()))
    log.info("ablation: %s seed %d: accuracy %.2f%% (train %.0f s wall, %.0f s CPU)", name, job.seed, 100 * first["accuracy"], summary["train_wall_time_s"], cpu)
    # CPU seconds project the time on a quiet machine when this one is shared: wall ~ CPU / cores there.
    return {"scores": scores, "train_wall_time_s": summary["train_wall_time_s"], "wall_time_s": round(wall, 1), "cpu_time_s": round(cpu, 1),
            "summary": summary}


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 ok (or skipped: the profile's real data is absent), 2 bad input, as `python -m pipeline`."""
    from app.cli import configure_logging, one_line, parse_overrides

    parser = argparse.ArgumentParser(prog="python -m app.ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ablation", help="configs/<name>.yaml or a path (default: ablation)")
    parser.add_argument("--runs-dir", default="runs", type=Path)
    parser.add_argument("--variants", help="comma-separated subset of the profile's variants")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the profile's distill.ablation.seeds)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        seeds = parse_seeds(args.seeds) if args.seeds else None
        variant_names = args.variants.split(",") if args.variants else None
        config = load_config(profile_path(args.profile), parse_overrides(args.overrides))
        variants_of(config, variant_names)  # a mistyped variant stops here, before any data is checked or trained
        needed = [config.data.train_path, *(entry.path for entry in config.data.verification)]
        absent = [path for path in needed if path is not None and not Path(path).exists()]
        if absent:
            print(f"ablation skipped: {absent[0]} not found (profile {args.profile}; real data lives in ../shared/data)")
            return 0
        document = run_ablation(config, args.runs_dir, variant_names, seeds)
    except PipelineError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(ablation_markdown(document))
    print(f"wrote {args.runs_dir / config.run_name / ABLATION_DIR / 'ablation.md'} and ablation.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
