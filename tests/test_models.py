"""Model registry, MobileFaceNet and the ViT teacher: shapes, sizes and the taps distillation relies on."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models.margin import CombinedMarginHead
from pipeline.models.registry import create_model, list_models


def test_registry_lists_and_rejects_unknown():
    assert {"mobilefacenet", "vit_face_tiny", "vit_face_small"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'"):
        create_model("resnet9000")


def test_mobilefacenet_matches_the_published_size():
    model = create_model("mobilefacenet").eval()
    parameters = sum(p.numel() for p in model.parameters())
    assert 1.0e6 < parameters < 1.3e6  # MobileFaceNet with a 512-d embedding: ~1.2 M
    with torch.no_grad():
        features = model.forward_features(torch.zeros(2, 3, 112, 112))
        embedding = model(torch.zeros(2, 3, 112, 112))
    assert features.shape == (2, 512, 7, 7)
    assert embedding.shape == (2, 512)
    assert list(model.feature_stages) == [f"stages.{i}" for i in range(5)]


def test_mobilefacenet_rejects_bad_input_size():
    with pytest.raises(ConfigError, match=r"^model mobilefacenet\(input_size=100\): .*multiple of 16"):
        create_model("mobilefacenet", input_size=100)


@pytest.mark.parametrize("patch_size", [8, 16])
def test_vit_teacher_tokens_and_embedding(patch_size):
    model = create_model("vit_face_tiny", depth=2, patch_size=patch_size).eval()
    with torch.no_grad():
        embedding, tokens = model.forward_tokens(torch.zeros(1, 3, 112, 112))
        direct = model(torch.zeros(1, 3, 112, 112))
    grid = 112 // patch_size
    assert embedding.shape == (1, 512)
    assert len(tokens) == 2 and tokens[-1].shape == (1, grid * grid, 192)
    torch.testing.assert_close(embedding, direct)


def test_vit_teacher_rejects_patch_that_does_not_tile():
    with pytest.raises(ConfigError, match=r"^model vit_face_tiny\(patch_size=15\): .*not a multiple of patch_size"):
        create_model("vit_face_tiny", patch_size=15)


def test_an_argument_the_builder_sets_itself_is_named_as_such_not_passed_twice():
    """Issue 21: a profile's {depth: 6} reaching insightface_vit_t (which fixes depth) was `TypeError: got multiple
    values for argument 'depth'`; it is a ConfigError that says the builder sets it."""
    with pytest.raises(ConfigError, match=r"^model insightface_vit_t sets 'depth' itself .*; it takes: drop_path_rate, "
                                          r"embedding_dim, mlp_ratio$"):
        create_model("insightface_vit_t", depth=6)
    with pytest.raises(ConfigError, match=r"^model vit_face_tiny sets 'width' itself"):
        create_model("vit_face_tiny", width=256)


def test_a_value_the_builder_refuses_is_one_line_exit_2_not_a_traceback(tmp_path, capsys):
    from app.cli import main

    status = main(["run", "--profile", "tiny", "--runs-dir", str(tmp_path), "--until", "teacher",
                   "--set", "teacher.model_args.patch_size=15", "--set", "data.synthetic.num_train_identities=2",
                   "--set", "data.synthetic.images_per_identity=2", "--set", "data.synthetic.num_verification_identities=2",
                   "--set", "data.synthetic.images_per_verification_identity=2", "--set", "data.synthetic.num_pairs=2"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2
    assert error.startswith("error: model vit_face_tiny(depth=1, patch_size=15): ") and "not a multiple of patch_size" in error


def test_margin_head_applies_margin_only_to_target_class():
    torch.manual_seed(0)
    head = CombinedMarginHead(8, 4, scale=10.0, m2=0.5)
    embeddings = torch.randn(3, 8)
    labels = torch.tensor([0, 1, 2])
    logits = head(embeddings, labels)
    plain = head.cosine(embeddings) * 10.0
    target = logits.gather(1, labels[:, None])
    assert torch.all(target < plain.gather(1, labels[:, None]))  # the margin makes the target harder
    mask = torch.ones_like(logits, dtype=torch.bool).scatter(1, labels[:, None], False)
    torch.testing.assert_close(logits[mask], plain[mask])
