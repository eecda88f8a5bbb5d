"""Profiles validate: unknown keys and wrong types fail at start with the file and the key named."""

from __future__ import annotations

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
