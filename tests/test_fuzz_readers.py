"""Property-based fuzzing of every reader of outside input: RecordIO, .bin, image bytes, pairs.txt, config.

Random bytes and mutations of valid files (bytes flipped, cut, inserted, duplicated) must end in the project's
own error naming the file (DataError / ConfigError), or load; never another exception. Deterministic
(`derandomize`) so CI is stable; each property runs a bounded number of examples to keep the file near 20 s.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import CONFIG_DIR, load_config
from pipeline.data.arrays import FaceArrays, VerificationPairs
from pipeline.data.binset import load_bin, write_bin
from pipeline.data.image_decode import decode_face, encode_face
from pipeline.data.pairs_txt import load_pairs_txt
from pipeline.data.recordio import load_recordio, write_recordio
from pipeline.errors import ConfigError, DataError, PipelineError

SMALL = (8, 8)
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def tiny_face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*SMALL, 3), dtype=np.uint8)


@functools.cache
def seed_files() -> dict[str, bytes]:
    """Valid inputs of each format, the starting points of the mutations."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        pairs = VerificationPairs(np.stack([tiny_face(i) for i in range(4)]), np.array([True, False]), "seed")
        write_recordio(root / "seed.rec", root / "seed.idx", FaceArrays(pairs.images, np.array([0, 0, 1, 1])))
        return {
            "bin": write_bin(root / "seed.bin", pairs).read_bytes(),
            "rec": (root / "seed.rec").read_bytes(),
            "idx": (root / "seed.idx").read_bytes(),
            "jpg": encode_face(tiny_face(7), ".jpg"),
            "png": encode_face(tiny_face(8), ".png"),
            "yaml": (CONFIG_DIR / "tiny.yaml").read_bytes(),
            "pairs": b"1\t2\nalice\t1\t2\nalice\t1\tbob\t1\n",
        }


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """A valid file with one to four edits: what a bad download, a bad disk or a hand edit produce."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "duplicate"]))
        if kind == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            data[position:position] = data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


def fuzz_input(key: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), mutated(seed_files()[key]))


def only_project_errors(call: Callable[[], object], error_type: type[PipelineError], *named: object) -> None:
    """Run `call`; a failure must be `error_type` and its one-line message must name one of the `named` files."""
    try:
        call()
    except error_type as error:
        text = str(error)
        assert "\n" not in text, text
        assert any(str(name) in text for name in named), f"{text!r} names none of {named}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_seed_files_are_valid(folder: Path) -> None:
    """The mutations start from files the readers accept, so the properties test damage, not garbage alone."""
    files = seed_files()
    (folder / "ok.bin").write_bytes(files["bin"])
    assert load_bin(folder / "ok.bin", size=SMALL).num_pairs == 2
    (folder / "ok.rec").write_bytes(files["rec"])
    (folder / "ok.idx").write_bytes(files["idx"])
    assert len(load_recordio(folder / "ok.rec", size=SMALL).labels) == 4
    assert decode_face(files["png"], "ok.png", size=SMALL).shape == (*SMALL, 3)
    (folder / "ok.yaml").write_bytes(files["yaml"])
    assert load_config(folder / "ok.yaml").run_name == "tiny"


@FUZZ
@given(data=fuzz_input("jpg") | fuzz_input("png"))
def test_image_decoding_fails_only_with_data_error(data: bytes) -> None:
    only_project_errors(lambda: decode_face(data, "fuzz/face.jpg", size=None), DataError, "fuzz/face.jpg")


@FUZZ
@given(data=fuzz_input("bin"))
def test_bin_reader_fails_only_with_data_error(folder: Path, data: bytes) -> None:
    path = folder / "fuzz.bin"
    path.write_bytes(data)
    only_project_errors(lambda: load_bin(path, size=SMALL), DataError, path)


@FUZZ
@given(rec=fuzz_input("rec"), idx=st.just(seed_files()["idx"]) | fuzz_input("idx"))
def test_recordio_reader_fails_only_with_data_error(folder: Path, rec: bytes, idx: bytes) -> None:
    rec_path, idx_path = folder / "fuzz.rec", folder / "fuzz.idx"
    rec_path.write_bytes(rec)
    idx_path.write_bytes(idx)
    only_project_errors(lambda: load_recordio(rec_path, size=SMALL, max_bad_fraction=0.5), DataError, rec_path, idx_path)


@FUZZ
@given(text=fuzz_input("pairs"))
def test_pairs_txt_reader_fails_only_with_data_error(folder: Path, text: bytes) -> None:
    root = folder / "pairs_images"
    for name, number in (("alice", 1), ("alice", 2), ("bob", 1)):
        image = root / name / f"{name}_{number:04d}.jpg"
        if not image.is_file():
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(encode_face(tiny_face(number), ".jpg"))
    path = folder / "pairs.txt"
    path.write_bytes(text)
    only_project_errors(lambda: load_pairs_txt(path, root, size=SMALL), DataError, path, root)


@FUZZ
@given(data=fuzz_input("yaml"))
def test_config_loader_fails_only_with_config_error(folder: Path, data: bytes) -> None:
    path = folder / "fuzz.yaml"
    path.write_bytes(data)
    only_project_errors(lambda: load_config(path), ConfigError, path)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)


@FUZZ
@given(overrides=st.dictionaries(st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,3}", fullmatch=True)
                                 | st.sampled_from(["seed.x", "data.image_size.y", "teacher.optim.lr", "distill.losses.0"]),
                                 json_values, max_size=3))
def test_config_overrides_fail_only_with_config_error(overrides: dict) -> None:
    """`--set KEY=VALUE` is outside input too: any key and any JSON value validates or is a ConfigError naming its
    source, the profile or the `--set` that caused it."""
    path = CONFIG_DIR / "tiny.yaml"
    only_project_errors(lambda: load_config(path, overrides), ConfigError, path, *(f"--set {key}=" for key in overrides))

