"""Run configuration: one YAML file per profile, validated so a typo fails at start, not after training.

Unknown keys and wrong types are errors (pydantic, extra="forbid"), reported with the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.export_catalog import options_taken, parse_format_entry, readers_of

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticDataConfig(Section):
    """The generated face set (pipeline/data/synthetic): the generator takes this, plus the run's image size and seed."""

    # training ids are 0..N-1 and verification ids start at 2**30 (synthetic.seeds.VERIFICATION_ID_OFFSET): never shared
    num_train_identities: int = Field(200, ge=2, le=1 << 30)
    images_per_identity: int = Field(20, ge=2)
    num_verification_identities: int = Field(60, ge=2)
    images_per_verification_identity: int = Field(6, ge=2)
    num_pairs: int = Field(600, ge=2, description="verification pairs, half same identity and half different")
    occlusion_probability: float = Field(0.15, ge=0.0, le=1.0)
    nuisance_strength: float = Field(1.0, ge=0.0, description="scales pose/lighting/blur/noise/JPEG; 0 = clean frontal faces")

    @field_validator("num_pairs")
    @classmethod
    def _pairs_even(cls, num_pairs: int) -> int:
        if num_pairs % 2:
            raise ValueError(f"num_pairs must be even (half same, half different), got {num_pairs}")
        return num_pairs


def expand_data_root(path: str | None) -> str | None:
    """`${FACE_DATA_ROOT}` / `${FACE_MODELS_ROOT}` in a path -> the real-data / pretrained-models root: the environment
    variable, else shared/data or shared/models beside the repository (so a profile such as configs/real.yaml works
    from any working directory); `${PRETRAINED_ROOT}` -> the project's shipped teachers (pretrained/). Other paths
    are left as given."""
    if path is None or "${" not in path:
        return path
    from pipeline.data.real_data import PATH_PLACEHOLDERS

    for placeholder, (_, root) in PATH_PLACEHOLDERS.items():
        path = path.replace(placeholder, str(root()))
    return path


class VerificationSetConfig(Section):
    """A user's verification set: an insightface .bin (`path`), an LFW-style pairs.txt (`path`) over an image folder
    (`image_root`), or `folder_pairs`: `num_pairs` pairs drawn (with `pair_seed`) from a labelled folder
    <path>/<identity>/<image>, half same identity and half different, for a set of real faces that ships no pair list.
    """

    kind: Literal["bin", "pairs_txt", "folder_pairs"]
    path: str
    image_root: str | None = None
    name: str | None = None
    num_pairs: int | None = Field(None, ge=2, description="folder_pairs: pairs to draw, even (half same identity)")
    pair_seed: int = Field(0, description="folder_pairs: seed of the draw (the same seed draws the same pairs)")

    _paths_expanded = field_validator("path", "image_root")(expand_data_root)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> VerificationSetConfig:
        if self.kind == "folder_pairs":
            if self.num_pairs is None:
                raise ValueError("kind folder_pairs needs num_pairs (how many pairs to draw from the folder)")
            if self.num_pairs % 2:
                raise ValueError(f"num_pairs must be even (half same, half different), got {self.num_pairs}")
            if self.image_root is not None:
                raise ValueError("image_root is for kind pairs_txt; a folder_pairs set draws from the folder at path")
        else:
            given = [key for key in ("num_pairs", "pair_seed") if key in self.model_fields_set and getattr(self, key) is not None]
            if given:
                raise ValueError(f"{' and '.join(given)} only apply to kind folder_pairs, not {self.kind} (whose file lists its pairs)")
        return self


