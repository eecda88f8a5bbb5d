"""The project's shipped teacher: a trained teacher packed as fp16 safetensors beside a JSON record of how it was made.

Why: a ViT trained for minutes on 2 cores is weaker than the student it should teach (issue 16), so the default run
starts from a pretrained teacher, as users do. `make teacher-pretrain` trains it (configs/teacher_pretrain.yaml, to
the teacher stage) and `python -m pipeline pack-teacher` writes it here; the record (config, seed, data hash,
accuracy curve, cost, machine) says how to reproduce it, and the weights' sha256 pins it in configs/default.yaml.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pipeline.artifacts import sha256_file, sha256_json, write_json_atomic, write_safetensors_atomic
from pipeline.cpu_features import cpuinfo
from pipeline.errors import DataError
from pipeline.stages.fingerprint import read_manifest

log = logging.getLogger(__name__)


def pack_teacher(run_dir: Path, destination: Path) -> dict[str, Any]:
    """Write <destination>.safetensors (the run's teacher, fp16) and <destination>.json (its record); return the record."""
    teacher_dir, data_dir = run_dir / "teacher", run_dir / "data"
    teacher_manifest, data_manifest = read_manifest(teacher_dir), read_manifest(data_dir)
    if teacher_manifest is None or data_manifest is None:
        raise DataError(run_dir, "no finished data and teacher stages here (run `make teacher-pretrain` first)")
    if teacher_manifest["summary"].get("source") != "trained":
        raise DataError(teacher_dir, "this teacher was loaded from a checkpoint, not trained: nothing to pack")
    spec = json.loads((teacher_dir / "teacher.json").read_text())
    weights = load_file(str(teacher_dir / "teacher.safetensors"))
    half = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    weights_path = destination.with_suffix(".safetensors")
    # One metadata key: safetensors writes its metadata map in an order that changes between processes, so two keys
    # would give the same weights a different file hash on every pack.
    write_safetensors_atomic(weights_path, half, metadata={"pipeline_model": json.dumps(spec, sort_keys=True)})
    curve_path = teacher_dir / "teacher_curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
    summary = teacher_manifest["summary"]
    record = {
        "model": spec["model"],
        "model_args": spec["model_args"],
        "weights": weights_path.name,
        "sha256": sha256_file(weights_path),
        "bytes": weights_path.stat().st_size,
        "dtype": "float16",
        "parameters": summary.get("parameters"),
        "seed": teacher_manifest["config"]["seed"],
        "config": teacher_manifest["config"],
        "data_config": data_manifest["config"],
        "data_sha256": sha256_json(data_manifest["outputs"]),
        "accuracy_curve": curve,
        "final_accuracy": curve[-1] if curve else None,
        "train_wall_time_s": summary.get("train_wall_time_s"),
        "steps": summary.get("steps"),
        "images_per_s": summary.get("images_per_s"),
        "data_stage_wall_time_s": data_manifest["wall_time_s"],
        "trained_at": teacher_manifest["started_at"],
        "machine": {"cpu": cpuinfo().get("model name", platform.processor()), "torch": torch.__version__,
                    "versions": teacher_manifest.get("versions", {})},
    }
    write_json_atomic(destination.with_suffix(".json"), record)
    log.info("pack-teacher: wrote %s (%.1f MB, sha256 %s) and its record %s", weights_path, record["bytes"] / 1e6,
             record["sha256"][:16], destination.with_suffix(".json"))
    return record


def add_pack_teacher_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("pack-teacher", help="pack a run's trained teacher as the shipped fp16 teacher and its record")
    parser.add_argument("run_dir", type=Path, help="a run folder whose data and teacher stages finished (runs/teacher_pretrain)")
    parser.add_argument("--out", type=Path, required=True, help="destination stem: writes STEM.safetensors and STEM.json")


def run_pack_teacher(args: argparse.Namespace) -> int:
    record = pack_teacher(args.run_dir, args.out)
    final = record["final_accuracy"] or {}
    print(f"{record['weights']}: {record['bytes'] / 1e6:.1f} MB, sha256 {record['sha256']}, "
          f"accuracy {final.get('accuracy', 'n/a')} % on {final.get('set', 'n/a')}, trained {record['train_wall_time_s']} s")
    return 0
