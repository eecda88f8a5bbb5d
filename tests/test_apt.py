"""APT: prompts are the only teacher parameters that train, they change what the teacher shows, and they resume exactly."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import MarginConfig, OptimConfig, load_config
from pipeline.distill.apt import PromptedTeacher
from pipeline.distill.losses import DistillInputs, create_loss
from pipeline.distill.objective import loss_context
from pipeline.distill.trainer import TrainingInterrupted, WeightedLoss, train_recognition_model
from pipeline.errors import ConfigError
from pipeline.models.margin import CombinedMarginHead
from pipeline.models.registry import create_model
from tests.test_trainer import SPEC, small_student, tiny_faces


def frozen_teacher() -> tuple[torch.nn.Module, CombinedMarginHead]:
    torch.manual_seed(1)
    teacher = create_model("vit_face_tiny", input_size=32, patch_size=8, depth=2, embedding_dim=32).eval()
    with torch.no_grad():
        teacher.head[1].running_mean.normal_(0, 0.1)  # non-trivial statistics: train-mode BatchNorm would move them
    return teacher, CombinedMarginHead(32, 4, scale=16.0, m2=0.2)


def objective(teacher, head, student, num_prompts=3, blocks=None):
    apt = PromptedTeacher(teacher, head, num_prompts=num_prompts, blocks=blocks, loss_weight=1.0)
    context = loss_context(student, 32, teacher, head)
    losses = [
        WeightedLoss("embedding_kd", 1.0, create_loss("embedding_kd", context=context)),
        WeightedLoss("urfm", 1.0, create_loss("urfm", context=context, student_tap="stages.2", teacher_tap="blocks.1", grid=2, attn_dim=8)),
    ]
    return apt, losses


def train(tmp_dir, stop_at=None, max_steps=None):
    torch.manual_seed(0)
    student = small_student()
    teacher, head = frozen_teacher()
    apt, losses = objective(teacher, head, student)
    optim = OptimConfig(epochs=2, batch_size=8, lr=0.01, warmup_epochs=0.5, checkpoint_every_steps=3, max_steps=max_steps)
    train_recognition_model(student, tiny_faces(), SPEC, MarginConfig(scale=16.0, m2=0.2), optim, seed=0, checkpoint_dir=tmp_dir,
                            distill_losses=losses, teacher=apt, should_stop=None if stop_at is None else lambda step: step == stop_at)
    return student, apt, losses


def test_a_training_step_moves_the_prompts_and_no_teacher_weight(tmp_path):
    teacher, head = frozen_teacher()
    before = {name: value.clone() for name, value in [*teacher.state_dict().items(), *head.state_dict().items()]}
    student = small_student()
    apt, losses = objective(teacher, head, student)
    prompts_before = apt.prompts.detach().clone()
    optim = OptimConfig(epochs=1, batch_size=8, lr=0.01, warmup_epochs=0.0, max_steps=2)
    train_recognition_model(student, tiny_faces(), SPEC, MarginConfig(scale=16.0, m2=0.2), optim, seed=0,
                            checkpoint_dir=tmp_path / "ckpt", distill_losses=losses, teacher=apt)
    after = {**teacher.state_dict(), **head.state_dict()}
    changed = [name for name, value in before.items() if not torch.equal(value, after[name])]
    assert not changed, f"teacher weights moved: {changed}"
    assert not torch.equal(apt.prompts.detach(), prompts_before)


def test_prompts_change_what_the_teacher_shows_and_come_out_apart_from_the_patch_tokens():
    teacher, head = frozen_teacher()
    images = torch.randn(2, 3, 32, 32)
    for blocks in (None, [0], [1]):
        apt = PromptedTeacher(teacher, head, num_prompts=5, blocks=blocks)
        embedding, tokens, prompts = apt(images, ("blocks.0", "blocks.1"))
        assert embedding.shape == (2, 32)
        assert tokens["blocks.0"].shape == tokens["blocks.1"].shape == (2, 16, teacher.width)  # patch tokens
        assert prompts["blocks.1"].shape == (2, 5, teacher.width)  # and the prompt outputs
        assert ("blocks.0" in prompts) == (blocks != [1])  # no prompts before the first prompted block
        with torch.no_grad():
            assert not torch.allclose(embedding, teacher(images))
    assert PromptedTeacher(teacher, head, num_prompts=5).prompts.shape == (2, 5, teacher.width)  # VPT-deep: every block
    with pytest.raises(ConfigError, match=r"prompt blocks \[2\] are not blocks of the teacher \(0 \.\. 1\)"):
        PromptedTeacher(teacher, head, blocks=[2])


def test_prompted_teacher_stays_in_eval_mode_while_the_student_trains():
    teacher, head = frozen_teacher()
    apt = PromptedTeacher(teacher, head).train()
    assert apt.training and not teacher.training and not any(m.training for m in teacher.modules())


def test_resume_with_apt_and_urfm_reaches_the_same_weights(tmp_path):
    straight_student, straight_apt, straight_losses = train(tmp_path / "straight")
    with pytest.raises(TrainingInterrupted, match="stopped at step 5"):
        train(tmp_path / "interrupted", stop_at=5)
    student, apt, losses = train(tmp_path / "interrupted")
    assert torch.equal(apt.prompts, straight_apt.prompts)
    for reference, resumed in ((straight_student, student), (straight_losses[1].module, losses[1].module)):
        for name, tensor in reference.state_dict().items():
            assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_the_trained_student_carries_no_hooks_or_distillation_modules(tmp_path):
    student, _, _ = train(tmp_path / "ckpt", max_steps=2)
    assert not any(module._forward_hooks for module in student.modules())
    assert set(student.state_dict()) == set(small_student().state_dict())


def test_prompts_enter_every_block_and_gradients_reach_only_the_prompts():
    """VPT-deep: block i's input starts with prompt set i; the teacher is frozen and a URFM loss trains only prompts."""
    teacher, head = frozen_teacher()
    student = small_student()
    apt, losses = objective(teacher, head, student)
    seen = {}
    hooks = [block.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0])) for i, block in enumerate(teacher.vit.blocks)]
    images = torch.randn(2, 3, 32, 32)
    embedding, tokens, prompts = apt(images, ("blocks.1",))
    for hook in hooks:
        hook.remove()
    assert apt.prompts.shape == (len(teacher.vit.blocks), 3, teacher.width)
    for index, block_input in seen.items():
        assert torch.equal(block_input[:, :3], apt.prompts[index].expand(2, -1, -1))
    assert not any(p.requires_grad for p in [*teacher.parameters(), *head.parameters()])
    captured = {}
    student.stages[2].register_forward_hook(lambda m, i, out: captured.__setitem__("stages.2", out))
    student(images)
    urfm = losses[1].module
    urfm(DistillInputs(embedding, torch.zeros(2), student_features=captured, teacher_tokens=tokens, teacher_prompts=prompts)).backward()
    assert apt.prompts.grad is not None and float(apt.prompts.grad.abs().sum()) > 0
    assert all(p.grad is None for p in [*teacher.parameters(), *head.parameters()])


