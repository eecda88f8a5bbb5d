"""Run configuration: one YAML file per profile, validated so a typo fails at start, not after training.

Unknown keys and wrong types are errors (pydantic, extra="forbid"), reported with the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    nuisance_strength: float = Field(1.0, ge=0.0, description="scales pose/lighting/blur/noise/JPEG; 0 = clean frontal faces")


DATA_ROOT_PLACEHOLDER = "${FACE_DATA_ROOT}"


def expand_data_root(path: str | None) -> str | None:
    """`${FACE_DATA_ROOT}` in a data path -> the real-data root: $FACE_DATA_ROOT, else shared/data beside the repository
    (so a profile such as configs/real.yaml works from any working directory). Other paths are left as given."""
    if path is None or DATA_ROOT_PLACEHOLDER not in path:
        return path
    from pipeline.data.real_data import expected_real_data_root

    return path.replace(DATA_ROOT_PLACEHOLDER, str(expected_real_data_root()))


class VerificationSetConfig(Section):
    """A user's verification set: an insightface .bin, or an LFW-style pairs.txt over an image folder."""

    kind: Literal["bin", "pairs_txt"]
    path: str
    image_root: str | None = None
    name: str | None = None

    _paths_expanded = field_validator("path", "image_root")(expand_data_root)


class DataConfig(Section):
    source: Literal["synthetic", "image_folder", "recordio"] = "synthetic"
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    train_path: str | None = None
    verification: list[VerificationSetConfig] = []
    image_size: int = 112
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    min_images_per_identity: int = Field(1, ge=1, description="user data: drop identities with fewer training images")
    max_identities: int | None = Field(None, ge=2, description="user data: keep only the first N identities (by label) left")

    _train_path_expanded = field_validator("train_path")(expand_data_root)


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
    mixed_precision: bool = Field(True, description="bf16 autocast when training on a CUDA device (ignored on CPU)")
    sync_batchnorm: bool = Field(False, description="under torchrun: BatchNorm statistics over all ranks' batches")


class TeacherConfig(Section):
    model: str = "vit_face_tiny"
    model_args: dict[str, Any] = {}
    checkpoint: str | None = None
    checkpoint_format: Literal["native", "insightface_vit"] = Field(
        "native", description="native: this project's FaceViT weights; insightface_vit: an arcface_torch ViT (model insightface_vit_*)")
    margin: MarginConfig = MarginConfig()
    optim: OptimConfig = OptimConfig()

    @model_validator(mode="after")
    def _insightface_checkpoint_needs_its_model(self) -> TeacherConfig:
        if self.checkpoint_format == "insightface_vit":
            from pipeline.models.insightface_vit import INSIGHTFACE_VIT_MODELS  # torch: imported only when asked for

            if self.model not in INSIGHTFACE_VIT_MODELS:
                raise ValueError(f"checkpoint_format insightface_vit needs model one of {', '.join(INSIGHTFACE_VIT_MODELS)}, got {self.model!r}")
            if not self.checkpoint:
                raise ValueError("checkpoint_format insightface_vit needs teacher.checkpoint (or --teacher-checkpoint PATH)")
        return self


class StudentConfig(Section):
    model: str = "mobilefacenet"
    model_args: dict[str, Any] = {}


class LossConfig(Section):
    """One distillation term: a registered loss name, its weight, and its own arguments."""

    name: str
    weight: float = Field(1.0, ge=0)
    args: dict[str, Any] = {}


class APTConfig(Section):
    """Adaptable Prompting Teacher: prompt tokens in the frozen ViT teacher, trained with the student.

    `blocks` are the teacher blocks whose input receives fresh prompts (None = every block, VPT-deep; [0] = input
    only, VPT-shallow). `teacher_margin_weight` weighs the prompted teacher's own margin loss (lambda_apt).
    """

    num_prompts: int = Field(4, ge=1, le=256)
    blocks: list[int] | None = None
    teacher_margin_weight: float = Field(1.0, ge=0)

    @field_validator("blocks")
    @classmethod
    def _blocks_valid(cls, blocks: list[int] | None) -> list[int] | None:
        if blocks is not None and (not blocks or len(set(blocks)) != len(blocks) or min(blocks) < 0):
            raise ValueError(f"blocks must be distinct non-negative block indices (or null for every block), got {blocks}")
        return None if blocks is None else sorted(blocks)


def _unique_loss_names(losses: list[LossConfig]) -> list[LossConfig]:
    names = [loss.name for loss in losses]
    if len(set(names)) != len(names):
        raise ValueError(f"each loss may appear once, got {names}")
    return losses


class DistillVariant(Section):
    """One distillation objective: its loss terms and, optionally, the prompted teacher."""

    losses: list[LossConfig] = []
    apt: APTConfig | None = None

    _losses_unique = field_validator("losses")(_unique_loss_names)


class AblationConfig(Section):
    """`benchmarks/ablation.py`: every variant trained with each seed on the same data, teacher and budget."""

    seeds: list[int] = Field([0, 1, 2], min_length=1)
    variants: dict[str, DistillVariant] = {}


class DistillConfig(Section):
    """The student's training: its objective (`losses`, optional `apt`), margin, optimiser, and the ablation's variants."""

    losses: list[LossConfig] = [LossConfig(name="embedding_kd", weight=1.0)]
    apt: APTConfig | None = None
    margin: MarginConfig = MarginConfig()
    optim: OptimConfig = OptimConfig()
    train_baseline: bool = True
    ablation: AblationConfig = AblationConfig()

    _losses_unique = field_validator("losses")(_unique_loss_names)

    def objective(self) -> DistillVariant:
        """The objective the `distill` stage trains: this section's losses and APT setting."""
        return DistillVariant(losses=self.losses, apt=self.apt)


