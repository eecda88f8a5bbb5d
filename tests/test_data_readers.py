"""Readers of the insightface data formats: round trips, hostile and broken inputs, and the real LFW files."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data.arrays import FaceArrays, VerificationPairs
from pipeline.data.binset import load_bin, write_bin
from pipeline.data.image_decode import decode_face, encode_face, read_face
from pipeline.data.image_folder import load_image_folder, load_list_file
from pipeline.data.pairs_txt import load_pairs_txt
from pipeline.data.real_data import default_real_data_root, expected_real_data_root
from pipeline.data.recordio import (
    RECORDIO_MAGIC,
    IRHeader,
    RecordIOReader,
    frame_record,
    load_recordio,
    pack_record,
    write_recordio,
    write_records,
)
from pipeline.errors import DataError


def synthetic_face(seed: int, size: tuple[int, int] = (112, 112)) -> np.ndarray:
    """Smooth colour gradients (JPEG keeps them within a few grey levels), different per seed."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = *rng.uniform(0.01, 0.06, 2).tolist(), rng.uniform(0, 6.28)
        channels.append(127.5 + 100 * np.sin(fx * cols + fy * rows + phase))
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def synthetic_pairs(num_pairs: int = 4) -> VerificationPairs:
    images = np.stack([synthetic_face(seed) for seed in range(2 * num_pairs)])
    return VerificationPairs(images=images, issame=np.arange(num_pairs) % 2 == 0, name="synthetic")


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def write_image(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_face(rgb, path.suffix if path.suffix == ".png" else ".jpg"))
    return path


# --- image decoding ---------------------------------------------------------------------------------------------


def test_grayscale_rgba_and_16bit_pngs_load_as_rgb(tmp_path: Path) -> None:
    rgb = synthetic_face(0)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full(grey.shape, 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    cv2.imwrite(str(tmp_path / "deep.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)

    grey_loaded = read_face(tmp_path / "grey.png")
    assert grey_loaded.shape == (112, 112, 3) and grey_loaded.dtype == np.uint8
    assert np.array_equal(grey_loaded[..., 0], grey) and np.array_equal(grey_loaded[..., 2], grey)
    assert np.array_equal(read_face(tmp_path / "rgba.png"), rgb)
    assert np.array_equal(read_face(tmp_path / "deep.png"), rgb)


def test_wrong_size_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.png", synthetic_face(1, size=(120, 100)))
    with pytest.raises(DataError) as raised:
        read_face(path)
    assert str(path) in str(raised.value)
    assert "image is 100x120, expected 112x112 aligned face" in str(raised.value)
    assert "python -m pipeline align" in str(raised.value)
    assert read_face(path, size=None).shape == (120, 100, 3)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 50], ids=str)
def test_undecodable_bytes_raise_data_error_with_source(data: bytes) -> None:
    with pytest.raises(DataError, match=r"^some/source\.jpg: not a decodable image"):
        decode_face(data, "some/source.jpg")


def test_truncated_jpeg_is_not_decodable(tmp_path: Path) -> None:
    encoded = encode_face(synthetic_face(2))
    path = tmp_path / "cut.jpg"
    path.write_bytes(encoded[: len(encoded) - 10])
    with pytest.raises(DataError, match="not a decodable image") as raised:
        read_face(path)
    assert str(path) in str(raised.value)


# --- .bin verification sets -------------------------------------------------------------------------------------


def test_bin_round_trip_jpeg_and_png(tmp_path: Path) -> None:
    pairs = synthetic_pairs()
    loaded = load_bin(write_bin(tmp_path / "val.bin", pairs))
    assert loaded.name == "val"
    assert np.array_equal(loaded.issame, pairs.issame) and loaded.issame.dtype == bool
    assert loaded.images.shape == pairs.images.shape
    assert mean_abs_diff(loaded.images, pairs.images) < 2.0

    exact = load_bin(write_bin(tmp_path / "exact.bin", pairs, image_format=".png"))
    assert np.array_equal(exact.images, pairs.images)


def test_bin_in_the_standard_layout(tmp_path: Path) -> None:
    write_bin(tmp_path / "std.bin", synthetic_pairs(2))
    encoded_images, issame = pickle.loads((tmp_path / "std.bin").read_bytes())
    assert issame == [True, False]
    assert len(encoded_images) == 4 and all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in encoded_images)