def test_prompt_outputs_are_part_of_the_teacher_features_urfm_maps():
    """f = [x_K, p_K]: the mapped teacher features change with the prompts, and URFM's loss alone trains them."""
    teacher, head = frozen_teacher()
    _, losses = objective(teacher, head, small_student())
    urfm = losses[1].module
    apt = PromptedTeacher(teacher, head, num_prompts=3)
    _, tokens, prompts = apt(torch.randn(2, 3, 32, 32), ("blocks.1",))
    attention, with_prompts = urfm.map_teacher(tokens["blocks.1"], prompts["blocks.1"])
    assert attention.shape[-1] == 16 + 3 and float(attention[..., 16:].sum().detach()) > 0
    _, without_prompts = urfm.map_teacher(tokens["blocks.1"])
    assert not torch.allclose(with_prompts, without_prompts)
    urfm.map_teacher(tokens["blocks.1"], prompts["blocks.1"])[1].sum().backward()
    assert float(apt.prompts.grad[1].abs().sum()) > 0  # the tapped block's own prompts reach the mapped features


def test_apt_refuses_a_teacher_without_tokens_and_keeps_the_margin_term_optional(tmp_path):
    edgeface = create_model("edgeface_xxs")
    with pytest.raises(ConfigError, match=r"^APT does not apply to the teacher EdgeFace: [^\n]*$"):
        PromptedTeacher(edgeface, None, loss_weight=0.0)
    path = tmp_path / "apt_edgeface.yaml"
    path.write_text("teacher: {model: edgeface_xxs}\ndistill: {apt: {num_prompts: 2}}\n")
    with pytest.raises(ConfigError, match=r"distill.apt: APT does not apply to the teacher edgeface_xxs: "):
        load_config(path)
    teacher, head = frozen_teacher()
    with pytest.raises(ConfigError, match="teacher margin loss .* needs the teacher's margin head"):
        PromptedTeacher(teacher, None, loss_weight=1.0)
    headless = PromptedTeacher(teacher, None, num_prompts=2, loss_weight=0.0)  # the paper's setting: no margin term
    batch = headless.signals(None, None, torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), ("blocks.1",))
    assert batch.loss is None and batch.prompts["blocks.1"].shape == (2, 2, teacher.width)
