"""Run configuration: one YAML file per profile, validated so a typo fails at start, not after training.

Unknown keys and wrong types are errors (pydantic, extra="forbid"), reported with the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticDataConfig(Section):
    num_train_identities: int = Field(200, ge=2)
    images_per_identity: int = Field(20, ge=2)
    num_verification_identities: int = Field(60, ge=2)
    images_per_verification_identity: int = Field(6, ge=2)
    num_pairs: int = Field(600, ge=2)
    occlusion_probability: float = Field(0.15, ge=0.0, le=1.0)


class VerificationSetConfig(Section):
    """A user's verification set: an insightface .bin, or an LFW-style pairs.txt over an image folder."""

    kind: Literal["bin", "pairs_txt"]
    path: str
    image_root: str | None = None
    name: str | None = None


class DataConfig(Section):
    source: Literal["synthetic", "image_folder", "recordio"] = "synthetic"
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    train_path: str | None = None
    verification: list[VerificationSetConfig] = []
    image_size: int = 112
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)


class MarginConfig(Section):
    """insightface's combined margin: cos(m1*theta + m2) - m3; ArcFace = (1, 0.5, 0), CosFace = (1, 0, 0.35)."""

    scale: float = 32.0
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0


class OptimConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    hflip: bool = True
    checkpoint_every_steps: int = Field(200, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop early (tests, quick runs)")


class TeacherConfig(Section):
    model: str = "vit_face_tiny"
    model_args: dict[str, Any] = {}
    checkpoint: str | None = None
    margin: MarginConfig = MarginConfig()
    optim: OptimConfig = OptimConfig()


class StudentConfig(Section):
    model: str = "mobilefacenet"
    model_args: dict[str, Any] = {}


class LossConfig(Section):
    """One distillation term: a registered loss name, its weight, and its own arguments."""

    name: str
    weight: float = Field(1.0, ge=0)
    args: dict[str, Any] = {}


class DistillConfig(Section):
    losses: list[LossConfig] = [LossConfig(name="embedding_kd", weight=1.0)]
    margin: MarginConfig = MarginConfig()
    optim: OptimConfig = OptimConfig()
    train_baseline: bool = True


class GateConfig(Section):
    min_cosine: float = Field(ge=-1, le=1)
    max_accuracy_delta_points: float = Field(ge=0)


class ParityConfig(Section):
    gates: dict[str, GateConfig] = {
        "fp32": GateConfig(min_cosine=0.9999, max_accuracy_delta_points=0.1),
        "fp16": GateConfig(min_cosine=0.999, max_accuracy_delta_points=0.2),
        "int8": GateConfig(min_cosine=0.98, max_accuracy_delta_points=1.0),
    }
    max_images: int | None = Field(None, ge=2, description="parity on the first N verification images only")


class ExportConfig(Section):
    opset: int = Field(17, ge=17)
    formats: list[str] = ["onnx"]


class BenchmarkConfig(Section):
    threads: list[int] = [1, 2]
    warmup_runs: int = Field(10, ge=0)
    timed_runs: int = Field(100, ge=5)
    throughput_batch: int = Field(32, ge=1)
    throughput_runs: int = Field(5, ge=1)


class RunConfig(Section):
    run_name: str = "default"
    seed: int = 0
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    parity: ParityConfig = ParityConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML profile; `overrides` are dotted keys (e.g. {"teacher.checkpoint": "t.pt"})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


def profile_path(profile: str) -> Path:
    """A profile name (configs/<name>.yaml) or a path to a YAML file."""
    candidate = Path(profile)
    if candidate.suffix in {".yaml", ".yml"}:
        return candidate
    return CONFIG_DIR / f"{profile}.yaml"


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value
