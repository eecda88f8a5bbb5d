"""Teacher-output cache: what computing the frozen teacher's outputs once saves, per distillation step and per run.

Measured through the pipeline's own code. The cache is built by `compute_teacher_signals` (the distill stage's
function: embeddings of every image and its mirror in fp32, patch tokens at a tap in fp16, memory-mapped) and read
back as the stage reads it; a distill step is `train_recognition_model` fed either those cached signals or a live
teacher that runs its forward pass inside every step (`FrozenTeacher`, the trainer's live teacher). Figures:
- build: seconds to compute the cache once (and so the teacher's inference images/s, the price a live step pays on
  top); load: seconds to open it again (a later run, seed or variant: a cache hit);
- distill step images/s, cached vs live, for an embedding term (embedding_kd) and a token term (fitnet at a teacher block);
- the wall time of a whole distillation (the profile's epochs over N images): live, cached (build included), cached
  and reused; and the speed-ups. Image content does not change a step's cost, so the images are seeded noise.

    python -m benchmarks.teacher_cache_speed --profile real --images 512 --steps 4 --project-images 4534 [--teacher insightface_vit_t]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.distill_speed import step_images_per_s  # the one way steps are timed (median step, warm-up left out)
from pipeline.artifacts import write_json_atomic
from pipeline.config import DistillVariant, LossConfig, RunConfig, load_config, profile_path
from pipeline.data.arrays import FaceArrays
from pipeline.data.store import load_array
from pipeline.distill.objective import build_losses, loss_context
from pipeline.distill.teacher_cache import compute_teacher_signals
from pipeline.distill.teacher_signals import FrozenTeacher, TeacherSignals
from pipeline.models.registry import create_model
from pipeline.stages.common import run_preprocess_spec

log = logging.getLogger(__name__)


def measure_teacher_cache(config: RunConfig, images: int, steps: int, tap: str | None, seed: int = 0) -> dict:
    """Build and load the cache, time cached vs live distill steps; returns the figures (see the module docstring)."""
    rng = np.random.default_rng(seed)
    train_set = FaceArrays(rng.integers(0, 256, (images, config.data.image_size, config.data.image_size, 3), dtype=np.uint8),
                           np.arange(images, dtype=np.int64) % max(2, images // 8))
    teacher = create_model(config.teacher.model, **config.teacher.model_args).eval()
    tap = tap or f"blocks.{len(teacher.vit.blocks) - 1}"
    make_student = lambda: create_model(config.student.model, **config.student.model_args)  # noqa: E731
    spec = run_preprocess_spec(config)
    result: dict = {"teacher": config.teacher.model, "teacher_args": config.teacher.model_args, "student": config.student.model,
                    "images": images, "batch_size": min(config.distill.optim.batch_size, images), "threads": torch.get_num_threads(),
                    "token_tap": tap}
    with tempfile.TemporaryDirectory(prefix="teacher-cache-") as folder:
        embeddings_path, tokens_path = Path(folder) / "embeddings.npy", Path(folder) / "tokens.npy"
        started = time.perf_counter()
        compute_teacher_signals(teacher, train_set.images, spec, embeddings_path, {})
        result["build_embeddings_s"] = round(time.perf_counter() - started, 2)
        # Every image and its mirror in inference mode: the teacher's cost per image that the cache takes out of each step.
        result["teacher_forward_images_per_s"] = round(2 * images / max(1e-9, result["build_embeddings_s"]), 1)
        started = time.perf_counter()
        compute_teacher_signals(teacher, train_set.images, spec, Path(folder) / "embeddings_again.npy", {tap: tokens_path})
        result["build_with_tokens_s"] = round(time.perf_counter() - started, 2)
        result["tokens_cache_mib"] = round(tokens_path.stat().st_size / 2**20, 1)
        started = time.perf_counter()
        cached = TeacherSignals(np.asarray(load_array(embeddings_path, mmap=False)), {tap: load_array(tokens_path)})
        result["load_s"] = round(time.perf_counter() - started, 3)
        margin, optim = config.distill.margin, config.distill.optim
        for kind, loss in (("embedding", LossConfig(name="embedding_kd")),
                           ("tokens", LossConfig(name="fitnet", args={"teacher_tap": tap}))):
            variant = DistillVariant(losses=[loss])
            terms = lambda: build_losses(variant, loss_context(make_student(), config.data.image_size, teacher, None), seed)  # noqa: E731
            cached_ips, timed = step_images_per_s(make_student, train_set, spec, margin, optim, seed, steps, terms(), cached)
            live_ips, _ = step_images_per_s(make_student, train_set, spec, margin, optim, seed, steps, terms(), FrozenTeacher(teacher))
            result[kind] = {"cached_images_per_s": cached_ips, "live_images_per_s": live_ips, "steps_timed": timed,
                            "step_speedup": round(cached_ips / live_ips, 2)}
    return result


def project_run(result: dict, train_images: int, epochs: int) -> dict:
    """Wall time of a whole distillation of `epochs` over `train_images`: live, cached (build included), cached and reused."""
    batch = result["batch_size"]
    steps = max(1, train_images // batch) * epochs
    projected = {"train_images": train_images, "epochs": epochs, "steps": steps}
    for kind, build_key in (("embedding", "build_embeddings_s"), ("tokens", "build_with_tokens_s")):
        figures = result[kind]
        live = steps * batch / figures["live_images_per_s"]
        cached_steps = steps * batch / figures["cached_images_per_s"]
        build = result[build_key] * train_images / result["images"]
        projected[kind] = {
            "live_s": round(live, 1), "cached_s": round(build + cached_steps, 1), "reused_cache_s": round(result["load_s"] + cached_steps, 1),
            "speedup_first_run": round(live / (build + cached_steps), 2), "speedup_reused": round(live / (result["load_s"] + cached_steps), 2),
            "break_even_epochs": round(build / max(1e-9, (live - cached_steps) / epochs), 2) if live > cached_steps else None,
        }
    return projected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.teacher_cache_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny", help="teacher, student, batch size and epochs come from this profile")
    parser.add_argument("--teacher", help="another registered teacher model (its default arguments), e.g. insightface_vit_t")
    parser.add_argument("--images", type=int, default=256, help="images the cache is built over and steps draw from")
    parser.add_argument("--steps", type=int, default=4, help="distill steps timed per variant (median)")
    parser.add_argument("--tap", help="teacher block whose tokens the token term reads (default: the last block)")
    parser.add_argument("--project-images", type=int, help="training-set size to project a whole distillation to (default: --images)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = load_config(profile_path(args.profile), {"teacher.model": args.teacher, "teacher.model_args": {}} if args.teacher else None)
    result = measure_teacher_cache(config, args.images, args.steps, args.tap)
    result["projection"] = project_run(result, args.project_images or args.images, config.distill.optim.epochs)
    print(f"teacher {result['teacher']} {result['teacher_args']} -> student {result['student']}, batch {result['batch_size']}, "
          f"{result['threads']} threads, {result['images']} images")
    print(f"cache build: {result['build_embeddings_s']} s (embeddings), {result['build_with_tokens_s']} s (with tokens at "
          f"{result['token_tap']}, {result['tokens_cache_mib']} MiB); load: {result['load_s']} s; "
          f"teacher forward {result['teacher_forward_images_per_s']} images/s (what each live step pays on top)")
    projection = result["projection"]
    print(f"\n| term | cached img/s | live img/s | step speed-up | run live s | run cached s (build incl.) | run, cache reused s |"
          f" speed-up first run | speed-up reused | break-even epochs |\n|{'---|' * 10}")
    for kind in ("embedding", "tokens"):
        step, run = result[kind], projection[kind]
        print(f"| {kind} | {step['cached_images_per_s']} | {step['live_images_per_s']} | {step['step_speedup']}x | {run['live_s']} | "
              f"{run['cached_s']} | {run['reused_cache_s']} | {run['speedup_first_run']}x | {run['speedup_reused']}x | {run['break_even_epochs']} |")
    print(f"(run: {projection['epochs']} epochs over {projection['train_images']} images = {projection['steps']} steps)")
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
