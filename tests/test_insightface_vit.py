"""arcface_torch ViT checkpoints load into FaceViT and reproduce the original's forward output.

`ArcfaceTorchViT` below re-implements insightface `recognition/arcface_torch/backbones/vit.py` (upstream commit
7fadd42) with its module names, parameter shapes and eval-mode forward, so the test holds a checkpoint with their
names and the output their code computes. Only training-time parts are left out (drop path, random token
masking, activation checkpointing, CUDA autocast), none of which acts in eval mode.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from app.cli import main
from pipeline.errors import ConfigError, DataError
from pipeline.models.insightface_vit import (
    INSIGHTFACE_VIT_VARIANTS,
    insightface_model_name,
    load_insightface_vit,
    map_insightface_vit_keys,
)
from pipeline.models.registry import create_model
from pipeline.models.saved import load_model
from tests.conftest import randomise_batchnorm

# (embed_dim, depth) of arcface_torch get_model("vit_t" / "vit_s" / "vit_b"); all: 112x112, patch 9, 8 heads.
ARCFACE_TORCH_SIZES = {"vit_t": (256, 12), "vit_s": (512, 12), "vit_b": (512, 24)}


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        batch_size, num_token, embed_dim = x.shape
        qkv = self.qkv(x).reshape(batch_size, num_token, 3, self.num_heads, embed_dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0].float(), qkv[1].float(), qkv[2].float()
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(batch_size, num_token, embed_dim)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads)
        self.drop_path = nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int = 112, patch_size: int = 9, in_channels: int = 3, embed_dim: int = 768):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ArcfaceTorchViT(nn.Module):
    """arcface_torch `VisionTransformer(img_size=112, patch_size=9, norm_layer="ln")`, eval mode."""

    def __init__(self, num_classes: int = 512, embed_dim: int = 256, depth: int = 12, num_heads: int = 8):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(112, 9, 3, embed_dim)
        self.num_patches = num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(in_features=embed_dim * num_patches, out_features=embed_dim, bias=False),
            nn.BatchNorm1d(num_features=embed_dim, eps=2e-5),
            nn.Linear(in_features=embed_dim, out_features=num_classes, bias=False),
            nn.BatchNorm1d(num_features=num_classes, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def forward(self, x):
        batch = x.shape[0]
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.float())
        return self.feature(torch.reshape(x, (batch, self.num_patches * self.embed_dim)))


def randomised_arcface_vit(variant: str = "vit_t", seed: int = 0) -> ArcfaceTorchViT:
    """Their model with every weight random (norms and BatchNorm statistics too), so any mis-mapped tensor shows."""
    torch.manual_seed(seed)
    width, depth = ARCFACE_TORCH_SIZES[variant]
    model = ArcfaceTorchViT(512, width, depth)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.2 if "norm" in name else 0.02
            parameter.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + scale * torch.randn_like(parameter))
    return randomise_batchnorm(model, seed)


@pytest.fixture(scope="module")
def arcface_vit_t(tmp_path_factory) -> tuple[ArcfaceTorchViT, Path]:
    model = randomised_arcface_vit("vit_t")
    path = tmp_path_factory.mktemp("insightface") / "model.pt"
    torch.save(model.state_dict(), path)  # what arcface_torch's training writes as model.pt
    return model, path


def faces(count: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_mapped_vit_t_reproduces_the_original_forward(arcface_vit_t):
    original, path = arcface_vit_t
    mapped = load_insightface_vit(path, "vit_t")
    images = faces()
    with torch.no_grad():
        expected = original(images)
        got = mapped(images)
        tokens_embedding, per_block = mapped.forward_tokens(images)
    assert got.shape == (3, 512) and expected.abs().mean() > 0.1  # a real, non-degenerate output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tokens_embedding, got)  # the distillation path gives the same embedding
    assert len(per_block) == 12 and per_block[-1].shape == (3, 144, 256)


def test_mapping_is_sensitive_to_every_tensor(arcface_vit_t):
    """Swapping two same-shaped tensors (e.g. the two BatchNorms' biases would not fit; two blocks' fc1 do) changes the output."""
    original, path = arcface_vit_t
    state = original.state_dict()
    state["blocks.3.mlp.fc1.weight"], state["blocks.4.mlp.fc1.weight"] = state["blocks.4.mlp.fc1.weight"], state["blocks.3.mlp.fc1.weight"]
    swapped_path = path.with_name("swapped.pt")
    torch.save(state, swapped_path)
    with torch.no_grad():
        difference = (load_insightface_vit(swapped_path, "vit_t")(faces()) - original(faces())).abs().max()
    assert difference > 1e-3


def test_training_checkpoint_with_ddp_prefix_loads(arcface_vit_t, tmp_path):
    """A checkpoint_gpu_N.pt (backbone under state_dict_backbone, DDP `module.` names, optimizer state beside it)."""
    original, _ = arcface_vit_t
    backbone = {f"module.{key}": value for key, value in original.state_dict().items()}
    path = tmp_path / "checkpoint_gpu_0.pt"
    torch.save({"epoch": 3, "global_step": 1200, "state_dict_backbone": backbone, "state_dict_softmax_fc": {"weight": torch.zeros(4, 512)}}, path)
    with torch.no_grad():
        torch.testing.assert_close(load_insightface_vit(path, "vit_t_dp005_mask0")(faces()), original(faces()), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["vit_s", "vit_b"])
def test_every_variant_has_the_published_names_and_shapes(variant):
    """vit_s / vit_b are too large to run here cheaply: built on the meta device, their names and shapes must map exactly."""
    width, depth = ARCFACE_TORCH_SIZES[variant]
    with torch.device("meta"):
        theirs = ArcfaceTorchViT(512, width, depth)
        ours = create_model(insightface_model_name(variant))
    mapped = {key: tuple(value.shape) for key, value in map_insightface_vit_keys(theirs.state_dict(), "meta").items()}
    assert mapped == {key: tuple(value.shape) for key, value in ours.state_dict().items()}


def test_wrong_variant_names_what_the_checkpoint_holds(arcface_vit_t):
    _, path = arcface_vit_t
    with pytest.raises(DataError, match=r"shape mismatch.*width 256, 12 blocks, 512-d features \(insightface_vit_t\)"):
        load_insightface_vit(path, "vit_s")
    with pytest.raises(ConfigError, match="unknown arcface_torch ViT variant 'vit_q'"):
        load_insightface_vit(path, "vit_q")


def test_non_vit_and_unsafe_files_are_refused(tmp_path):
    resnet_like = tmp_path / "r50.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "fc.weight": torch.zeros(512, 25088)}, resnet_like)
    with pytest.raises(DataError, match="not an arcface_torch ViT checkpoint"):
        load_insightface_vit(resnet_like, "vit_t")
    pickled = tmp_path / "evil.pt"
    torch.save({"pos_embed": torch.zeros(1), "payload": Path("x")}, pickled)  # a non-tensor object: needs a full unpickler
    with pytest.raises(DataError, match="cannot load checkpoint safely"):
        load_insightface_vit(pickled, "vit_t")


def test_config_requires_an_insightface_model_for_the_format(tmp_path):
    from pipeline.config import TeacherConfig

    with pytest.raises(ValueError, match="needs model one of insightface_vit_b, insightface_vit_s, insightface_vit_t"):
        TeacherConfig(checkpoint="m.pt", checkpoint_format="insightface_vit", model="vit_face_tiny")
    with pytest.raises(ValueError, match="needs teacher.checkpoint"):
        TeacherConfig(checkpoint_format="insightface_vit", model="insightface_vit_t")
    assert set(INSIGHTFACE_VIT_VARIANTS.values()) == {"insightface_vit_t", "insightface_vit_s", "insightface_vit_b"}


@pytest.mark.slow
def test_pipeline_teacher_stage_uses_the_checkpoint_as_is(arcface_vit_t, tmp_path):
    """`--teacher-checkpoint model.pt` with checkpoint_format insightface_vit: the run's teacher is the original network."""
    original, path = arcface_vit_t
    status = main([
        "run", "--profile", "tiny", "--runs-dir", str(tmp_path), "--until", "teacher", "--teacher-checkpoint", str(path),
        "--set", "teacher.checkpoint_format=insightface_vit", "--set", "teacher.model=insightface_vit_t", "--set", "teacher.model_args={}",
        "--set", "data.synthetic.num_train_identities=2", "--set", "data.synthetic.images_per_identity=2",
        "--set", "data.synthetic.num_verification_identities=2", "--set", "data.synthetic.images_per_verification_identity=2",
        "--set", "data.synthetic.num_pairs=2",
    ])
    assert status == 0
    teacher = load_model(tmp_path / "tiny" / "teacher", "teacher")
    with torch.no_grad():
        torch.testing.assert_close(teacher(faces()), original(faces()), atol=1e-5, rtol=1e-4)