def _bin_variants(pairs: VerificationPairs) -> dict[str, object]:
    """Payloads the insightface ecosystem is known to produce: py3 protocol 2/4, numpy issame, py2-style str."""
    encoded = [encode_face(image, ".png") for image in pairs.images]
    flags = [bool(flag) for flag in pairs.issame]
    return {
        "protocol2_bytes": pickle.dumps((encoded, flags), protocol=2),
        "numpy_bool_array": pickle.dumps((encoded, np.array(flags)), protocol=4),
        "numpy_bool_array_protocol2": pickle.dumps((encoded, np.array(flags)), protocol=2),
        "numpy_bool_scalars": pickle.dumps((encoded, [np.bool_(flag) for flag in flags]), protocol=2),
        "numpy_uint8_images": pickle.dumps(([np.frombuffer(b, np.uint8) for b in encoded], flags), protocol=4),
        "python2_str_images": pickle.dumps(([b.decode("latin1") for b in encoded], flags), protocol=2),
        "tuple_payload_int_flags": pickle.dumps((tuple(encoded), [int(f) for f in flags]), protocol=0),
    }


@pytest.mark.parametrize("variant", list(_bin_variants(synthetic_pairs(2))))
def test_bin_variants_from_other_writers_load(tmp_path: Path, variant: str) -> None:
    pairs = synthetic_pairs(2)
    path = tmp_path / f"{variant}.bin"
    path.write_bytes(_bin_variants(pairs)[variant])
    loaded = load_bin(path)
    assert np.array_equal(loaded.images, pairs.images)
    assert np.array_equal(loaded.issame, pairs.issame)


class _RunsShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


