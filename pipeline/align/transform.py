"""The standard insightface alignment: a least-squares similarity transform from 5 landmarks to the ArcFace template.

Why a similarity (rotation, uniform scale, translation) and not a full affine: it keeps the face's proportions, so
identity cues survive, and it is what insightface's `norm_crop` does (skimage's Umeyama estimate, then
`cv2.warpAffine` with a black border); crops made here therefore line up with insightface's aligned data sets.
"""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
"""insightface's `arcface_dst` for 112x112 crops, in image (x, y) pixels: the image-left eye centre, the image-right
eye centre, the nose tip, the image-left and image-right mouth corners."""


def similarity_transform(source_points: np.ndarray, target_points: np.ndarray = ARCFACE_TEMPLATE_112) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping `source_points` (N, 2) onto `target_points`; a 2x3 matrix.

    Raises ValueError for landmarks that fix no transform (fewer than 2 distinct points, non-finite values).
    """
    source = np.asarray(source_points, dtype=np.float64)
    target = np.asarray(target_points, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
        raise ValueError(f"landmarks must be (N, 2) like the template {target.shape}, got {source.shape}")
    if not np.isfinite(source).all():
        raise ValueError("landmarks contain non-finite values")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = (source_centred**2).sum(axis=1).mean()
    if source_variance < 1e-12:
        raise ValueError("landmarks are all at one point")
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ reflection @ vt
    scale = float(np.trace(np.diag(singular) @ reflection)) / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face(
    image: np.ndarray, landmarks: np.ndarray, size: int = 112, target_112: np.ndarray = ARCFACE_TEMPLATE_112
) -> tuple[np.ndarray, float]:
    """Warp `image` so its 5 landmarks land on `target_112` (scaled to `size`); returns (crop, fit residual in px).

    `target_112` is the ArcFace template for insightface-convention landmarks, or where another landmarker's points
    land on template-aligned faces (`landmarks.DLIB68_FIVE_POINTS_ON_ARCFACE_112`). The residual (root-mean-square
    distance of the mapped landmarks from the target, in output pixels) says how far this face's landmark geometry
    is from the template's; profile views and bad landmarks give large values.
    """
    template = np.asarray(target_112, dtype=np.float64) * (size / 112.0)
    matrix = similarity_transform(landmarks, template)
    residual = float(np.sqrt(((apply_transform(matrix, landmarks) - template) ** 2).sum(axis=1).mean()))
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crop, residual
