"""Bad input of every kind ends in one line that names the file and the problem, and the CLI exits non-zero.

Most cases go through `app.cli.main` in-process (the same code path as `python -m pipeline`, without the
import cost of a new interpreter); two run the real executable: a config error, and a disk that fills up
(RLIMIT_FSIZE makes the kernel fail the write, as ENOSPC would). A real ENOSPC runs on a tiny tmpfs inside a
private mount namespace where the machine allows it.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app.cli import main
from pipeline.artifacts import ArtifactWriteError, sha256_file, write_json_atomic
from pipeline.config import CONFIG_DIR
from pipeline.data.arrays import VerificationPairs
from pipeline.data.binset import write_bin
from pipeline.data.image_decode import encode_face
from pipeline.data.image_folder import load_image_folder
from pipeline.distill.checkpoint import load_checkpoint, save_checkpoint
from pipeline.distill.losses import create_loss
from pipeline.distill.teacher_signals import TeacherSignals
from pipeline.distill.trainer import NonFiniteLossError, WeightedLoss
from pipeline.errors import DataError
from pipeline.models.registry import create_model
from pipeline.models.saved import save_weights
from pipeline.preprocess import PreprocessSpec
from tests.conftest import REPO_ROOT
from tests.test_trainer import tiny_faces, train

TINY = str(CONFIG_DIR / "tiny.yaml")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def face(seed: int, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def run_cli(capsys: pytest.CaptureFixture, runs_dir: Path, *args: str) -> tuple[int, str]:
    """`python -m pipeline run --profile tiny ...` in-process: (exit status, the last line on stderr)."""
    status = main(["run", "--profile", TINY, "--runs-dir", str(runs_dir), *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return status, lines[-1] if lines else ""


def run_cli_process(runs_dir: Path, *args: str, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """The real executable, optionally with RLIMIT_FSIZE so the kernel fails writes past `file_size_limit` bytes."""
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--profile", TINY, "--runs-dir", str(runs_dir), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        preexec_fn=limit if file_size_limit is not None else None,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"},
    )


def image_folder(root: Path, identities: int = 4, per_identity: int = 5) -> Path:
    for identity in range(identities):
        (root / f"id{identity}").mkdir(parents=True, exist_ok=True)
        for number in range(per_identity):
            (root / f"id{identity}" / f"{number}.jpg").write_bytes(encode_face(face(identity * 100 + number)))
    return root


def image_folder_args(train_path: Path, tmp_path: Path, *extra: str) -> list[str]:
    verification = write_bin(tmp_path / "verify.bin", VerificationPairs(np.stack([face(900 + i) for i in range(4)]), np.array([True, False])))
    return ["--until", "data", "--set", "data.source=image_folder", "--set", f"data.train_path={train_path}",
            "--set", f'data.verification=[{{"kind": "bin", "path": "{verification}"}}]', *extra]


# --- dataset folders ---------------------------------------------------------------------------------------------


def test_missing_dataset_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_such_folder"
    status, line = run_cli(capsys, tmp_path / "runs", *image_folder_args(missing, tmp_path))
    assert status == 2 and line == f"error: {missing}: dataset folder does not exist"


def test_empty_dataset_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    (empty / "someone").mkdir(parents=True)
    status, line = run_cli(capsys, tmp_path / "runs", *image_folder_args(empty, tmp_path))
    assert status == 2 and line.startswith(f"error: {empty}: no images found")


def test_broken_files_are_skipped_and_counted_then_fail_above_the_threshold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = image_folder(tmp_path / "faces")
    truncated = root / "id0" / "truncated.jpg"
    truncated.write_bytes(encode_face(face(5))[:400])
    not_an_image = root / "id1" / "notes.jpg"
    not_an_image.write_text("a text file with an image name")

    loaded = load_image_folder(root, max_bad_fraction=0.1)  # 2 of 22 = 9%: tolerated, and counted
    assert len(loaded.faces.labels) == 20 and set(loaded.skipped_files) == {str(truncated), str(not_an_image)}

    status, line = run_cli(capsys, tmp_path / "runs", *image_folder_args(root, tmp_path, "--set", "data.max_bad_fraction=0.05"))
    assert status == 2
    assert line.startswith(f"error: {root}: 2 of 22 images unreadable (9.1%), above the limit 5.0%: first bad: ")
    assert str(truncated) in line or str(not_an_image) in line

    status, _ = run_cli(capsys, tmp_path / "runs", *image_folder_args(root, tmp_path, "--set", "data.max_bad_fraction=0.1"))
    assert status == 0
    assert len(np.load(tmp_path / "runs" / "tiny" / "data" / "train_labels.npy")) == 20


def test_wrong_image_size_names_the_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = image_folder(tmp_path / "faces", identities=2, per_identity=2)
    odd = root / "id1" / "odd.jpg"
    odd.write_bytes(encode_face(face(7, size=96)))
    status, line = run_cli(capsys, tmp_path / "runs", *image_folder_args(root, tmp_path, "--set", "data.max_bad_fraction=1.0"))
    assert status == 2 and line.startswith(f"error: {odd}: image is 96x96, expected 112x112 aligned face")


def test_unsupported_channel_count_and_pixel_type_are_named(tmp_path: Path) -> None:
    """A 5-channel TIFF and a float TIFF cannot become RGB faces: each is skipped, counted and named."""
    root = image_folder(tmp_path / "faces", identities=1, per_identity=2)
    five_channels = root / "id0" / "five.tiff"
    five_channels.write_bytes(_uncompressed_tiff(112, 112, samples=5))
    float_pixels = root / "id0" / "float.tiff"
    ok, encoded = cv2.imencode(".tiff", np.zeros((112, 112), np.float32))
    float_pixels.write_bytes(encoded.tobytes())
    loaded = load_image_folder(root, max_bad_fraction=1.0)
    assert set(loaded.skipped_files) == {str(five_channels), str(float_pixels)}
    with pytest.raises(DataError) as raised:
        load_image_folder(root)
    message = str(raised.value)
    assert message.startswith(f"{root}: 2 of 4 images unreadable") and ("five.tiff" in message or "float.tiff" in message)


def test_grayscale_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    rgb = face(3)
    root = tmp_path / "faces"
    (root / "a").mkdir(parents=True)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(root / "a" / "grey.png"), grey)
    cv2.imwrite(str(root / "a" / "rgba.png"), np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full(grey.shape, 9, np.uint8)]))
    loaded = load_image_folder(root)
    assert loaded.skipped_files == () and loaded.faces.images.shape == (2, 112, 112, 3)
    assert np.array_equal(loaded.faces.images[0], np.dstack([grey] * 3))  # grey.png sorts first
    assert np.array_equal(loaded.faces.images[1], rgb)


def _uncompressed_tiff(width: int, height: int, samples: int) -> bytes:
    """A minimal little-endian TIFF with `samples` 8-bit channels, which no image library here writes."""
    import struct

    pixels = bytes(width * height * samples)
    entries = [(256, 3, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, samples),
               (278, 3, height), (279, 4, len(pixels)), (284, 3, 1)]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        out += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    return out + struct.pack("<I", 0) + pixels


# --- configuration -----------------------------------------------------------------------------------------------


@pytest.mark.slow  # a fresh interpreter imports torch, timm and the exporters: 10-25 s on a busy 2-core machine
def test_config_with_unknown_key_fails_the_real_cli_in_one_line(tmp_path: Path) -> None:
    profile = tmp_path / "typo.yaml"
    profile.write_text((CONFIG_DIR / "tiny.yaml").read_text().replace("checkpoint_every_steps: 4", "checkpoint_evry_steps: 4", 1))
    completed = subprocess.run([sys.executable, "-m", "pipeline", "run", "--profile", str(profile), "--runs-dir", str(tmp_path)],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == (
        f"error: {profile}: teacher.optim.checkpoint_evry_steps: Extra inputs are not permitted")


def test_config_with_wrong_type_names_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    profile = tmp_path / "wrong_type.yaml"
    profile.write_text((CONFIG_DIR / "tiny.yaml").read_text() + "seed: lots\n")
    status = main(["run", "--profile", str(profile), "--runs-dir", str(tmp_path)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2 and line.startswith(f"error: {profile}: seed: Input should be a valid integer")


def test_non_utf8_config_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    profile = tmp_path / "binary.yaml"
    profile.write_bytes(b"\x80\x81 run_name: x\n")
    status = main(["run", "--profile", str(profile), "--runs-dir", str(tmp_path)])
    assert status == 2 and capsys.readouterr().err.strip().startswith(f"error: {profile}: cannot read it as UTF-8 text")


# --- checkpoints from outside --------------------------------------------------------------------------------------


def test_teacher_checkpoint_of_another_architecture_names_file_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    student_weights = tmp_path / "mobilefacenet.safetensors"
    save_weights(student_weights, create_model("mobilefacenet", width=0.25))
    status, line = run_cli(capsys, tmp_path / "runs", "--until", "teacher", "--teacher-checkpoint", str(student_weights))
    assert status == 2
    assert line.startswith(f"error: {student_weights}: not a teacher.model vit_face_tiny(depth=1) checkpoint: weights do not fit the model: missing ")
    assert "unexpected " in line and "(e.g. " in line


def test_teacher_checkpoint_with_other_widths_names_the_shapes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wider = tmp_path / "vit_small.pt"
    torch.save({"state_dict": create_model("vit_face_small", depth=1).state_dict()}, wider)  # a plain torch checkpoint
    status, line = run_cli(capsys, tmp_path / "runs", "--until", "teacher", "--teacher-checkpoint", str(wider))
    assert status == 2 and line.startswith(f"error: {wider}: not a teacher.model vit_face_tiny(depth=1) checkpoint")
    assert "shape mismatch (" in line and "file (" in line and "vs model (" in line


def test_teacher_checkpoint_that_would_run_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": RunsCode()}))
    status, line = run_cli(capsys, tmp_path / "runs", "--until", "teacher", "--teacher-checkpoint", str(evil))
    assert status == 2 and line.startswith(f"error: {evil}: cannot load checkpoint safely (UnpicklingError")
    assert not marker.exists()


def test_corrupt_training_checkpoint_names_the_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", {"weights": torch.ones(3), "global_step": 4})
    tensors = tmp_path / "ckpt" / "state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:40])
    with pytest.raises(DataError) as raised:
        load_checkpoint(tmp_path / "ckpt")
    assert str(raised.value).startswith(f"{tensors}: checkpoint unreadable")


# --- training that diverges ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_non_finite_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path: Path, poison: float) -> None:
    faces = tiny_faces()
    signals = np.ones((len(faces.labels), 2, 32), dtype=np.float32)
    signals[faces.labels == 3] = poison  # identity 3's teacher signal: the first batch that holds it diverges
    losses = [WeightedLoss("embedding_kd", 1.0, create_loss("embedding_kd"))]
    with pytest.raises(NonFiniteLossError) as raised:
        train(tmp_path / "ckpt", max_steps=None, losses=losses, teacher=TeacherSignals(signals), epochs=20)
    message = str(raised.value)
    assert message.startswith("train: loss is ") and " at step " in message
    failed_step = int(message.split(" at step ")[1].split()[0])
    saved = load_checkpoint(tmp_path / "ckpt")
    if saved is None:
        assert message.endswith(f"no checkpoint written yet in {tmp_path / 'ckpt'}")
    else:
        assert message.endswith(f"last good checkpoint: step {saved['global_step']} in {tmp_path / 'ckpt'}")
        assert saved["global_step"] <= failed_step
        assert all(torch.isfinite(t).all() for t in saved["trainable"].values() if t.is_floating_point())


def test_a_run_that_diverges_after_a_checkpoint_keeps_it(tmp_path: Path) -> None:
    """Poison only epoch 2's data: the checkpoint of epoch 1 must be on disk and named as the last good one."""
    faces = tiny_faces()
    signals = np.ones((len(faces.labels), 2, 32), dtype=np.float32)
    losses = [WeightedLoss("embedding_kd", 1.0, create_loss("embedding_kd"))]
    train(tmp_path / "ckpt", max_steps=4, losses=losses, teacher=TeacherSignals(signals))  # 4 clean steps, checkpointed
    signals[:] = np.nan
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4 \(epoch 1\); last good checkpoint: step 4 in "):
        train(tmp_path / "ckpt", max_steps=None, losses=losses, teacher=TeacherSignals(signals))
    assert load_checkpoint(tmp_path / "ckpt")["global_step"] == 4