class ExtraSourceConfig(Section):
    """More training faces beside `data.source`, appended to the training set.

    `image_folder` (<root>/<identity>/<image>) and `recordio` keep their identities (new labels after the ones
    before them) unless `labelled: false`; `unlabelled_folder` (every image under `path`, any layout) and `synthetic`
    (faces made by the generator) are unlabelled by default. Unlabelled faces only feed distillation: a student
    trained without a teacher never samples them, and the margin loss skips them.
    """

    kind: Literal["image_folder", "recordio", "unlabelled_folder", "synthetic"]
    path: str | None = None
    labelled: bool | None = Field(None, description="default: true for image_folder/recordio, false otherwise")
    max_images: int | None = Field(None, ge=1, description="keep the first N images (file order, or generation order)")
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    name: str | None = None

    _path_expanded = field_validator("path")(expand_data_root)

    @model_validator(mode="after")
    def _path_where_needed(self) -> ExtraSourceConfig:
        if self.kind != "synthetic" and not self.path:
            raise ValueError(f"an extra source of kind {self.kind} needs a path")
        if self.kind == "unlabelled_folder" and self.labelled:
            raise ValueError("an unlabelled_folder cannot be labelled (use kind image_folder)")
        return self

    @property
    def is_labelled(self) -> bool:
        return self.labelled if self.labelled is not None else self.kind in ("image_folder", "recordio")

    @property
    def display_name(self) -> str:
        return self.name or (Path(self.path).name if self.path else self.kind)


class DataConfig(Section):
    source: Literal["synthetic", "image_folder", "recordio"] = "synthetic"
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    train_path: str | None = None
    extra_sources: list[ExtraSourceConfig] = []
    verification: list[VerificationSetConfig] = []
    image_size: int = Field(112, ge=16)
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


class AugmentConfig(Section):
    """Online augmentation of training faces (pipeline/distill/augment.py); a 0 range or probability turns that part off.

    A distilling teacher embeds the same augmented view the student sees, so it runs live every step.
    """

    # Defaults measured on real faces (README): shift 0.08 and brightness 0.25 with JPEG 0.1 cost 2.8 points at 300 steps
    # against these milder values; aligned test faces do not move much.
    scale: float = Field(0.1, ge=0, lt=1, description="random zoom by 1 +- scale")
    shift: float = Field(0.04, ge=0, le=0.5, description="random shift, up to this fraction of the face side")
    rotate_degrees: float = Field(8.0, ge=0, le=45)
    brightness: float = Field(0.125, ge=0, le=1, description="+- this fraction of the pixel range")
    contrast: float = Field(0.3, ge=0, le=1, description="contrast scaled by 1 +- contrast")
    saturation: float = Field(0.3, ge=0, le=1, description="saturation scaled by 1 +- saturation")
    grayscale_probability: float = Field(0.1, ge=0, le=1)
    blur_probability: float = Field(0.1, ge=0, le=1, description="a 5x5 binomial blur")
    jpeg_probability: float = Field(0.0, ge=0, le=1)
    jpeg_quality: tuple[int, int] = Field((30, 90), description="JPEG quality drawn from this range")
    occlusion_probability: float = Field(0.1, ge=0, le=1, description="a grey rectangle over part of the face")
    occlusion_size: tuple[float, float] = Field((0.15, 0.35), description="its sides, as fractions of the face side")

    @model_validator(mode="after")
    def _ranges_ordered(self) -> AugmentConfig:
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError(f"jpeg_quality must be 1 <= low <= high <= 100, got {self.jpeg_quality}")
        low, high = self.occlusion_size
        if not 0 < low <= high <= 1:
            raise ValueError(f"occlusion_size must be 0 < low <= high <= 1, got {self.occlusion_size}")
        return self


class OptimConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    hflip: bool = True
    checkpoint_every_steps: int = Field(200, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop early (tests, quick runs)")
    mixed_precision: bool = Field(True, description="bf16 autocast in training where the device computes bf16 natively: "
                                  "CUDA, and CPUs with AVX512-BF16/AMX/ARM BF16 (detected at run time; fp32 elsewhere). "
                                  "Losses stay fp32. Measured 1.64x faster MobileFaceNet steps on an AVX512-BF16 CPU")
    keep_freed_memory: bool = Field(True, description="glibc: keep freed activation memory in the process between CPU "
                                    "training steps instead of page-faulting it in again (pipeline/distill/host_memory.py; "
                                    "measured 1.03-1.15x); process-wide, no effect off glibc")
    sync_batchnorm: bool = Field(False, description="under torchrun: BatchNorm statistics over all ranks' batches")
    channels_last: bool = Field(True, description="NHWC memory format for convolutional models (measured 1.12x faster "
                                                  "training of MobileFaceNet on CPU); no effect on transformers")
    fused_kernels: bool = Field(True, description="BatchNorm + PReLU as one compiled function in training (pipeline/models/"
                                                  "fused_bn.py; measured 1.2x faster MobileFaceNet steps on top of "
                                                  "channels-last); eager where torch.compile cannot run")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="keep an exponential moving average of the weights "
                                    "(timm's ModelEmaV3, with warm-up) and save it as the trained model; none: the last weights")
    augment: AugmentConfig | None = Field(None, description="online augmentation of training faces; none: flips only "
                                                            "(a distilling teacher then runs once, from its cache)")
    eval_every_steps: int | None = Field(None, ge=1, description="score the first verification set every N steps "
                                                                 "(the accuracy-against-training-time curve)")


