"""Five-point landmarks in insightface's order, from a landmarks file or from dlib's 68-point model.

insightface's 5 points are the two eye centres, the nose tip and the two mouth corners, image-left first (see
`transform.ARCFACE_TEMPLATE_112`). dlib's own 5-point model marks eye corners and the base of the nose instead, so
it cannot give these points honestly; its 68-point model (iBUG 300-W numbering) can: each eye centre is the mean of
that eye's six contour points, the nose tip is point 30, the mouth corners are points 48 and 54.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

DLIB68_FIVE_POINTS_ON_ARCFACE_112 = np.array(
    [[38.30, 53.80], [73.90, 53.54], [55.96, 72.43], [40.62, 91.70], [72.51, 91.57]], dtype=np.float64
)
"""Where `five_points_from_68` of dlib's 68 points lands, on average, on faces aligned to the ArcFace template: the
target for dlib-derived points, so dlib-aligned crops match insightface's layout. dlib's points follow another
convention than the detectors insightface's data was aligned with (eye centres from lid contours sit ~2 px lower
than insightface's eye points, its mouth corners ~1-2 px wider). Measured the way `benchmarks/align_layout.py` does
(rerun it to re-measure): 10 % trimmed mean over the 770 crops with a face found among 800 sampled aligned LFW train
crops (../shared/data); on 292 held-out LFW dev crops (other people) the mean offset from it is <= 0.7 px per
coordinate, against up to 2.2 px from the template itself."""

LEFT_EYE_68 = range(36, 42)  # image-left eye (the subject's right)
RIGHT_EYE_68 = range(42, 48)
NOSE_TIP_68 = 30
MOUTH_LEFT_68, MOUTH_RIGHT_68 = 48, 54


def five_points_from_68(points: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG landmarks -> (5, 2) insightface landmarks: eye centres, nose tip, mouth corners."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {points.shape}")
    return np.stack([
        points[list(LEFT_EYE_68)].mean(axis=0),
        points[list(RIGHT_EYE_68)].mean(axis=0),
        points[NOSE_TIP_68],
        points[MOUTH_LEFT_68],
        points[MOUTH_RIGHT_68],
    ])


def read_landmarks_file(path: str | Path) -> dict[str, np.ndarray]:
    """CSV lines `relative_path,x1,y1,...,x5,y5` (insightface order, pixels of the original photo) -> {path: (5, 2)}.

    A header row is allowed (a first row whose coordinates are not numbers); blank lines and `#` comments are skipped.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "landmarks file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read landmarks file ({error})") from None
    landmarks: dict[str, np.ndarray] = {}
    for line_number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 11:
            raise DataError(path, f"line {line_number}: expected relative_path and 10 coordinates (x1,y1,...,x5,y5), got {len(row)} fields")
        try:
            values = np.array([float(value) for value in row[1:]], dtype=np.float64)
        except ValueError:
            if line_number == 1 and not landmarks:
                continue  # header
            raise DataError(path, f"line {line_number}: coordinates must be numbers, got {','.join(row[1:])!r}") from None
        if not np.isfinite(values).all():
            raise DataError(path, f"line {line_number}: coordinates must be finite")
        relative = row[0].strip()
        if relative in landmarks:
            raise DataError(path, f"line {line_number}: {relative!r} is listed twice")
        landmarks[relative] = values.reshape(5, 2)
    if not landmarks:
        raise DataError(path, "lists no landmarks")
    return landmarks
