"""What surrounds and degrades a drawn face: the backdrop, a loose crop, the light, and the camera (blur, noise, JPEG)."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.data.synthetic.nuisance import ImageNuisance
from pipeline.data.synthetic.palette import background_colour
from pipeline.data.synthetic.template import FACE_CENTER_X, TEMPLATE_EYE_Y

BACKGROUND_SCENE_PROBABILITY = 0.5  # chance of extra rectangles/stripes behind the head
BACKGROUND_TINT_SHARE = 0.3  # blotches are mostly light/dark, a little coloured


def draw_background(image: np.ndarray, nuisance: ImageNuisance, rng: np.random.Generator) -> None:
    """A per-image backdrop (never tied to identity, so a model cannot match people by their wall)."""
    size = image.shape[0]
    grid = (nuisance.background_cells, nuisance.background_cells)
    light = rng.normal(0.0, nuisance.background_amplitude, grid + (1,))
    tint = rng.normal(0.0, nuisance.background_amplitude * BACKGROUND_TINT_SHARE, grid + (3,))
    cells = np.clip(np.asarray(nuisance.background_rgb) + light + tint, 0, 255).astype(np.uint8)
    image[:] = cv2.resize(cells, (size, size), interpolation=cv2.INTER_CUBIC)
    if rng.random() < BACKGROUND_SCENE_PROBABILITY:
        for _ in range(int(rng.integers(1, 4))):
            corner = rng.integers(0, size, 2)
            extent = rng.integers(size // 8, size // 2, 2)
            colour = background_colour(rng)
            cv2.rectangle(image, tuple(int(v) for v in corner), tuple(int(v) for v in corner + extent), colour, -1)


def pose_warp(image: np.ndarray, nuisance: ImageNuisance, pixels_per_unit: float) -> np.ndarray:
    """In-plane roll, scale and shift about the face centre, as a loose face detector would leave them."""
    centre = (FACE_CENTER_X * pixels_per_unit, TEMPLATE_EYE_Y * pixels_per_unit + 10.0 * pixels_per_unit)
    matrix = cv2.getRotationMatrix2D(centre, nuisance.roll_deg, nuisance.scale)
    matrix[:, 2] += np.array([nuisance.shift_x, nuisance.shift_y]) * pixels_per_unit
    size = image.shape[1], image.shape[0]
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def apply_light(image: np.ndarray, nuisance: ImageNuisance) -> np.ndarray:
    """Directional light, exposure, colour temperature and contrast, as float32 for the later degradations."""
    size = image.shape[0]
    coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size / 2)
    slope = 0.5 * nuisance.light_gradient * nuisance.brightness
    ramp_x = np.float32(slope * np.cos(nuisance.light_angle)) * coords
    ramp_y = np.float32(slope * np.sin(nuisance.light_angle)) * coords
    gain = ramp_x[None, :] + ramp_y[:, None] + np.float32(nuisance.brightness)
    colour = np.array([1.0 + nuisance.warmth, 1.0, 1.0 - nuisance.warmth], dtype=np.float32)
    lit = image.astype(np.float32)
    lit *= gain[:, :, None] * (colour * np.float32(nuisance.contrast))
    # contrast about the exposed mean: x*c + mean*(1-c), with mean = mean(x*c)/c
    lit += np.float32(float(lit.mean()) * (1.0 - nuisance.contrast) / nuisance.contrast)
    return lit


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform noise of the given std: looks like sensor grain and costs a fifth of Gaussian draws."""
    unit = rng.integers(0, 256, shape, dtype=np.uint8).astype(np.float32) - np.float32(127.5)
    return unit * np.float32(std * np.sqrt(12.0) / 256.0)


def degrade(image: np.ndarray, nuisance: ImageNuisance, rng: np.random.Generator) -> np.ndarray:
    """Camera blur, sensor noise and JPEG compression, in that order (as a real capture pipeline would)."""
    if nuisance.blur_sigma > 0.2:
        image = cv2.GaussianBlur(image, (0, 0), nuisance.blur_sigma)
    if nuisance.noise_std > 0.0:
        image = image + _sensor_noise(rng, image.shape, nuisance.noise_std)
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if nuisance.jpeg_quality:
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, nuisance.jpeg_quality])
        if not ok:
            raise RuntimeError("synthetic: OpenCV could not JPEG-encode a face")
        pixels = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return pixels