class GateConfig(Section):
    min_cosine: float = Field(ge=-1, le=1)
    max_accuracy_delta_points: float = Field(ge=0)


class ParityConfig(Section):
    gates: dict[str, GateConfig] = {
        # fp32 tightened from the 0.9999: ONNX Runtime and ncnn measured cos min > 0.999999999 on the
        # default profile (x86), ncnn on emulated ARM 0.9999996 (shared/ENV.md).
        "fp32": GateConfig(min_cosine=0.99999, max_accuracy_delta_points=0.1),
        "fp16": GateConfig(min_cosine=0.999, max_accuracy_delta_points=0.2),
        "int8": GateConfig(min_cosine=0.98, max_accuracy_delta_points=1.0),
    }
    max_images: int | None = Field(None, ge=2, description="parity on the first N verification images only")
    localize: bool = Field(True, description="on a numeric failure, name the first layer that diverges (ONNX, ncnn)")


class NativeParityConfig(Section):
    """Parity of the ncnn export through the project's C++ tool (deploy/native): ncnn's C++ path on this machine
    ("host") and ncnn's ARM kernels under qemu-aarch64 ("arm64:<qemu cpu>": "arm64:max" has ARMv8.2 fp16 arithmetic
    and dot-product, "arm64:cortex-a53" plain ARMv8.0). The first use builds libncnn and the tools (minutes, cached
    in build/). No targets: the stage records nothing."""

    targets: list[str] = Field([], description='"host", "arm64:max", "arm64:cortex-a53", ...')
    precisions: list[Literal["fp32", "fp16", "int8"]] = ["fp32", "fp16", "int8"]
    max_images: int | None = Field(64, ge=2, description="parity subset: emulated, the default MobileFaceNet takes about "
                                   "2 s per face in fp32 and 9 s with fp16 arithmetic on 2 cores (measured)")
    threads: int = Field(1, ge=1, description="ncnn threads per run (qemu-user gains nothing from more: measured slower)")
    workers: int = Field(0, ge=0, description="rows run side by side; 0: one per CPU core")

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        from deploy.native.tool_host import parse_target_entry

        for entry in targets:
            parse_target_entry(entry)
        return targets


class ExportConfig(Section):
    """Formats as "name" (every precision the format has) or "name:p1,p2"; see deploy/formats.py for the table."""

    opset: int = Field(17, ge=17)
    formats: list[str] = ["onnx"]
    max_batch: int = Field(64, ge=1, description="upper end of the dynamic batch range (CoreML, TensorRT)")
    calibration_images: int = Field(64, ge=1, description="training images every INT8 variant calibrates on")
    int8_calibration: Literal["percentile", "kl", "max"] = Field(
        "percentile", description="activation range of ONNX and ncnn INT8: 99.999th percentile of |x|, KL-optimal, or max")
    int8_depthwise_fp32: bool = Field(True, description="keep depthwise convolutions in fp32 in ONNX and ncnn INT8")
    ncnn_int8_float_layers: list[str] = Field([], description="more ncnn layer names to keep fp32 in the int8 model")
    ncnn_fp16_arithmetic_off: list[str] = Field(["ConvolutionDepthWise"], description=(
        "ncnn layer types or names the fp16 model runs without fp16 arithmetic (ncnn's featmask; fp16 storage stays). "
        "Measured under qemu -cpu max: ARMv8.2 fp16 arithmetic in ConvolutionDepthWise took the default student to "
        "cosine 0.989 (fp16 gate 0.999); with it off there, 0.99998 (README)"))
    int8_gate: bool = Field(True, description="drop an INT8 export that fails parity.gates.int8 instead of shipping it")
    tensorrt_opt_batch: int = Field(1, ge=1, description="the batch TensorRT tunes kernels for")
    tensorrt_workspace_mib: int = Field(1024, ge=16)


class BenchmarkConfig(Section):
    """Latency matrix (benchmarks/latency.py) and the distillation-speed benchmark (benchmarks/distill_speed.py)."""

    threads: list[int] = Field([1, 2, 4], min_length=1, description="counts above the usable cores are left out")
    warmup_runs: int = Field(10, ge=0)
    timed_runs: int = Field(100, ge=5, description="batch-1 runs at least; more until min_timed_seconds pass")
    min_timed_seconds: float = Field(1.0, ge=0, description="so fast models get enough runs for a stable p99")
    max_timed_seconds: float = Field(60.0, gt=0, description="a row stops after this long (5 runs at least): a starved backend cannot stall the stage")
    throughput_batch: int = Field(32, ge=1)
    throughput_runs: int = Field(5, ge=1)
    benchncnn: str | None = Field(None, description="ncnn's benchncnn for the desktop C++ row (else $BENCHNCNN, then PATH)")
    benchncnn_loops: int = Field(50, ge=1)
    native_tools: bool = Field(False, description="time every ncnn export with the project's face_bench too (C++ API, real "
                                                  "weights; builds libncnn and the tools on first use, minutes, cached in build/)")
    distill_speed_steps: int = Field(6, ge=0, description="training steps timed per variant; 0 skips the benchmark")


class RunConfig(Section):
    run_name: str = "default"
    seed: int = 0
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    parity: ParityConfig = ParityConfig()
    native_parity: NativeParityConfig = NativeParityConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML profile; `overrides` are dotted keys (e.g. {"teacher.checkpoint": "t.pt"})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as UTF-8 text ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        try:
            _set_dotted(raw, dotted, value)
        except TypeError as exc:
            raise ConfigError(f"{path}: override {dotted}: {exc}") from None
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
        if not isinstance(tree, dict):
            raise TypeError(f"{key} holds {tree!r}, not a section")
    tree[keys[-1]] = value