class TeacherConfig(Section):
    model: str = "vit_face_tiny"
    model_args: dict[str, Any] = {}
    checkpoint: str | None = None
    _checkpoint_expanded = field_validator("checkpoint")(expand_data_root)
    checkpoint_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="the checkpoint file's sha256: "
                                          "a file that differs is refused (the shipped teacher is pinned this way)")
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
    only, VPT-shallow). `teacher_margin_weight` weighs the prompted teacher's own margin loss (lambda_apt), this
    project's addition to the paper; 0 is the paper's setting and needs no teacher margin head. A ViT teacher only:
    EdgeFace has no token sequence to prompt.
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
    margin_weight: float = Field(1.0, ge=0, description="weight of the student's own margin loss; 0 trains by "
                                                        "distillation alone (what unlabelled faces allow)")

    _losses_unique = field_validator("losses")(_unique_loss_names)

    @model_validator(mode="after")
    def _something_to_learn(self) -> DistillVariant:
        if self.margin_weight == 0 and not any(loss.weight > 0 for loss in self.losses):
            raise ValueError("margin_weight 0 and no weighted distillation loss: the student would learn nothing")
        return self


class AblationConfig(Section):
    """`app/ablation.py`: every variant trained with each seed on the same data, teacher and budget."""

    seeds: list[int] = Field([0, 1, 2], min_length=1)
    variants: dict[str, DistillVariant] = {}


class DistillConfig(Section):
    """The student's training: its objective (`losses`, optional `apt`), margin, optimiser, and the ablation's variants."""

    losses: list[LossConfig] = [LossConfig(name="embedding_kd", weight=1.0)]
    apt: APTConfig | None = None
    margin_weight: float = Field(1.0, ge=0, description="the distilled student's margin loss weight; 0: distillation alone")
    teacher_precision: Literal["auto", "fp32", "bf16"] = Field("auto", description=(
        "a frozen teacher's forward in online distillation; auto: bf16 on a CUDA device or a CPU with native bf16 "
        "(AVX512-BF16/AMX; measured 2x faster, cosine 0.99997 to fp32 for EdgeFace-XS), else fp32"))
    margin: MarginConfig = MarginConfig()
    optim: OptimConfig = OptimConfig()
    train_baseline: bool = Field(True, description="train the no-distillation student (stage baseline) to compare against")
    seed: int | None = Field(None, description="both students' seed (initial weights, batch order); none: the run's seed. "
                                               "Another student seed reuses the run's data and teacher")
    ablation: AblationConfig = AblationConfig()

    _losses_unique = field_validator("losses")(_unique_loss_names)

    def objective(self) -> DistillVariant:
        """The objective the `distill` stage trains: this section's losses and APT setting."""
        return DistillVariant(losses=self.losses, apt=self.apt, margin_weight=self.margin_weight)


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


HOST_TARGET = "host"
ARM64_PREFIX = "arm64:"


def parse_target_entry(entry: str) -> tuple[str, str | None]:
    """'host' -> ("host", None); 'arm64:cortex-a53' -> ("aarch64-linux", "cortex-a53"); anything else: ValueError."""
    if entry == HOST_TARGET:
        return "host", None
    if entry.startswith(ARM64_PREFIX) and entry[len(ARM64_PREFIX):]:
        return "aarch64-linux", entry[len(ARM64_PREFIX):]
    raise ValueError(f"native target {entry!r}: expected 'host' or 'arm64:<qemu cpu>' (e.g. arm64:max, arm64:cortex-a53)")


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

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        for entry in formats:
            parse_format_entry(entry)
        return formats

    @model_validator(mode="after")
    def _options_a_listed_format_reads(self) -> ExportConfig:
        """An option no listed format reads would do nothing (Ultralytics' per-format arguments): say who reads it."""
        for option in sorted(self.model_fields_set - options_taken(self.formats)):
            raise ValueError(f"{option} is read only by {', '.join(readers_of(option))}, and formats lists none of them")
        return self

    @field_validator("ncnn_fp16_arithmetic_off")
    @classmethod
    def _known_layer_types(cls, selectors: list[str]) -> list[str]:
        """A mistyped layer type would mask nothing and fail only on ARM; layer names are checked against the .param."""
        from pipeline.ncnn_layer_types import layer_type_problem

        problem = layer_type_problem(selectors)
        if problem is not None:
            raise ValueError(problem)
        return selectors


