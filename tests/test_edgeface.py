"""EdgeFace as a teacher: its int8 `_q` checkpoints load as a float teacher, other sizes are refused in one line,
its stage maps reach feature distillation, and (where ../shared/models holds it) the authors' model scores as
published on real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from pipeline.data.real_data import default_models_root, default_real_data_root, expected_models_root, expected_real_data_root
from pipeline.distill.checkpoint import load_module_weights
from pipeline.distill.objective import teacher_extents, teacher_token_shapes
from pipeline.errors import DataError
from pipeline.models.registry import create_model
from pipeline.models.saved import load_external_weights

MODELS_ROOT = default_models_root()
DATA_ROOT = default_real_data_root()


def quantised_checkpoint(path: Path, name: str = "edgeface_xxs", seed: int = 0) -> torch.nn.Module:
    """A random EdgeFace saved as the authors saved theirs: every Linear dynamically quantised to int8, state dict
    keys under `model.`; returns the float model it came from."""
    torch.manual_seed(seed)
    float_model = create_model(name).eval()
    quantised = torch.ao.quantization.quantize_dynamic(float_model, {torch.nn.Linear}, dtype=torch.qint8)
    torch.save(quantised.state_dict(), path)
    return float_model


def faces(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def test_quantised_checkpoint_loads_as_float_and_reproduces_its_model(tmp_path, one_torch_thread):
    path = tmp_path / "edgeface_xxs_q.pt"
    float_model = quantised_checkpoint(path)
    state = load_external_weights(path)  # weights_only torch.load, then the packed int8 Linears dequantised
    assert all(isinstance(v, torch.Tensor) and not v.is_quantized for v in state.values())
    assert not any("_packed_params" in key for key in state)
    teacher = create_model("edgeface_xxs")
    load_module_weights(teacher, state, path)
    teacher.eval()
    with torch.inference_mode():
        loaded, original = teacher(faces()), float_model(faces())
    # int8 weights: close to the float model, not bit-equal to it
    assert cosine(loaded, original).min() > 0.99
    linear = "model.stages.1.blocks.0.mlp.fc1"
    original_weight = dict(float_model.named_parameters())[f"{linear}.weight"]
    assert torch.equal(state[f"{linear}.bias"], dict(float_model.named_parameters())[f"{linear}.bias"].detach())
    assert (state[f"{linear}.weight"] - original_weight).abs().max() <= original_weight.abs().max() / 127 + 1e-6
    assert not torch.equal(state[f"{linear}.weight"], original_weight)


def test_checkpoint_of_another_size_is_one_line(tmp_path, capsys):
    path = tmp_path / "edgeface_xxs_q.pt"
    quantised_checkpoint(path)
    code = main(["run", "--profile", "tiny", "--runs-dir", str(tmp_path / "runs"), "--until", "teacher",
                 "--teacher-checkpoint", str(path), "--set", "teacher.model=edgeface_xs", "--set", "teacher.model_args={}",
                 "--set", "data.synthetic.num_train_identities=4", "--set", "data.synthetic.images_per_identity=2"])
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(error) == 1
    assert str(path) in error[0] and "not a teacher.model edgeface_xs() checkpoint" in error[0] and "shape mismatch" in error[0]


def test_stage_maps_are_token_maps_for_feature_distillation(one_torch_thread):
    teacher = create_model("edgeface_xxs").eval()
    shapes = teacher_token_shapes(teacher)
    assert shapes == {"stages.0": (28, 28, 24), "stages.1": (14, 14, 48), "stages.2": (7, 7, 88), "stages.3": (3, 3, 168)}
    assert teacher_extents(teacher)["stages.3"] == pytest.approx(96 / 112) and teacher_extents(teacher)["stages.2"] == 1.0
    with torch.inference_mode():
        embedding, per_stage = teacher.forward_tokens(faces(2))
        direct = teacher(faces(2))
    torch.testing.assert_close(embedding, direct)
    for tap, tokens in zip(shapes, per_stage):
        grid_h, grid_w, channels = shapes[tap]
        assert tokens.shape == (2, grid_h * grid_w, channels)


@pytest.mark.skipif(MODELS_ROOT is None or DATA_ROOT is None,
                    reason=f"EdgeFace weights or real faces not found ({expected_models_root()}, {expected_real_data_root()}; "
                           "set FACE_MODELS_ROOT / FACE_DATA_ROOT)")
def test_authors_edgeface_xs_scores_as_published_on_lfw_dev(tmp_path):
    """The authors' int8 checkpoint as a float teacher, scored by the project's own evaluation (no flip)."""
    checkpoint = MODELS_ROOT / "edgeface" / "edgeface_xs_q.pt"
    out = tmp_path / "evaluation.json"
    assert main(["evaluate", str(checkpoint), "--model", "edgeface_xs", "--bin", str(DATA_ROOT / "lfw" / "dev.bin"), "--json", str(out)]) == 0
    import json

    row = json.loads(out.read_text())["results"][0]
    assert row["status"] == "scored" and row["pairs"] == 1200
    assert row["accuracy"] >= 0.988, row["accuracy"]


def test_unreadable_packed_entry_is_named(tmp_path):
    path = tmp_path / "broken_q.pt"
    torch.save({"model.head.fc._packed_params._packed_params": (torch.zeros(2, 2), torch.zeros(2)),
                "model.head.fc._packed_params.dtype": torch.qint8}, path)
    with pytest.raises(DataError, match=r"model\.head\.fc\._packed_params\._packed_params: expected \(quantised weight, bias\)"):
        load_external_weights(path)


def test_embeddings_differ_between_faces(one_torch_thread):
    """A loaded random teacher is input-sensitive (a constant embedding would make every test above vacuous)."""
    teacher = create_model("edgeface_xxs").eval()
    with torch.inference_mode():
        embedding = teacher(faces(3)).numpy()
    assert np.abs(embedding[0] - embedding[1]).max() > 1e-3
