"""Where a training step's time goes: torch.profiler over the one trainer's steps, in parts a reader can act on.

Two views of the same profiled steps, per step on average:
- the step's parts, from the trainer's own labels (`STEP_REGIONS`: data preparation and augmentation, forward,
  losses and teacher signals, backward, optimiser and weight average), and what is left of the step outside them
  (progress bar, logging, batch sampling: the loop's Python);
- the kernels, by kind, from each operator's self time: oneDNN convolutions forward and backward, the compiled
  BatchNorm+PReLU graphs (`pipeline/models/fused_bn.py`), ATen's BatchNorm and PReLU (where not fused), dtype casts
  (autocast's copies), matrix products, the rest of ATen (the optimiser's element-wise kernels among them); what the
  step holds beyond these is Python and dispatch.
`make profile-training` (`python -m app.profile_training`) profiles the run's student on the run's training faces;
`--set distill.optim.mixed_precision=false` gives the fp32 profile beside the bf16 one.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, schedule

from pipeline.config import MarginConfig, OptimConfig
from pipeline.data.arrays import FaceArrays
from pipeline.distill.distributed import Distributed
from pipeline.distill.trainer import STEP_REGIONS, WeightedLoss, train_recognition_model
from pipeline.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # compiles the fused kernels and settles the allocator before the profiled steps
# Kernel kinds by operator name: the first kind whose test matches an operator takes its self time.
KERNEL_KINDS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("convolution forward (oneDNN)", lambda name: name in {"aten::mkldnn_convolution", "aten::_convolution", "aten::convolution"}),
    ("convolution backward (oneDNN)", lambda name: name == "aten::convolution_backward"),
    ("compiled BatchNorm+PReLU graphs", lambda name: "CompiledFxGraph" in name or name.startswith("Torch-Compiled")),
    ("ATen BatchNorm / PReLU", lambda name: "batch_norm" in name or "prelu" in name),
    ("dtype casts (autocast copies)", lambda name: name in {"aten::copy_", "aten::_to_copy", "aten::to"}),
    ("matrix products (head, losses)", lambda name: name in {"aten::mm", "aten::addmm", "aten::bmm", "aten::linear"}),
)


def profile_training_steps(make_model: Callable[[], nn.Module], train_set: FaceArrays, spec: PreprocessSpec, margin: MarginConfig,
                           optim: OptimConfig, seed: int, steps: int, losses: Sequence[WeightedLoss] = (),
                           teacher: object | None = None) -> dict:
    """Profile `steps` training steps (after `WARMUP_STEPS`) of a fresh model; milliseconds per step by part and kind."""
    plan = schedule(wait=0, warmup=WARMUP_STEPS - 1, active=steps, repeat=1, skip_first=1)
    optim = optim.model_copy(update={"max_steps": WARMUP_STEPS + steps + 1, "epochs": max(optim.epochs, WARMUP_STEPS + steps + 1),
                                     "checkpoint_every_steps": 10**9, "eval_every_steps": None})
    with profile(activities=[ProfilerActivity.CPU], schedule=plan) as profiler, tempfile.TemporaryDirectory(prefix="step-profile-") as folder:
        def next_step(_step: int) -> bool:
            profiler.step()
            return False

        train_recognition_model(make_model(), train_set, spec, margin, optim, seed, Path(folder), list(losses), teacher,
                                description="profile", should_stop=next_step, distributed=Distributed())
    return summarise(profiler.events(), steps, optim)


def summarise(events, steps: int, optim: OptimConfig) -> dict:
    """Per-step milliseconds of the trainer's parts and of the kernel kinds, from the profiler's events."""
    per_step = 1e-3 / steps  # profiler times are microseconds over every profiled step
    step_total = sum(e.cpu_time_total for e in events if e.name.startswith("ProfilerStep"))
    parts = {part: sum(e.cpu_time_total for e in events if e.name == label) for part, label in STEP_REGIONS.items()}
    kinds = {kind: 0.0 for kind, _ in KERNEL_KINDS} | {"other ATen operators": 0.0}
    for event in events:
        if event.name.startswith(("ProfilerStep", "train.", "autograd::", "Optimizer.", "CompiledFunction", "## ")) and "CompiledFxGraph" not in event.name:
            continue  # containers: their time is their children's
        kind = next((kind for kind, matches in KERNEL_KINDS if matches(event.name)), "other ATen operators" if event.name.startswith("aten::") else None)
        if kind is not None:
            kinds[kind] += event.self_cpu_time_total
    in_kernels = sum(kinds.values())
    return {
        "steps_profiled": steps, "batch_size": optim.batch_size, "threads": torch.get_num_threads(),
        "settings": {key: getattr(optim, key) for key in ("channels_last", "fused_kernels", "mixed_precision", "keep_freed_memory")},
        "step_ms": round(step_total * per_step, 1),
        "parts_ms": {part: round(value * per_step, 1) for part, value in parts.items()}
        | {"outside the parts (loop, progress, logging)": round((step_total - sum(parts.values())) * per_step, 1)},
        "kernels_ms": {kind: round(value * per_step, 1) for kind, value in kinds.items()}
        | {"Python and dispatch (the rest of the step)": round((step_total - in_kernels) * per_step, 1)},
    }


def profile_markdown(result: dict) -> str:
    """The two tables of the module docstring, with each row's share of the step."""
    step = result["step_ms"] or 1.0
    lines = [f"Step {result['step_ms']} ms (batch {result['batch_size']}, {result['threads']} threads, mean of {result['steps_profiled']} "
             f"profiled steps; settings {json.dumps(result['settings'])})", "", "| part of the step | ms | share |", "|---|---|---|"]
    lines += [f"| {part} | {ms} | {100 * ms / step:.0f} % |" for part, ms in result["parts_ms"].items()]
    lines += ["", "| kernels by kind | ms | share |", "|---|---|---|"]
    lines += [f"| {kind} | {ms} | {100 * ms / step:.0f} % |" for kind, ms in result["kernels_ms"].items()]
    return "\n".join(lines)
