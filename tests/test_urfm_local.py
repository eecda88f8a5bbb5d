"""`urfm_local` (the windowed URFM variant): local features of unified receptive fields for any ViT/CNN pair."""

from __future__ import annotations

import pytest
import torch

from pipeline.distill.losses import DistillInputs, LossContext, create_loss
from pipeline.distill.objective import loss_context
from pipeline.distill.face_geometry import grid_positions
from pipeline.distill.urfm_local import LocalURFMLoss
from pipeline.errors import ConfigError
from pipeline.models.registry import create_model

STUDENTS = {
    "mobilefacenet": lambda: create_model("mobilefacenet", width=0.25),
    "iresnet18": lambda: create_model("iresnet18", width=0.125),
    "iresnet50": lambda: create_model("iresnet50", width=0.125),
}


def vit(patch_size: int, input_size: int):
    """Patch 9 on 112 is arcface_torch's layout: a 12x12 grid over the first 108 pixels."""
    return create_model("vit_face_tiny", patch_size=patch_size, input_size=input_size, depth=1, allow_partial_patches=True).eval()


@pytest.mark.parametrize(
    "patch_size, teacher_input, student_name, student_tap",
    [
        (16, 112, "mobilefacenet", "stages.2"),  # 7x7 tokens vs 14x14 pixels
        (16, 112, "iresnet18", "layer4"),  # 7x7 vs 7x7
        (8, 112, "mobilefacenet", "stages.4"),  # 14x14 tokens vs 7x7 pixels
        (8, 112, "iresnet50", "layer2"),  # 14x14 vs 28x28
        (9, 112, "mobilefacenet", "stages.0"),  # 12x12 tokens over 108 of 112 pixels vs 28x28: grids that do not divide
        (9, 108, "iresnet18", "layer3"),  # 12x12 tokens over the whole (108-pixel) face vs 14x14
    ],
)
def test_urfm_maps_both_networks_to_the_same_local_features(patch_size, teacher_input, student_name, student_tap):
    teacher, student = vit(patch_size, teacher_input), STUDENTS[student_name]().eval()
    context = loss_context(student, 112, teacher, None)
    urfm = create_loss("urfm_local", context=context, student_tap=student_tap, teacher_tap="blocks.0", grid=7, attn_dim=16)
    assert isinstance(urfm, LocalURFMLoss)
    grid = teacher.grid_size
    assert urfm.teacher_map.positions[-1, 0] == pytest.approx((grid - 0.5) * patch_size / teacher_input)  # last token's centre

    captured = {}
    hook = dict(student.named_modules())[student_tap].register_forward_hook(lambda m, i, out: captured.__setitem__("map", out))
    with torch.no_grad():
        student(torch.randn(2, 3, 112, 112))
        _, tokens = teacher.forward_tokens(torch.randn(2, 3, teacher_input, teacher_input))
    hook.remove()
    mapped_student = urfm.map_student(captured["map"])
    mapped_teacher = urfm.map_teacher(tokens[0])
    assert mapped_student.shape == mapped_teacher.shape == (2, 49, teacher.width)
    loss = urfm(DistillInputs(torch.zeros(2, 512), torch.zeros(2), student_features={student_tap: captured["map"]}, teacher_tokens={"blocks.0": tokens[0]}))
    assert loss.ndim == 0 and 0 < float(loss.detach()) < 4  # 2 - 2cos of unit vectors lies in [0, 4]


def test_each_local_feature_sees_only_its_own_face_region():
    """Changing student pixels outside centre k's window leaves local feature k unchanged; inside, it changes."""
    torch.manual_seed(0)
    urfm = LocalURFMLoss("s", "t", student_shape=(8, 14, 14), teacher_shape=(7, 7, 12), grid=7, attn_dim=8)
    features = torch.randn(1, 8, 14, 14)
    centre = 24  # the middle of the 7x7 grid
    inside = urfm.student_map.mask[centre].view(14, 14)
    assert 0 < int(inside.sum()) < 14 * 14 // 4
    outside_changed = features.clone()
    outside_changed[:, :, ~inside] += 5.0
    inside_changed = features.clone()
    inside_changed[:, :, inside] += 5.0
    with torch.no_grad():
        reference = urfm.map_student(features)[0, centre]
        assert torch.allclose(urfm.map_student(outside_changed)[0, centre], reference)
        assert not torch.allclose(urfm.map_student(inside_changed)[0, centre], reference)


def test_a_centre_covers_the_same_face_window_in_both_networks():
    """Centre k's teacher tokens and student pixels lie in one face window, whatever the two grids are."""
    urfm = LocalURFMLoss("s", "t", student_shape=(8, 28, 28), teacher_shape=(12, 12, 12), grid=7, attn_dim=8)
    centres = urfm.centres.positions
    for mapper, (height, width) in ((urfm.teacher_map, (12, 12)), (urfm.student_map, (28, 28))):
        positions = grid_positions(height, width)
        for k in range(len(centres)):
            seen = positions[mapper.mask[k]]
            assert ((seen - centres[k]).abs() <= urfm.centres.region / 2 + 1e-5).all()


def test_teacher_side_has_no_trainable_value_map():
    """Trainable value maps on both sides could both collapse to a constant; the teacher's values stay its tokens."""
    urfm = LocalURFMLoss("s", "t", student_shape=(8, 14, 14), teacher_shape=(7, 7, 12), dim=6)
    assert not [p for p in urfm.teacher_map.value.parameters()]
    assert urfm.map_teacher(torch.randn(3, 49, 12)).shape == (3, 49, 6)


def test_bad_taps_and_regions_fail_at_construction_with_the_shapes_named():
    context = LossContext({"stages.2": (32, 14, 14)}, {"blocks.0": (7, 7, 192)})
    with pytest.raises(ConfigError, match=r"no feature tap 'stages\.9'; taps: stages\.2"):
        create_loss("urfm_local", context=context, student_tap="stages.9", teacher_tap="blocks.0")
    with pytest.raises(ConfigError, match=r"no token tap 'blocks\.3'"):
        create_loss("urfm_local", context=context, student_tap="stages.2", teacher_tap="blocks.3")
    with pytest.raises(ConfigError, match=r"teacher tap 'blocks\.0'.s 7x7 map has no pixel inside the region"):
        create_loss("urfm_local", context=context, student_tap="stages.2", teacher_tap="blocks.0", grid=14, region=0.05)


def test_features_of_the_wrong_shape_are_refused():
    urfm = LocalURFMLoss("s", "t", student_shape=(8, 14, 14), teacher_shape=(7, 7, 12))
    with pytest.raises(ValueError, match=r"student tap 's' features are \(1, 49, 8\), built for \(B, 196, 8\)"):
        urfm.map_student(torch.randn(1, 8, 7, 7))
