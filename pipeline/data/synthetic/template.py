"""The ArcFace 112x112 five-point template every synthetic face is drawn on, and the pseudo-depth of its parts.

All geometry in this package is in these template units, so faces land where real aligned crops put eyes and mouth.
"""

from __future__ import annotations

import numpy as np

TEMPLATE_SIZE = 112
ARCFACE_LANDMARKS_112 = np.array(
    [
        [38.2946, 51.6963],  # left eye
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)
FACE_CENTER_X = float(ARCFACE_LANDMARKS_112[:2, 0].mean())
TEMPLATE_EYE_Y = float(ARCFACE_LANDMARKS_112[:2, 1].mean())
TEMPLATE_EYE_HALF_SPACING = float(np.ptp(ARCFACE_LANDMARKS_112[:2, 0]) / 2)
TEMPLATE_NOSE_Y = float(ARCFACE_LANDMARKS_112[2, 1])
TEMPLATE_MOUTH_Y = float(ARCFACE_LANDMARKS_112[3:, 1].mean())
TEMPLATE_MOUTH_HALF_WIDTH = float(np.ptp(ARCFACE_LANDMARKS_112[3:, 0]) / 2)

# pseudo-depth (template units, towards the camera) that turns yaw into parallax between features
DEPTH_NOSE = 18.0
DEPTH_MOUTH = 8.0
DEPTH_EYES = 6.0
DEPTH_BROWS = 7.0
DEPTH_HAIRLINE = 4.0
DEPTH_OUTLINE = -2.0
DEPTH_EARS = -14.0