# --- a disk that fills up ------------------------------------------------------------------------------------------


def test_disk_full_mid_write_keeps_the_previous_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_json_atomic(tmp_path / "report.json", {"version": 1})
    before = target.read_bytes()

    def fills_the_disk(self: Path, data: bytes) -> int:
        with open(self, "wb") as stream:
            stream.write(data[: len(data) // 2])  # half of it reaches the disk, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", fills_the_disk)
    with pytest.raises(ArtifactWriteError) as raised:
        write_json_atomic(target, {"version": 2, "padding": "x" * 1000})
    assert str(raised.value).startswith(f"{target}: could not write it (No space left on device [ENOSPC], ")
    assert str(raised.value).endswith("MiB free there); the previous version, if any, is intact")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp file left behind


def test_atomic_artifacts_get_the_usual_file_mode(tmp_path: Path) -> None:
    """The temp file behind an atomic write is private (0600); the artifact must not stay so once renamed."""
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    atomic = write_json_atomic(tmp_path / "atomic.json", {})
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


@pytest.mark.slow  # a fresh interpreter, as above
def test_file_size_limit_fails_the_cli_naming_the_file_and_keeps_the_previous_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    assert run_cli(capsys, runs, "--until", "data")[0] == 0
    data_dir = runs / "tiny" / "data"
    hashes_before = {p.name: sha256_file(p) for p in data_dir.iterdir()}
    completed = run_cli_process(runs, "--until", "data", "--force", file_size_limit=256 * 1024)
    assert completed.returncode == 2, completed.stderr[-2000:]
    line = completed.stderr.strip().splitlines()[-1]
    # numpy's own writer reports the short write ("N requested and M written") rather than the errno
    assert line.startswith(f"error: {runs / 'tiny' / 'data' / 'train_images.npy'}: could not write it (")
    assert line.endswith("the previous version, if any, is intact")
    assert {p.name: sha256_file(p) for p in data_dir.iterdir()} == hashes_before


def test_real_enospc_on_a_tiny_tmpfs_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """A 256 KiB tmpfs mounted in a private mount namespace: the kernel itself reports ENOSPC."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and util-linux `unshare` to mount a private tmpfs")
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    script = textwrap.dedent(f"""
        import json, torch
        from pipeline.artifacts import ArtifactWriteError
        from pipeline.distill.checkpoint import load_checkpoint, save_checkpoint
        folder = {str(mount_point / 'ckpt')!r}
        from pathlib import Path
        save_checkpoint(Path(folder), {{"weights": torch.arange(1000.0), "global_step": 3}})
        try:
            save_checkpoint(Path(folder), {{"weights": torch.zeros(200_000), "global_step": 9}})
            outcome = "written"
        except ArtifactWriteError as error:
            outcome = str(error)
        kept = load_checkpoint(Path(folder))
        print(json.dumps({{"outcome": outcome, "step": kept["global_step"], "same": bool(torch.equal(kept["weights"], torch.arange(1000.0))),
                          "files": sorted(p.name for p in Path(folder).iterdir())}}))
    """)
    command = f"mount -t tmpfs -o size=256k tmpfs {shlex.quote(str(mount_point))} && exec {sys.executable} -c {shlex.quote(script)}"
    completed = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if completed.returncode != 0 and "mount" in completed.stderr and "permission denied" in completed.stderr.lower():
        pytest.skip(f"cannot mount a tmpfs here: {completed.stderr.strip()[:200]}")
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith(f"{mount_point / 'ckpt' / 'state.safetensors'}: could not write it (No space left on device [ENOSPC], ")
    # state.prev.safetensors: the step-3 checkpoint kept (a hard link) as the one before the failed save
    assert result["step"] == 3 and result["same"] and result["files"] == ["state.json", "state.prev.safetensors", "state.safetensors"]


# --- exported models that do not match their manifest ---------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_at_32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, PreprocessSpec]:
    from deploy.export.ncnn_export import export_ncnn
    from deploy.export.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    model = create_model("mobilefacenet", width=0.25, input_size=32, embedding_dim=64).eval()
    spec = PreprocessSpec(height=32, width=32, embedding_dim=64)
    export_onnx(model, spec, folder / "student.onnx")
    ncnn = export_ncnn(model, spec, folder)
    return folder, ncnn, spec


def test_onnx_model_with_another_input_size_than_the_manifest(exported_at_32: tuple[Path, dict, PreprocessSpec]) -> None:
    from deploy.runners.onnxruntime_runner import OnnxRuntimeRunner

    folder, _, spec = exported_at_32
    model_path = folder / "student.onnx"
    assert OnnxRuntimeRunner(model_path, spec).embed(np.stack([face(1, 32)])).shape == (1, 64)  # its own manifest: fine
    manifest_says_48 = PreprocessSpec(height=48, width=48, embedding_dim=64)
    with pytest.raises(DataError) as raised:
        OnnxRuntimeRunner(model_path, manifest_says_48)
    assert str(raised.value) == (f"{model_path}: model input is [batch, 3, 32, 32] but the manifest says [batch, 3, 48, 48] (NCHW); "
                                 "re-export the model or use the manifest it was exported with")
    with pytest.raises(DataError, match="model output is \\[batch, 64\\] but the manifest says 512-value embeddings"):
        OnnxRuntimeRunner(model_path, PreprocessSpec(height=32, width=32, embedding_dim=512))


def test_ncnn_model_with_another_input_size_than_the_manifest(exported_at_32: tuple[Path, dict, PreprocessSpec]) -> None:
    from deploy.runners.ncnn_runner import NcnnRunner

    folder, record, spec = exported_at_32
    param, weights = Path(record["param"]), Path(record["bin"])
    assert NcnnRunner(param, weights, spec).embed(np.stack([face(1, 32)])).shape == (1, 64)  # its own manifest: fine
    with pytest.raises(DataError) as raised:
        NcnnRunner(param, weights, PreprocessSpec(height=48, width=48, embedding_dim=64))
    assert str(raised.value).startswith(f"{param}: the manifest's input [1, 3, 48, 48] gives ")
    assert "not one 64-value embedding: the model was exported for another input size" in str(raised.value)