class ParetoStudentConfig(Section):
    """One student of the accuracy-latency Pareto: a name for its rows, its registered model and arguments."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = "mobilefacenet"
    model_args: dict[str, Any] = {}


class ParetoConfig(Section):
    """Stage `pareto`: students of several sizes distilled from the run's teacher with the distill stage's objective and
    budget, each exported to ncnn, scored on the first verification set and timed at `threads` (batch 1). A student
    equal to `student` reuses the distill stage's. No students: the stage records nothing."""

    students: list[ParetoStudentConfig] = []
    precisions: list[Literal["fp32", "fp16", "int8"]] = ["fp32", "fp16", "int8"]
    threads: int = Field(1, ge=1)
    warmup_runs: int = Field(10, ge=0)
    timed_runs: int = Field(100, ge=5)
    min_timed_seconds: float = Field(1.0, ge=0)

    @field_validator("students")
    @classmethod
    def _unique_names(cls, students: list[ParetoStudentConfig]) -> list[ParetoStudentConfig]:
        names = [s.name for s in students]
        if len(set(names)) != len(names):
            raise ValueError(f"student names must be unique, got {names}")
        return students


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
    pareto: ParetoConfig = ParetoConfig()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML profile; `overrides` are dotted keys (e.g. {"teacher.checkpoint": "t.pt"}).

    A profile may start from another with `extends: <profile name or path>`: its mappings are merged key by key over
    the base's (lists and values replace), so a variant states only what differs. Model and loss arguments are checked
    against their builders here, so a typo stops the run before any stage. An error names where the value came from:
    the profile file, or the `--set KEY=VALUE` that set it.
    """
    path = Path(path)
    overrides = overrides or {}
    raw = _read_profile(path, seen=())
    _drop_what_belonged_to(raw, [key for key in _BELONGS_TO if key in overrides and overrides[key] != _get_dotted(raw, key)])
    _drop_options_new_formats_do_not_read(raw, overrides)
    for dotted, value in overrides.items():
        try:
            _set_dotted(raw, dotted, value)
        except TypeError as exc:
            raise ConfigError(f"{_override_text(dotted, value)}: {exc}") from None
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()]
        raise ConfigError(_with_sources(problems, path, overrides)) from None
    problem = builder_argument_problem(config) or apt_teacher_problem(config)
    if problem is not None:
        raise ConfigError(_with_sources([problem], path, overrides))
    return config


# A --set of the key on the left replaces what the profile's keys on the right described: they are dropped unless
# the same command sets them too (insightface_vit_t fixes its own depth; a pin is the hash of the profile's own file).
_BELONGS_TO = {
    "teacher.model": ("model_args",),
    "student.model": ("model_args",),
    "teacher.checkpoint": ("checkpoint_sha256",),
}


def _get_dotted(tree: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _drop_what_belonged_to(raw: dict, replaced: list[str]) -> None:
    """Drop the profile's keys that described a value a --set replaces (before the --sets apply, so theirs stand)."""
    for key in replaced:
        section_name = key.split(".")[0]
        section = raw.get(section_name)
        for dependent in _BELONGS_TO[key]:
            if isinstance(section, dict):
                section.pop(dependent, None)


def _drop_options_new_formats_do_not_read(raw: dict, overrides: dict[str, Any]) -> None:
    """A --set of export.formats replaces the profile's options for formats it no longer lists (e.g. the default's INT8
    calibration set under `--set export.formats=[onnx:fp32]`); options the same command sets stay, and are checked."""
    section = raw.get("export")
    if "export.formats" not in overrides or not isinstance(section, dict) or not isinstance(overrides["export.formats"], list):
        return
    try:
        taken = options_taken(overrides["export.formats"])
    except ValueError:
        return  # the formats themselves are wrong: validation names the --set
    for option in [key for key in section if key not in taken and f"export.{key}" not in overrides]:
        section.pop(option)


