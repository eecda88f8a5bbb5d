"""Drawing in template units: an anti-aliased sub-pixel OpenCV canvas and the fake-3D frame that turns yaw into parallax."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.data.synthetic.palette import RGB
from pipeline.data.synthetic.template import FACE_CENTER_X

SUBPIXEL_BITS = 4  # fixed-point fraction bits for OpenCV drawing calls
SUBPIXEL_SCALE = 1 << SUBPIXEL_BITS


class Canvas:
    """An RGB uint8 image addressed in template units, drawn with anti-aliased sub-pixel OpenCV calls."""

    def __init__(self, image: np.ndarray, pixels_per_unit: float, line_type: int = cv2.LINE_AA) -> None:
        self.image = image
        self.pixels_per_unit = pixels_per_unit
        self.line_type = line_type  # LINE_8 is enough (and faster) for layers that get blurred anyway

    def _fixed(self, points: np.ndarray) -> np.ndarray:
        return np.rint(points * (self.pixels_per_unit * SUBPIXEL_SCALE)).astype(np.int32)

    def _fixed_pair(self, pair: Sequence[float]) -> tuple[int, int]:
        """Plain-float path for the many single points (numpy per call costs more than the drawing)."""
        scale = self.pixels_per_unit * SUBPIXEL_SCALE
        return int(round(float(pair[0]) * scale)), int(round(float(pair[1]) * scale))

    def _thickness(self, units: float) -> int:
        return max(1, int(round(units * self.pixels_per_unit)))

    def polygon(self, points: np.ndarray, rgb: RGB) -> None:
        cv2.fillPoly(self.image, [self._fixed(points).reshape(-1, 1, 2)], rgb, self.line_type, SUBPIXEL_BITS)

    def polyline(self, points: np.ndarray, rgb: RGB, thickness: float, closed: bool = False) -> None:
        pts = self._fixed(points).reshape(-1, 1, 2)
        cv2.polylines(self.image, [pts], closed, rgb, self._thickness(thickness), self.line_type, SUBPIXEL_BITS)

    def ellipse(
        self,
        center: Sequence[float],
        half_axes: Sequence[float],
        rgb: RGB,
        angle_deg: float = 0.0,
        thickness: float | None = None,
        arc: tuple[float, float] = (0.0, 360.0),
    ) -> None:
        """Filled when thickness is None, else an outline (or arc) that many template units wide."""
        axis_x, axis_y = self._fixed_pair(half_axes)
        width = -1 if thickness is None else self._thickness(thickness)
        cv2.ellipse(
            self.image, self._fixed_pair(center), (max(axis_x, 1), max(axis_y, 1)), float(angle_deg), arc[0], arc[1],
            rgb, width, self.line_type, SUBPIXEL_BITS,
        )  # fmt: skip

    def blend(self, draw: Callable[[Canvas], None], alpha: float) -> None:
        """Draw through a copy and mix it back, for see-through things (stubble, buzz cuts)."""
        layer = Canvas(self.image.copy(), self.pixels_per_unit, self.line_type)
        draw(layer)
        cv2.addWeighted(layer.image, alpha, self.image, 1.0 - alpha, 0.0, dst=self.image)


@dataclass(frozen=True)
class FaceFrame:
    """Fake 3D: yaw squeezes x about the face centre and slides each feature by its pseudo-depth."""

    yaw_cos: float
    yaw_sin: float

    @classmethod
    def from_yaw(cls, yaw_deg: float) -> FaceFrame:
        yaw = np.deg2rad(yaw_deg)
        return cls(float(np.cos(yaw)), float(np.sin(yaw)))

    def point(self, x: float | np.ndarray, y: float | np.ndarray, depth: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        points = np.empty(x.shape + (2,))
        points[..., 0] = FACE_CENTER_X + (x - FACE_CENTER_X) * self.yaw_cos + depth * self.yaw_sin
        points[..., 1] = y
        return points

    def width(self, half_width: float) -> float:
        return half_width * self.yaw_cos
