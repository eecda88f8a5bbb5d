"""Every distillation term learns: optimised on one fixed batch of real teacher signals, its value goes down."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import DistillVariant, LossConfig
from pipeline.distill.batches import images_to_tensor
from pipeline.distill.losses import DistillInputs, create_loss
from pipeline.distill.objective import build_losses, loss_context
from pipeline.errors import ConfigError
from pipeline.models.margin import CombinedMarginHead
from tests.test_apt import frozen_teacher
from tests.test_trainer import SPEC, small_student, tiny_faces

TERMS = {
    "embedding_kd": {},
    "logit_kd": {"temperature": 4.0},
    "fitnet": {"student_tap": "stages.2", "teacher_tap": "blocks.1"},
    "urfm": {"student_tap": "stages.2", "teacher_tap": "blocks.1", "grid": 2, "attn_dim": 8},
    "urfm_local": {"student_tap": "stages.2", "teacher_tap": "blocks.1", "grid": 2, "attn_dim": 8},
}


@pytest.mark.parametrize("name", sorted(TERMS))
def test_distill_loss_decreases_on_a_fixed_batch(name):
    torch.manual_seed(0)
    faces = tiny_faces()
    rows = np.arange(0, len(faces.labels), 2)
    images = images_to_tensor(faces.images[rows], np.zeros(len(rows), bool), SPEC)
    labels = torch.from_numpy(faces.labels[rows])
    teacher, teacher_head = frozen_teacher()
    with torch.no_grad():
        teacher_embedding, per_block = teacher.forward_tokens(images)
    student = small_student().train()
    student_head = CombinedMarginHead(32, 4, scale=16.0, m2=0.2)
    term = create_loss(name, context=loss_context(student, 32, teacher, teacher_head), **TERMS[name])
    tap = dict(student.named_modules())["stages.2"]
    captured = {}
    tap.register_forward_hook(lambda m, i, out: captured.__setitem__("stages.2", out))
    optimizer = torch.optim.Adam([*student.parameters(), *student_head.parameters(), *term.parameters()], lr=0.01)
    values = []
    for _ in range(12):
        embedding = student(images)
        inputs = DistillInputs(embedding, labels, teacher_embedding, student_logits=student_head.cosine(embedding) * student_head.scale,
                               student_features=dict(captured), teacher_tokens={"blocks.1": per_block[1]})
        loss = term(inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(float(loss.detach()))
    assert values[-1] < 0.8 * values[0], values


def test_logit_kd_is_zero_when_the_student_matches_the_teacher():
    _, head = frozen_teacher()
    term = create_loss("logit_kd", teacher_head=head, temperature=2.0)
    teacher_embedding = torch.randn(5, 32)
    teacher_logits = head.cosine(teacher_embedding) * head.scale
    matched = DistillInputs(torch.zeros(5, 32), torch.zeros(5), teacher_embedding, student_logits=teacher_logits)
    shuffled = DistillInputs(torch.zeros(5, 32), torch.zeros(5), teacher_embedding, student_logits=teacher_logits.flip(0))
    assert float(term(matched)) == pytest.approx(0.0, abs=1e-6)
    assert float(term(shuffled)) > 0.01


def test_objective_building_refuses_what_cannot_train():
    student = small_student()
    teacher, head = frozen_teacher()
    context = loss_context(student, 32, teacher, None)
    with pytest.raises(ConfigError, match="logit_kd needs the teacher's margin head"):
        build_losses(DistillVariant(losses=[LossConfig(name="logit_kd")]), context, seed=0)
    with pytest.raises(ConfigError, match="apt is set but no distillation loss reads the teacher"):
        build_losses(DistillVariant(losses=[], apt={"num_prompts": 2}), context, seed=0)
    with pytest.raises(ConfigError, match="distillation loss 'urfm': .*unexpected keyword argument 'grd'"):
        build_losses(DistillVariant(losses=[LossConfig(name="urfm", args={"student_tap": "stages.2", "teacher_tap": "blocks.0", "grd": 3})]), context, seed=0)


def test_trainable_terms_are_seeded_by_the_run_seed():
    student = small_student()
    teacher, head = frozen_teacher()
    context = loss_context(student, 32, teacher, head)
    variant = DistillVariant(losses=[LossConfig(name="urfm", args={"student_tap": "stages.2", "teacher_tap": "blocks.0", "grid": 2})])
    first, again, other = (build_losses(variant, context, seed)[0].module.state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
