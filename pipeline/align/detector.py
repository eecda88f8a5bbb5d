"""Offline face and landmark detection with dlib (the optional `align` extra: dlib-bin, face_recognition_models).

Why dlib: its wheel and the face_recognition_models package ship the detector and landmark weights inside
themselves (nothing is downloaded at run time) and install beside this project's torch without touching it.
The HOG frontal-face detector finds the face; the 68-point shape predictor places landmarks, from which
`landmarks.five_points_from_68` derives insightface's 5 points. Note the weights' terms: the 68-point model was
trained on iBUG 300-W, whose licence excludes commercial use; a landmarks file (`--landmarks`) avoids it.

Large photos are searched on a downscaled copy (`detect_max_side`): the detector's time grows with the pixel count
(a 12 MP photo: 4 s, against 0.3 s on its 1024-px copy; one core, upsample 1), while the landmark model works inside
the face box at full resolution whatever the photo's size, so the box found on the copy is mapped back and the points
come from the original. The copy misses faces under about 160 px in a 4000-px photo; `detect_max_side=None` finds them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

import cv2

from pipeline.align.landmarks import DLIB68_FIVE_POINTS_ON_ARCFACE_112, five_points_from_68
from pipeline.errors import PipelineError

ALIGN_EXTRA_HINT = "install the optional 'align' extra: pip install -e '.[align]' (dlib-bin, face_recognition_models)"
LANDMARKS_68_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
DETECT_MAX_SIDE = 1024  # longest side of the copy faces are searched on; larger photos are scaled down to it


class MissingAlignExtra(PipelineError):
    """The detector's packages are not installed: names the extra that brings them."""


def _models_folder() -> Path:
    # face_recognition_models' own __init__ needs pkg_resources (gone from new setuptools): find its files directly.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingAlignExtra(f"face detection needs the face_recognition_models package; {ALIGN_EXTRA_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not (folder / LANDMARKS_68_FILE).is_file():
        raise MissingAlignExtra(f"{folder / LANDMARKS_68_FILE}: landmark model missing; reinstall face_recognition_models ({ALIGN_EXTRA_HINT})")
    return folder


class DlibFaceLandmarker:
    """Image -> insightface 5 points of its largest face (or None), with dlib's detector and 68-point model.

    Align its points onto `target_112` (not the bare template): see `landmarks.DLIB68_FIVE_POINTS_ON_ARCFACE_112`.
    """

    target_112 = DLIB68_FIVE_POINTS_ON_ARCFACE_112

    def __init__(self, detector: str = "hog", upsample: int = 1, detect_max_side: int | None = DETECT_MAX_SIDE):
        try:
            import dlib
        except ImportError:
            raise MissingAlignExtra(f"face detection needs dlib; {ALIGN_EXTRA_HINT}") from None
        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        folder = _models_folder()
        self.detector_name, self.upsample = detector, int(upsample)
        self.detect_max_side = detect_max_side or None  # None (or 0): search the photo itself, whatever its size
        if detector == "hog":
            self._detect = dlib.get_frontal_face_detector()
        else:
            self._detect = dlib.cnn_face_detection_model_v1(str(folder / CNN_DETECTOR_FILE))
        self._predict = dlib.shape_predictor(str(folder / LANDMARKS_68_FILE))

    def landmarks(self, image_rgb: np.ndarray) -> tuple[np.ndarray | None, int]:
        """(5, 2) landmarks of the largest detected face, or None; and how many faces were detected."""
        image_rgb = np.ascontiguousarray(image_rgb, dtype=np.uint8)
        boxes = self.face_boxes(image_rgb)
        if not boxes:
            return None, 0
        largest = max(boxes, key=lambda box: box.width() * box.height())
        shape = self._predict(image_rgb, largest)  # at full resolution, inside the box mapped back from the copy
        points = np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float64)
        return five_points_from_68(points), len(boxes)

    def face_boxes(self, image_rgb: np.ndarray) -> list:
        """dlib rectangles of the faces in `image_rgb`, in its pixels; searched on a copy scaled to `detect_max_side`
        when the photo is longer than that."""
        height, width = image_rgb.shape[:2]
        if self.detect_max_side is None or max(height, width) <= self.detect_max_side:
            return [getattr(face, "rect", face) for face in self._detect(image_rgb, self.upsample)]
        scale = self.detect_max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        copy = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)  # area averaging: no aliasing on the way down
        scale_x, scale_y = size[0] / width, size[1] / height
        boxes = [getattr(face, "rect", face) for face in self._detect(copy, self.upsample)]  # CNN boxes carry a score

        def back(value: int, axis_scale: float) -> int:  # a pixel centre of the copy -> the original's
            return round((value + 0.5) / axis_scale - 0.5)

        return [type(box)(back(box.left(), scale_x), back(box.top(), scale_y),
                          back(box.right(), scale_x), back(box.bottom(), scale_y)) for box in boxes]

    def landmarks_on_aligned_crop(self, crop_rgb: np.ndarray, scale: int = 2) -> np.ndarray | None:
        """5 points on an already aligned crop (in its pixels), or None: the crop is enlarged and given a black margin
        first, since the detector misses faces that fill a small image. Measures a landmarker's convention."""
        height, width = crop_rgb.shape[:2]
        margin = height * scale // 4
        enlarged = cv2.resize(crop_rgb, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC)
        padded = cv2.copyMakeBorder(enlarged, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=0)
        points, _ = self.landmarks(padded)
        return None if points is None else (points - margin) / scale