def apt_teacher_problem(config: RunConfig) -> tuple[str, str] | None:
    """(dotted key, problem) when an objective asks for APT with a teacher that has no token sequence (EdgeFace)."""
    asked = [("distill.apt", config.distill.apt)]
    asked += [(f"distill.ablation.variants.{name}.apt", variant.apt) for name, variant in config.distill.ablation.variants.items()]
    where = next((dotted for dotted, apt in asked if apt is not None), None)
    if where is None:
        return None
    try:
        from pipeline.distill.apt import apt_teacher_problem as refusal
        from pipeline.models.edgeface import EDGEFACE_VARIANTS
    except ImportError:  # a machine without torch reading a profile: building the prompted teacher still checks
        return None
    return (where, refusal(config.teacher.model)) if config.teacher.model in EDGEFACE_VARIANTS else None


def builder_argument_problem(config: RunConfig) -> tuple[str, str] | None:
    """The first model or loss argument (or name) the config gives that its builder does not take: (dotted key, problem)."""
    try:
        from pipeline.distill.losses import loss_argument_problem
        from pipeline.models.registry import model_argument_problem
    except ImportError:  # a machine without torch reading a profile: building the model still checks
        return None
    models = [("teacher", config.teacher.model, config.teacher.model_args), ("student", config.student.model, config.student.model_args)]
    models += [(f"pareto.students.{i}", student.model, student.model_args) for i, student in enumerate(config.pareto.students)]
    for where, name, args in models:
        problem = model_argument_problem(name, args)
        if problem is not None:
            return f"{where}.model" if problem[0] is None else f"{where}.model_args.{problem[0]}", problem[1]
    variants = [("distill", config.distill.losses)]
    variants += [(f"distill.ablation.variants.{name}", v.losses) for name, v in config.distill.ablation.variants.items()]
    for where, losses in variants:
        for i, loss in enumerate(losses):
            problem = loss_argument_problem(loss.name, loss.args)
            if problem is not None:
                return f"{where}.losses.{i}.name" if problem[0] is None else f"{where}.losses.{i}.args.{problem[0]}", problem[1]
    return None


def _with_sources(problems: list[tuple[str, str]], path: Path, overrides: dict[str, Any]) -> str:
    """Problems as `<source>: <key>: <problem>`, the source being the `--set` that set the key (or a section above or
    below it), else the profile; problems of one source share it."""
    by_source: dict[str, list[str]] = {}
    for dotted, message in problems:
        setting = next((k for k in overrides if dotted == k or dotted.startswith(f"{k}.")), None) or next(
            (k for k in overrides if k.startswith(f"{dotted}.")), None)
        if setting is None and ".model_args." in dotted:  # arguments the profile gave a model a --set replaced
            setting = next((k for k in overrides if k == f"{dotted.split('.model_args.')[0]}.model"), None)
        source = _override_text(setting, overrides[setting]) if setting is not None else str(path)
        by_source.setdefault(source, []).append(f"{dotted}: {message}")
    return "; ".join(f"{source}: {'; '.join(found)}" for source, found in by_source.items())


def _override_text(dotted: str, value: Any) -> str:
    """The command-line text an override came from, as the user would have typed it."""
    shown = value if isinstance(value, str) and value.isprintable() else json.dumps(value)  # one line, always
    return f"--set {dotted}={shown}"


def _read_profile(path: Path, seen: tuple[Path, ...]) -> dict:
    """The YAML mapping of a profile with its `extends` chain merged in (a cycle is an error)."""
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
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: extends must name a profile, got {base_name!r}")
    base = Path(base_name)  # a profile name (configs/<name>.yaml), or a YAML path relative to this file
    base_path = CONFIG_DIR / f"{base_name}.yaml" if not base.suffix else base if base.is_absolute() else path.parent / base
    if base_path.resolve() in seen or base_path.resolve() == path.resolve():
        raise ConfigError(f"{path}: extends {base_name} makes a cycle")
    return _merged(_read_profile(base_path, (*seen, path.resolve())), raw)


def _merged(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


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
