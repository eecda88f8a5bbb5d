"""Profiles validate: unknown keys and wrong types fail at start with the file and the key named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config import CONFIG_DIR, load_config, profile_path
from pipeline.errors import ConfigError


@pytest.mark.parametrize("profile", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_profiles_validate(profile):
    config = load_config(profile_path(profile))
    assert config.run_name


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("teacher:\n  optim:\n    epochz: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and "teacher.optim.epochz" in str(error.value)


def test_wrong_type_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("distill:\n  optim:\n    batch_size: many\n")
    with pytest.raises(ConfigError, match="distill.optim.batch_size"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_dotted_overrides_apply():
    config = load_config(profile_path("tiny"), {"distill.optim.epochs": 5, "teacher.checkpoint": "/x.safetensors"})
    assert config.distill.optim.epochs == 5
    assert config.teacher.checkpoint == "/x.safetensors"


# --- model and loss arguments, checked against their builders when the config loads ---------------------------------


def test_a_model_argument_typo_from_set_is_one_line_naming_set_before_any_stage(tmp_path, capsys):
    from app.cli import main

    status = main(["run", "--profile", "tiny", "--runs-dir", str(tmp_path), "--set", "teacher.model_args.dpeth=1"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in error
    assert error.startswith("error: --set teacher.model_args.dpeth=1: teacher.model_args.dpeth: model vit_face_tiny takes no "
                            "argument 'dpeth' (did you mean 'depth'?); it takes: act_layer, allow_partial_patches, depth, ")
    assert not (tmp_path / "tiny").exists()  # no stage ran, not even data


def test_a_model_argument_typo_in_a_profile_names_the_profile(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("student:\n  model_args: {widht: 0.5}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (f"{path}: student.model_args.widht: model mobilefacenet takes no argument 'widht' (did you "
                                "mean 'width'?); it takes: embedding_dim, input_size, width")


def test_unknown_loss_arguments_and_model_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"^--set distill.losses=.*: distill.losses.0.args.gird: loss urfm takes no argument "
                                          r"'gird' \(did you mean 'grid'\?\); it takes: attention_weight, attn_dim, "):
        load_config(profile_path("tiny"), {"distill.losses": [{"name": "urfm", "args": {"gird": 5}}]})
    with pytest.raises(ConfigError, match=r"^--set teacher.model=vit_huge: teacher.model: unknown model 'vit_huge'; registered: "):
        load_config(profile_path("tiny"), {"teacher.model": "vit_huge"})


def test_a_set_error_names_the_set_not_the_profile():
    with pytest.raises(ConfigError) as error:
        load_config(profile_path("tiny"), {"distill.optim.batch_size": "many"})
    assert str(error.value).startswith("--set distill.optim.batch_size=many: distill.optim.batch_size: ")
    assert "tiny.yaml" not in str(error.value)
    with pytest.raises(ConfigError, match=r"^--set distill.optim.epochs.x=3: epochs holds 2, not a section$"):
        load_config(profile_path("tiny"), {"distill.optim.epochs.x": 3})


# --- input files, checked before any stage hashes them -------------------------------------------------------------


def test_a_missing_or_folder_teacher_checkpoint_is_one_line_before_any_stage(tmp_path, capsys):
    from app.cli import main

    for given, problem in ((tmp_path / "absent.pt", "teacher checkpoint does not exist"),
                           (tmp_path, "teacher checkpoint is a folder, not a file")):
        status = main(["run", "--profile", "tiny", "--runs-dir", str(tmp_path / "runs"), "--teacher-checkpoint", str(given)])
        assert status == 2 and capsys.readouterr().err.strip() == f"error: {given}: {problem}"
        assert not (tmp_path / "runs" / "tiny" / "data").exists()  # no stage ran


# --- ncnn layer types, checked when the config loads (issue 21) -----------------------------------------------------


def test_a_mistyped_ncnn_layer_type_from_set_is_one_line_naming_the_set_and_the_allowed_types(tmp_path, capsys):
    from app.cli import main

    status = main(["run", "--profile", "tiny", "--runs-dir", str(tmp_path), "--set",
                   'export.ncnn_fp16_arithmetic_off=["ConvolutionDepthwise"]'])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in error
    assert error.startswith('error: --set export.ncnn_fp16_arithmetic_off=["ConvolutionDepthwise"]: '
                            "export.ncnn_fp16_arithmetic_off: ")
    assert "unknown ncnn layer type 'ConvolutionDepthwise' (did you mean 'ConvolutionDepthWise'?)" in error
    assert all(f" {name}," in error for name in ("Convolution", "ConvolutionDepthWise", "InnerProduct", "PReLU"))
    assert not (tmp_path / "tiny").exists()  # no stage ran, not even data


def test_a_mistyped_ncnn_layer_type_in_a_profile_names_the_profile(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("export:\n  ncnn_fp16_arithmetic_off: [Convolutoin]\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: export.ncnn_fp16_arithmetic_off: .*unknown ncnn layer type "
                                          r"'Convolutoin' \(did you mean 'Convolution'\?\); ncnn's layer types: AbsVal, "):
        load_config(path)


def test_ncnn_layer_types_and_layer_names_are_accepted():
    selectors = ["ConvolutionDepthWise", "InnerProduct", "MultiHeadAttention", "convdw_12", "F.normalize_0"]
    config = load_config(profile_path("tiny"), {"export.ncnn_fp16_arithmetic_off": selectors})
    assert config.export.ncnn_fp16_arithmetic_off == selectors  # layer names are checked against the exported .param


def test_a_set_that_replaces_the_model_or_checkpoint_drops_what_described_the_old_one(tmp_path: Path) -> None:
    """The profile's ViT depth is not insightface_vit_t's; the profile's hash pin is not the user's file's."""
    swapped = load_config(profile_path("tiny"), {"teacher.model": "insightface_vit_t", "teacher.checkpoint": "t.pt",
                                                 "teacher.checkpoint_format": "insightface_vit"})
    assert swapped.teacher.model_args == {}
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"extends: {profile_path('tiny')}\nteacher:\n  checkpoint: a.safetensors\n  checkpoint_sha256: {'ab' * 32}\n")
    assert load_config(pinned, {"teacher.checkpoint": "b.safetensors"}).teacher.checkpoint_sha256 is None
    kept = load_config(pinned, {"teacher.checkpoint": "b.safetensors", "teacher.checkpoint_sha256": "cd" * 32})
    assert kept.teacher.checkpoint_sha256 == "cd" * 32
    assert load_config(profile_path("tiny"), {"student.model": "mobilefacenet"}).student.model_args == {"width": 0.25}  # not replaced
    assert load_config(profile_path("tiny"), {"student.model": "iresnet18", "student.model_args.embedding_dim": 128}).student.model_args == {"embedding_dim": 128}