class _CallsExec:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (self.code,)


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("attack", ["os.system", "exec"])
def test_malicious_bin_is_refused_and_never_executed(tmp_path: Path, protocol: int, attack: str) -> None:
    marker = tmp_path / "pwned"
    payload = (
        _RunsShellCommand(f"touch {marker}")
        if attack == "os.system"
        else _CallsExec(f"open({str(marker)!r}, 'w').close()")
    )
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([encode_face(synthetic_face(0))] * 2 + [payload], [True]), protocol=protocol))
    with pytest.raises(DataError) as raised:
        load_bin(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: refused to unpickle ")
    assert "system" in message or "exec" in message
    assert ".bin files may only hold bytes, lists and bools" in message
    assert not marker.exists()


def test_bin_refuses_numpy_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "objects.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], np.array([True], dtype=object)), protocol=2))
    with pytest.raises(DataError, match=r"refused to unpickle numpy\.dtype") as raised:
        load_bin(path)
    assert str(path) in str(raised.value)


def test_tiny_bin_with_huge_memo_index_does_not_allocate_gigabytes(tmp_path: Path) -> None:
    resource = pytest.importorskip("resource")
    path = tmp_path / "memo.bin"
    path.write_bytes(b"\x80\x02]r" + (200_000_000).to_bytes(4, "little") + b".")  # LONG_BINPUT 200M: 3 GB memo in C
    peak_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with pytest.raises(DataError, match="expected a pickled \\(images, issame\\) pair") as raised:
        load_bin(path)
    assert str(path) in str(raised.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak_before_mb < 500


def _malformed_bins() -> dict[str, tuple[bytes, str]]:
    image = encode_face(synthetic_face(0))
    good = pickle.dumps(([image, image], [True]), protocol=4)
    return {
        "not_a_pickle": (b"hello, I am a text file\n", "not a readable .bin pickle"),
        "truncated": (good[: len(good) // 2], "not a readable .bin pickle"),
        "empty_file": (b"", "not a readable .bin pickle"),
        "a_dict": (pickle.dumps({"bins": [], "issame": []}), "expected a pickled (images, issame) pair"),
        "three_items": (pickle.dumps(([image, image], [True], 3)), "expected a pickled (images, issame) pair"),
        "count_mismatch": (pickle.dumps(([image] * 3, [True])), "3 images for 1 pairs"),
        "no_pairs": (pickle.dumps(([], [])), "holds no pairs"),
        "issame_not_bool": (pickle.dumps(([image, image], ["yes"])), "issame[0] is str"),
        "image_not_bytes": (pickle.dumps(([image, 42], [True])), "image 1 is int"),
        "image_not_decodable": (pickle.dumps(([image, b"garbage"], [False])), "image 1 (pair 0): not a decodable"),
    }


@pytest.mark.parametrize("case", list(_malformed_bins()))
def test_malformed_bin_raises_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    payload, expected = _malformed_bins()[case]
    path = tmp_path / f"{case}.bin"
    path.write_bytes(payload)
    with pytest.raises(DataError) as raised:
        load_bin(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert expected in str(raised.value)


def test_missing_bin_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as raised:
        load_bin(tmp_path / "nowhere.bin")
    assert str(tmp_path / "nowhere.bin") in str(raised.value)


def test_bin_with_wrong_face_size_names_file_and_image(tmp_path: Path) -> None:
    pairs = VerificationPairs(images=np.stack([synthetic_face(i, (96, 96)) for i in range(2)]), issame=np.array([1]))
    path = write_bin(tmp_path / "small.bin", pairs)
    with pytest.raises(DataError, match="image 0 \\(pair 0\\): image is 96x96, expected 112x112") as raised:
        load_bin(path)
    assert str(path) in str(raised.value)
    assert load_bin(path, size=None).images.shape == (2, 96, 96, 3)


# --- pairs.txt --------------------------------------------------------------------------------------------------


def _make_lfw_folder(root: Path, people: dict[str, int], ext: str = ".jpg") -> dict[tuple[str, int], np.ndarray]:
    written = {}
    for person_index, (name, count) in enumerate(people.items()):
        for number in range(1, count + 1):
            image = synthetic_face(100 * person_index + number)
            write_image(root / name / f"{name}_{number:04d}{ext}", image)
            written[(name, number)] = image
    return written


def test_pairs_txt_round_trip(tmp_path: Path) -> None:
    written = _make_lfw_folder(tmp_path / "images", {"Ann_A": 3, "Bob_B": 1, "Cy_C": 12})
    pairs_path = tmp_path / "pairs.txt"
    pairs_path.write_text("1\t2\nAnn_A\t1\t3\nAnn_A\t2\tBob_B\t1\n\nCy_C 10 12\nBob_B 1 Cy_C 2\n")
    loaded = load_pairs_txt(pairs_path, tmp_path / "images")
    assert loaded.name == "pairs"
    assert loaded.issame.tolist() == [True, False, True, False]
    expected_keys = [
        ("Ann_A", 1),
        ("Ann_A", 3),
        ("Ann_A", 2),
        ("Bob_B", 1),
        ("Cy_C", 10),
        ("Cy_C", 12),
        ("Bob_B", 1),
        ("Cy_C", 2),
    ]
    expected = np.stack([written[key] for key in expected_keys])
    assert mean_abs_diff(loaded.images, expected) < 2.0


def test_pairs_txt_png_images_are_exact_and_header_optional(tmp_path: Path) -> None:
    written = _make_lfw_folder(tmp_path / "images", {"Ann_A": 2}, ext=".png")
    (tmp_path / "pairs.txt").write_text("Ann_A 1 2\n")
    loaded = load_pairs_txt(tmp_path / "pairs.txt", tmp_path / "images", image_ext=".png")
    assert np.array_equal(loaded.images, np.stack([written[("Ann_A", 1)], written[("Ann_A", 2)]]))


def test_pairs_txt_missing_image_names_image_and_line(tmp_path: Path) -> None:
    _make_lfw_folder(tmp_path / "images", {"Ann_A": 2})
    pairs_path = tmp_path / "pairs.txt"
    pairs_path.write_text("10\t300\nAnn_A 1 2\nAnn_A 1 7\n")
    with pytest.raises(DataError) as raised:
        load_pairs_txt(pairs_path, tmp_path / "images")
    message = str(raised.value)
    assert str(tmp_path / "images" / "Ann_A" / "Ann_A_0007.jpg") in message
    assert f"line 3 of {pairs_path}" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ann_A 1\n", "line 1: expected 'name n1 n2'"),
        ("2 300\nAnn_A one 2\n", "line 2: image number 'one'"),
        ("2\t300\n", "lists no pairs"),
    ],
)
def test_pairs_txt_malformed_names_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    pairs_path = tmp_path / "pairs.txt"
    pairs_path.write_text(text)
    with pytest.raises(DataError, match=expected) as raised:
        load_pairs_txt(pairs_path, tmp_path)
    assert str(pairs_path) in str(raised.value)


# --- image folders and list files -------------------------------------------------------------------------------


def _make_identity_folder(root: Path, counts: dict[str, int]) -> None:
    for identity_index, (identity, count) in enumerate(counts.items()):
        for number in range(count):
            write_image(root / identity / f"{number}.jpg", synthetic_face(1000 * identity_index + number))


def test_image_folder_labels_follow_sorted_identity_names(tmp_path: Path) -> None:
    _make_identity_folder(tmp_path / "set", {"zoe": 2, "adam": 3, "mia": 1})
    (tmp_path / "set" / "adam" / "notes.txt").write_text("not an image, not counted")
    (tmp_path / "set" / "README.md").write_text("top-level files are ignored")
    loaded = load_image_folder(tmp_path / "set")
    assert loaded.identity_names == ("adam", "mia", "zoe")
    assert loaded.faces.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert loaded.faces.images.shape == (6, 112, 112, 3)
    assert loaded.skipped_files == ()

    at_least_two = load_image_folder(tmp_path / "set", min_images_per_identity=2)
    assert at_least_two.identity_names == ("adam", "zoe")
    assert at_least_two.faces.labels.tolist() == [0, 0, 0, 1, 1]


def test_image_folder_skips_and_counts_unreadable_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "set"
    _make_identity_folder(root, {"a": 4, "b": 4})
    truncated = root / "a" / "truncated.jpg"
    truncated.write_bytes(encode_face(synthetic_face(5))[:300])
    renamed_text = root / "b" / "text.jpg"
    renamed_text.write_text("this is a text file with a .jpg name")

    with caplog.at_level(logging.WARNING, logger="pipeline.data.image_folder"):
        loaded = load_image_folder(root, max_bad_fraction=0.25)
    assert loaded.faces.images.shape[0] == 8
    assert set(loaded.skipped_files) == {str(truncated), str(renamed_text)}
    assert str(truncated) in caplog.text and str(renamed_text) in caplog.text

    with pytest.raises(DataError) as raised:
        load_image_folder(root)
    message = str(raised.value)
    assert message.startswith(f"{root}: 2 of 10 images unreadable (20.0%), above the limit 1.0%: first bad: ")
    assert str(truncated) in message


def test_image_folder_wrong_size_is_an_error_not_a_skip(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _make_identity_folder(root, {"a": 2})
    odd = write_image(root / "a" / "odd.png", synthetic_face(9, size=(250, 250)))
    with pytest.raises(DataError, match="image is 250x250, expected 112x112") as raised:
        load_image_folder(root, max_bad_fraction=1.0)
    assert str(odd) in str(raised.value)


def test_image_folder_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder does not exist") as raised:
        load_image_folder(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(raised.value)
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images found \(expected <root>/<identity>/<image>\)") as raised:
        load_image_folder(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(raised.value)


def test_list_file_formats(tmp_path: Path) -> None:
    _make_identity_folder(tmp_path / "imgs", {"p1": 2, "p2": 1})
    (tmp_path / "plain.txt").write_text("p1/0.jpg 10\np1/1.jpg 10\n\n# comment\np2/0.jpg 2\n")
    (tmp_path / "table.csv").write_text("path,label\np2/0.jpg,bob\np1/0.jpg,alice\np1/1.jpg,alice\n")
    (tmp_path / "train.lst").write_text("0\t7.000000\tp1/0.jpg\n1\t7.000000\tp1/1.jpg\n2\t30.000000\tp2/0.jpg\n")

    plain = load_list_file(tmp_path / "plain.txt", tmp_path / "imgs")
    assert plain.identity_names == ("2", "10") and plain.faces.labels.tolist() == [1, 1, 0]
    table = load_list_file(tmp_path / "table.csv", tmp_path / "imgs")
    assert table.identity_names == ("alice", "bob") and table.faces.labels.tolist() == [1, 0, 0]
    lst = load_list_file(tmp_path / "train.lst", tmp_path / "imgs")
    assert lst.identity_names == ("7", "30") and lst.faces.labels.tolist() == [0, 0, 1]


def test_list_file_missing_images_count_as_unreadable(tmp_path: Path) -> None:
    _make_identity_folder(tmp_path / "imgs", {"p1": 1})
    list_path = tmp_path / "list.txt"
    list_path.write_text("p1/0.jpg 0\np1/gone.jpg 0\n")
    with pytest.raises(DataError, match="1 of 2 images unreadable") as raised:
        load_list_file(list_path, tmp_path / "imgs")
    assert str(list_path) in str(raised.value) and "gone.jpg" in str(raised.value)
    assert load_list_file(list_path, tmp_path / "imgs", max_bad_fraction=0.5).skipped_files == (
        str(tmp_path / "imgs" / "p1" / "gone.jpg"),
    )


# --- RecordIO ---------------------------------------------------------------------------------------------------


def synthetic_faces(labels: list[int]) -> FaceArrays:
    return FaceArrays(
        images=np.stack([synthetic_face(500 + i) for i in range(len(labels))]), labels=np.array(labels, np.int64)
    )


def test_recordio_round_trip_in_insightface_layout(tmp_path: Path) -> None:
    faces = synthetic_faces([0, 0, 1, 2, 2, 2])
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec, idx, faces)

    with RecordIOReader(rec) as reader:
        assert len(reader) == 1 + 6 + 3
        header, body = reader.read_record(0)
        assert header.flag == 2 and header.label.tolist() == [7.0, 10.0] and body == b""
        assert reader.image_indices() == [1, 2, 3, 4, 5, 6]
        assert [reader.read_record(key)[0].label.tolist() for key in (7, 8, 9)] == [[1, 3], [3, 4], [4, 7]]
        image_header, image_bytes = reader.read_record(3)
        assert image_header.flag == 0 and image_header.label == 1.0 and image_bytes[:2] == b"\xff\xd8"

    loaded = load_recordio(rec)
    assert loaded.labels.tolist() == faces.labels.tolist()
    assert mean_abs_diff(loaded.images, faces.images) < 2.0

    write_recordio(rec, idx, faces, image_format=".png")
    assert np.array_equal(load_recordio(rec).images, faces.images)


def test_recordio_sorts_images_by_identity_and_remaps_labels(tmp_path: Path) -> None:
    faces = FaceArrays(images=np.stack([synthetic_face(i) for i in range(4)]), labels=np.array([1, 0, 1, 0]))
    write_recordio(tmp_path / "t.rec", tmp_path / "t.idx", faces, image_format=".png")
    loaded = load_recordio(tmp_path / "t.rec")
    assert loaded.labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(loaded.images, faces.images[[1, 3, 0, 2]])


def test_recordio_without_header_uses_every_record(tmp_path: Path) -> None:
    payloads = [
        pack_record(IRHeader(0, float(label), key, 0), encode_face(synthetic_face(key), ".png"))
        for key, label in enumerate([5, 9, 5])
    ]
    write_records(tmp_path / "plain.rec", tmp_path / "plain.idx", payloads)
    with RecordIOReader(tmp_path / "plain.rec") as reader:
        assert reader.image_indices() == [0, 1, 2]
    assert load_recordio(tmp_path / "plain.rec").labels.tolist() == [0, 1, 0]


def test_recordio_multi_label_records_use_the_first_label(tmp_path: Path) -> None:
    payloads = [
        pack_record(IRHeader(0, np.array([label, 0.5]), key, 0), encode_face(synthetic_face(key)))
        for key, label in enumerate([3, 1])
    ]
    write_records(tmp_path / "m.rec", tmp_path / "m.idx", payloads)
    assert load_recordio(tmp_path / "m.rec").labels.tolist() == [1, 0]


def test_plain_im2rec_file_whose_record_0_has_several_labels_keeps_every_image(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 21: record 0 labelled [3, 5] (integers, as an insightface header's are) was taken for the header, so only
    records 1..2 were read and the rest silently dropped. Record 0 holds an image: it is a plain file."""
    payloads = [
        pack_record(IRHeader(0, np.array([label, label + 2]), key, 0), encode_face(synthetic_face(key), ".png"))
        for key, label in enumerate([3, 1, 3, 2, 1, 2])
    ]
    write_records(tmp_path / "multi.rec", tmp_path / "multi.idx", payloads)
    with caplog.at_level(logging.INFO, logger="pipeline.data.recordio"):
        loaded = load_recordio(tmp_path / "multi.rec")
    assert loaded.labels.tolist() == [2, 0, 2, 1, 0, 1]
    assert "im2rec layout (record 0 has 2 labels and an image" in caplog.text and "6 image records of 6" in caplog.text
    assert "read 6 images (0 unreadable records skipped)" in caplog.text


def test_insightface_layout_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_recordio(tmp_path / "train.rec", tmp_path / "train.idx", synthetic_faces([0, 0, 1]), image_format=".png")
    with caplog.at_level(logging.INFO, logger="pipeline.data.recordio"):
        load_recordio(tmp_path / "train.rec")
    assert "insightface layout (record 0 is the header: images 1..3, 2 identity records); 3 image records of 6" in caplog.text


@pytest.mark.parametrize(("header", "extra_records", "problem"), [
    ([40.0, 42.0], 0, r"its image records 1\.\.39 point past the index \(no record 6\)"),
    ([4.0, 6.0], 3, r"the index holds records up to 8, past the header's end 6"),
    ([4.5, 6.0], 0, r"labels 4\.5, 6 are not a range of records"),
])
def test_implausible_insightface_header_is_refused_naming_the_file(
    tmp_path: Path, header: list[float], extra_records: int, problem: str
) -> None:
    """A header record (labels, no image) whose ranges do not fit the index: trusting it drops or invents records."""
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec, idx, synthetic_faces([0, 0, 1]), image_format=".png")
    with RecordIOReader(rec) as reader:
        payloads = [reader.read_payload(key) for key in reader.keys()]
    payloads[0] = pack_record(IRHeader(2, np.array(header), 0, 0))
    payloads += [pack_record(IRHeader(0, 0.0, 0, 0), encode_face(synthetic_face(9), ".png"))] * extra_records
    write_records(rec, idx, payloads)
    with pytest.raises(DataError, match=rf"^{re.escape(str(rec))}: record 0 is an insightface header \(labels, no image\) "
                                        rf"that does not fit train\.idx \(\d+ records, keys 0\.\.\d+\): {problem}") as raised:
        load_recordio(rec)
    assert "\n" not in str(raised.value)


def test_a_folder_holding_train_rec_is_read_as_insightface_cfg_rec(tmp_path: Path) -> None:
    """insightface configs name the folder (`cfg.rec = "/train_tmp/ms1m-retinaface-t1"`), not the .rec in it."""
    folder = tmp_path / "faces_emore"
    folder.mkdir()
    faces = synthetic_faces([0, 1, 1])
    write_recordio(folder / "train.rec", folder / "train.idx", faces, image_format=".png")
    assert np.array_equal(load_recordio(folder).images, faces.images)
    (folder / "train.rec").rename(folder / "other.rec")
    with pytest.raises(DataError) as raised:
        load_recordio(folder)
    assert str(raised.value) == (f"{folder}: RecordIO folder holds no train.rec (a folder given as a RecordIO source must "
                                 "hold train.rec and train.idx, as insightface's cfg.rec does)")


def test_a_recordio_folder_passes_the_input_check_and_is_fingerprinted_by_its_rec_and_idx(tmp_path: Path) -> None:
    from pipeline.config import DataConfig, RunConfig
    from pipeline.data.source_listing import data_source_paths
    from pipeline.inputs import check_input_paths

    folder = tmp_path / "faces_emore"
    folder.mkdir()
    write_recordio(folder / "train.rec", folder / "train.idx", synthetic_faces([0, 1]), image_format=".png")
    config = RunConfig(data=DataConfig(source="recordio", train_path=str(folder)))
    check_input_paths(config)  # was "RecordIO file is a folder, not a file"
    assert data_source_paths(config.data) == [folder / "train.rec", folder / "train.idx"]
    (folder / "train.rec").unlink()
    with pytest.raises(DataError) as raised:
        check_input_paths(config)
    assert str(raised.value) == (f"{folder}: is a folder without train.rec: a RecordIO source is a .rec file or a folder "
                                 "holding train.rec and train.idx (insightface's cfg.rec)")


def test_payload_holding_the_magic_is_split_and_rejoined(tmp_path: Path) -> None:
    magic = struct.pack("<I", RECORDIO_MAGIC)
    payloads = [b"abcd" + magic + b"efgh" + magic + b"xyz", magic, b"ab" + magic + b"cd", b"", b"12345"]
    framed = frame_record(payloads[0])
    lrecords = [struct.unpack_from("<I", framed, offset + 4)[0] for offset in (0, 12, 24)]
    assert [lrecord >> 29 for lrecord in lrecords] == [1, 2, 3]  # first, middle, last part
    write_records(tmp_path / "m.rec", tmp_path / "m.idx", payloads)
    with RecordIOReader(tmp_path / "m.rec", tmp_path / "m.idx") as reader:
        assert reader.keys() == [0, 1, 2, 3, 4]
        assert [reader.read_payload(key) for key in range(len(reader))] == payloads


def _corrupt_record(rec: Path, idx: Path, key: int) -> None:
    offset = dict(tuple(map(int, line.split())) for line in idx.read_text().splitlines())[key]
    data = bytearray(rec.read_bytes())
    data[offset : offset + 4] = b"JUNK"
    rec.write_bytes(bytes(data))


def test_recordio_corrupt_record_is_skipped_logged_and_limited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    faces = synthetic_faces([0, 0, 1, 1, 2])
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec, idx, faces, image_format=".png")
    _corrupt_record(rec, idx, 2)

    with caplog.at_level(logging.WARNING, logger="pipeline.data.recordio"):
        loaded = load_recordio(rec, max_bad_fraction=0.3)
    assert loaded.labels.tolist() == [0, 1, 1, 2]
    assert np.array_equal(loaded.images, faces.images[[0, 2, 3, 4]])
    assert "record 2" in caplog.text and "bad magic" in caplog.text and str(rec) in caplog.text

    with pytest.raises(DataError) as raised:
        load_recordio(rec)
    assert str(raised.value).startswith(
        f"{rec}: 1 of 5 images unreadable (20.0%), above the limit 1.0%: first bad: record 2 at byte"
    )


def test_recordio_truncated_file_and_undecodable_image(tmp_path: Path) -> None:
    payloads = [
        pack_record(IRHeader(0, 0.0, 0, 0), encode_face(synthetic_face(0))),
        pack_record(IRHeader(0, 1.0, 1, 0), b"not an image"),
        pack_record(IRHeader(0, 2.0, 2, 0), encode_face(synthetic_face(2))),
    ]
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    write_records(rec, idx, payloads)
    rec.write_bytes(rec.read_bytes()[:-100])
    with pytest.raises(DataError) as raised:
        load_recordio(rec, max_bad_fraction=0.5)
    message = str(raised.value)
    assert message.startswith(f"{rec}: 2 of 3 images unreadable") and "record 1: not a decodable image" in message
    with RecordIOReader(rec) as reader, pytest.raises(DataError, match=r"record 2 at byte \d+: truncated") as raised:
        reader.read_record(2)
    assert str(rec) in str(raised.value)


def test_recordio_missing_idx_and_rec_name_the_file(tmp_path: Path) -> None:
    rec = tmp_path / "train.rec"
    write_recordio(rec, tmp_path / "other.idx", synthetic_faces([0]))
    with pytest.raises(DataError, match="RecordIO index does not exist") as raised:
        RecordIOReader(rec)
    assert str(tmp_path / "train.idx") in str(raised.value)
    with pytest.raises(DataError) as raised:
        load_recordio(rec, idx_path=tmp_path / "gone.idx")
    assert str(tmp_path / "gone.idx") in str(raised.value)
    with pytest.raises(DataError, match="RecordIO file does not exist") as raised:
        load_recordio(tmp_path / "absent.rec")
    assert str(tmp_path / "absent.rec") in str(raised.value)


def test_recordio_malformed_idx_names_file_and_line(tmp_path: Path) -> None:
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    write_recordio(rec, idx, synthetic_faces([0]))
    idx.write_text("0\t0\nnot an index line\n")
    with pytest.raises(DataError, match="line 2: expected 'key<TAB>offset'") as raised:
        RecordIOReader(rec)
    assert str(idx) in str(raised.value)


# --- fuzzing: mutated inputs fail only with DataError -----------------------------------------------------------


def _mutations(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    mutated = []
    for _ in range(count):
        buffer = bytearray(data)
        kind = rng.integers(3)
        if kind == 0:  # flip a few bytes
            for position in rng.integers(0, len(buffer), rng.integers(1, 8)):
                buffer[position] = rng.integers(256)
        elif kind == 1:  # truncate
            del buffer[rng.integers(0, len(buffer)) :]
        else:  # insert random bytes
            position = rng.integers(0, len(buffer) + 1)
            buffer[position:position] = rng.bytes(int(rng.integers(1, 16)))
        mutated.append(bytes(buffer))
    return mutated


def test_fuzzed_inputs_raise_only_data_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(1234)
    small = (8, 8)
    pairs = VerificationPairs(images=np.stack([synthetic_face(i, small) for i in range(2)]), issame=np.array([True]))
    bin_bytes = write_bin(tmp_path / "seed.bin", pairs).read_bytes()
    protocol2_bytes = pickle.dumps(([encode_face(image) for image in pairs.images], np.array([True])), protocol=2)
    rec, idx = tmp_path / "seed.rec", tmp_path / "seed.idx"
    write_recordio(rec, idx, FaceArrays(images=pairs.images, labels=np.array([0, 1])))
    rec_bytes, idx_bytes = rec.read_bytes(), idx.read_bytes()
    image_bytes = encode_face(synthetic_face(3, small))

    fuzz_bin, fuzz_rec, fuzz_idx = tmp_path / "fuzz.bin", tmp_path / "fuzz.rec", tmp_path / "fuzz.idx"
    for mutated in _mutations(bin_bytes, rng, 300) + _mutations(protocol2_bytes, rng, 300):
        fuzz_bin.write_bytes(mutated)
        with contextlib.suppress(DataError):
            load_bin(fuzz_bin, size=small)
    mutated_indexes = [idx_bytes] * 250 + _mutations(idx_bytes, rng, 50)
    for mutated_rec, mutated_idx in zip(_mutations(rec_bytes, rng, 300), mutated_indexes, strict=True):
        fuzz_rec.write_bytes(mutated_rec)
        fuzz_idx.write_bytes(mutated_idx)
        with contextlib.suppress(DataError):
            load_recordio(fuzz_rec, size=small, max_bad_fraction=1.0)
    png_bytes = encode_face(synthetic_face(4, small), ".png")
    for mutated in _mutations(image_bytes, rng, 300) + _mutations(png_bytes, rng, 300):
        with contextlib.suppress(DataError):
            decode_face(mutated, "fuzz.jpg", size=None)


# --- real data --------------------------------------------------------------------------------------------------


def test_real_lfw_dev_bin_loads() -> None:
    dev_bin = (default_real_data_root() or expected_real_data_root()) / "lfw" / "dev.bin"
    if not dev_bin.is_file():
        pytest.skip(f"real LFW data not present at {dev_bin}")
    pairs = load_bin(dev_bin)
    assert pairs.num_pairs == 1200 and int(pairs.issame.sum()) == 600
    assert pairs.images.shape == (2400, 112, 112, 3) and pairs.name == "dev"