def readme_insightface_command() -> list[str]:
    """The README's insightface teacher command, as written there (its `model.pt` left for the caller to replace)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]*checkpoint_format=insightface_vit[^`]*)`", readme)]
    assert spans, "README no longer shows the insightface teacher command"
    return shlex.split(spans[0])


# Tiny synthetic data: the data stage runs before the teacher stage; its size does not matter here.
SMALL_DATA = ["--set", "data.synthetic.num_train_identities=2", "--set", "data.synthetic.images_per_identity=2",
              "--set", "data.synthetic.num_verification_identities=2", "--set", "data.synthetic.images_per_verification_identity=2",
              "--set", "data.synthetic.num_pairs=2"]


@pytest.mark.slow
def test_the_readme_insightface_command_as_written_runs_to_the_teacher_stage(arcface_vit_t, tmp_path):
    original, path = arcface_vit_t
    command = [str(path) if word == "model.pt" else word for word in readme_insightface_command()]
    assert command[:2] == ["--teacher-checkpoint", str(path)]
    status = main(["run", "--profile", "tiny", "--runs-dir", str(tmp_path), "--until", "teacher", *command, *SMALL_DATA])
    assert status == 0
    teacher = load_model(tmp_path / "tiny" / "teacher", "teacher")
    with torch.no_grad():
        torch.testing.assert_close(teacher(faces()), original(faces()), atol=1e-5, rtol=1e-4)


def test_an_architecture_argument_for_an_insightface_model_is_one_line_exit_2(arcface_vit_t, tmp_path, capsys):
    """Issue 21: {depth: 6} meeting insightface_vit_t's own depth was a TypeError traceback from the builder."""
    _, path = arcface_vit_t
    status = main(["run", "--profile", "tiny", "--runs-dir", str(tmp_path), "--until", "teacher", "--teacher-checkpoint", str(path),
                   "--set", "teacher.checkpoint_format=insightface_vit", "--set", "teacher.model=insightface_vit_t",
                   "--set", 'teacher.model_args={"depth": 6}', *SMALL_DATA])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in error
    assert error.startswith('error: --set teacher.model_args={"depth": 6}: teacher.model_args.depth: model insightface_vit_t '
                            "sets 'depth' itself")
    assert not (tmp_path / "tiny").exists()  # refused when the config loads, before any stage
