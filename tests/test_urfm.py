"""URFM as published: queries over all pixels, the bucketed facial bias, both losses, and no constant-output shortcut."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.distill.face_geometry import (FACE_LANDMARKS, REST_OF_FACE, bucket_ids, euclidean_distance, facial_distance, facial_regions,
                                            grid_positions, piecewise_index)
from pipeline.distill.losses import DistillInputs, create_loss
from pipeline.distill.objective import loss_context
from pipeline.distill.urfm import URFMLoss
from pipeline.distill.urfm_local import LocalURFMLoss
from pipeline.models.registry import create_model


def small_urfm(**args) -> URFMLoss:
    torch.manual_seed(0)
    return URFMLoss("s", "t", student_shape=(8, 14, 14), teacher_shape=(7, 7, 12), grid=7, attn_dim=8, num_heads=2, **args)


def inputs(student: torch.Tensor, teacher: torch.Tensor, prompts: torch.Tensor | None = None) -> DistillInputs:
    return DistillInputs(torch.zeros(len(student), 8), torch.zeros(len(student)), student_features={"s": student},
                         teacher_tokens={"t": teacher}, teacher_prompts={} if prompts is None else {"t": prompts})


def test_the_published_urfm_is_urfm_and_the_windowed_one_urfm_local():
    context = loss_context(create_model("mobilefacenet", width=0.25).eval(), 112,
                           create_model("vit_face_tiny", depth=2).eval(), None)
    assert isinstance(create_loss("urfm", context=context), URFMLoss)
    assert isinstance(create_loss("urfm_local", context=context, student_tap="stages.2", teacher_tap="blocks.1"), LocalURFMLoss)


@pytest.mark.parametrize("teacher_name, teacher_tap, teacher_grid", [("vit_face_tiny", "blocks.0", (7, 7)), ("edgeface_xxs", "stages.3", (3, 3))])
def test_taps_default_to_the_last_spatial_stage_of_each_network(teacher_name, teacher_tap, teacher_grid):
    """ViT patch tokens and EdgeFace stage maps both map, by default from the deepest tap of each network."""
    args = {"depth": 1} if teacher_name.startswith("vit") else {}
    teacher, student = create_model(teacher_name, **args).eval(), create_model("mobilefacenet", width=0.25).eval()
    urfm = create_loss("urfm", context=loss_context(student, 112, teacher, None), attn_dim=16)
    assert (urfm.student_tap, urfm.teacher_tap) == ("stages.4", teacher_tap)
    assert urfm.teacher_map.grid_hw == teacher_grid and urfm.student_map.grid_hw == (7, 7)
    captured = {}
    hook = student.stages[4].register_forward_hook(lambda m, i, out: captured.__setitem__("map", out))
    with torch.no_grad():
        student(torch.randn(2, 3, 112, 112))
        _, tokens = teacher.forward_tokens(torch.randn(2, 3, 112, 112))
    hook.remove()
    batch = DistillInputs(torch.zeros(2, 512), torch.zeros(2), student_features={"stages.4": captured["map"]},
                          teacher_tokens={teacher_tap: tokens[-1]})
    attention, feature = urfm.terms(batch)
    assert torch.isfinite(attention) and torch.isfinite(feature) and float(feature.detach()) > 0


def test_every_query_attends_over_all_pixels_of_both_networks():
    """No window: a change at one far corner pixel moves the mapped feature of every query."""
    urfm = small_urfm()
    student, teacher = torch.randn(2, 8, 14, 14), torch.randn(2, 49, 12)
    with torch.no_grad():
        student_attention, student_local = urfm.map_student(student)
        teacher_attention, teacher_local = urfm.map_teacher(teacher)
        assert student_attention.shape == (2, 49, 196) and bool((student_attention > 0).all())
        assert teacher_attention.shape == (2, 49, 49) and bool((teacher_attention > 0).all())
        moved_student = student.clone()
        moved_student[:, :, 13, 13] += 5.0
        moved_teacher = teacher.clone()
        moved_teacher[:, 48] += 5.0 * torch.randn(12)  # not a constant shift, which the tokens' layer norm removes
        assert bool(((urfm.map_student(moved_student)[1] - student_local).abs().amax(dim=-1) > 1e-6).all())
        assert bool(((urfm.map_teacher(moved_teacher)[1] - teacher_local).abs().amax(dim=-1) > 1e-6).all())


def test_the_facial_bias_is_a_learnable_bucket_indexed_by_irpe_of_euclidean_plus_facial_distance():
    queries = small_urfm(gamma=1.0).queries
    positions = grid_positions(14, 14)
    euclidean = euclidean_distance(queries.anchors, positions) / (1 / 14)  # in the default unit, 1/14 of the face side
    # gamma = 0 is iRPE's Euclidean method
    assert torch.equal(bucket_ids(queries.anchors, positions, gamma=0.0), piecewise_index(euclidean, 3.8, 7.6, 30.4))
    assert torch.equal(small_urfm(gamma=0.0).student_map.pixel_buckets, piecewise_index(euclidean, 3.8, 7.6, 30.4))
    # the logits are (q_l + P[bucket_lj]) . k_j / sqrt(d): same bucket, same bias
    ids = queries.bucket_ids(positions)
    keys = torch.randn(1, len(positions), 8)
    explicit = torch.einsum("lpd,pd->lp", queries.queries[:, None, :] + queries.bias(ids), keys[0]) / 8 ** 0.5
    assert torch.allclose(queries.logits(keys, ids)[0], explicit, atol=1e-6)
    same = ids == ids[0, 0]
    assert int(same.sum()) > 1 and torch.equal(queries.bias(ids)[same], queries.buckets[ids[0, 0]].expand(int(same.sum()), -1))
    # equal pixel distance, one point inside the eye's region and one outside it: gamma separates them
    eye = FACE_LANDMARKS[0]
    anchor, inside, outside = (eye + torch.tensor([0.0, dx]) for dx in (-0.12, -0.07, -0.17))
    assert facial_regions(torch.stack([anchor, inside, outside])).tolist() == [0, 0, REST_OF_FACE]
    assert facial_distance(anchor[None], torch.stack([inside, outside]))[0, 0] == 0
    flat = bucket_ids(anchor[None], torch.stack([inside, outside]), gamma=0.0)[0]
    facial = bucket_ids(anchor[None], torch.stack([inside, outside]), gamma=1.0)[0]
    assert flat[0] == flat[1] and facial[0] < facial[1]
    assert facial_regions(FACE_LANDMARKS).tolist() == [0, 1, 2, 3, 4]


def test_both_losses_are_present_and_reach_the_student_and_the_mapping():
    urfm = small_urfm(attention_weight=0.5)
    student, teacher = torch.randn(2, 8, 14, 14, requires_grad=True), torch.randn(2, 49, 12)
    attention, feature = urfm.terms(inputs(student, teacher))
    for term in (attention, feature):
        assert float(term.detach()) > 0
        grads = torch.autograd.grad(term, [student, urfm.queries.queries, urfm.queries.buckets], retain_graph=True)
        assert all(float(g.abs().sum()) > 0 for g in grads)
    total = urfm(inputs(student, teacher))
    assert total.ndim == 0 and torch.allclose(total, feature + 0.5 * attention)


def test_a_constant_student_cannot_drive_the_loss_near_zero_while_a_teacher_like_one_can():
    torch.manual_seed(1)
    urfm = URFMLoss("s", "t", student_shape=(12, 7, 7), teacher_shape=(7, 7, 12), grid=7, attn_dim=8, num_heads=2)
    teacher = torch.randn(4, 49, 12) + torch.randn(1, 1, 12) * 3  # a shared component, as real tokens have
    with torch.no_grad():  # the student reproduces the teacher: same keys, identity values
        urfm.student_map.key.load_state_dict(urfm.teacher_map.key.state_dict())
        urfm.student_map.value.weight.copy_(torch.eye(12))
    teacher_like = F.layer_norm(teacher, (12,)).transpose(1, 2).reshape(4, 12, 7, 7)
    assert float(urfm(inputs(teacher_like, teacher)).detach()) < 1e-6

    constant = torch.full((4, 12, 7, 7), 0.3)
    optimizer = torch.optim.Adam(urfm.parameters(), lr=0.05)  # every learnable part tries to make the constant fit
    for _ in range(30):
        attention, feature = urfm.terms(inputs(constant, teacher))
        assert float(feature.detach()) >= 1 - 1e-4
        optimizer.zero_grad()
        (feature + attention).backward()
        optimizer.step()
    assert float(urfm(inputs(constant, teacher)).detach()) >= 1 - 1e-4
