"""Per-image nuisance: the pose, expression, lighting, degradation and occluder drawn for each image of a person."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.synthetic.identity import IdentityParams
from pipeline.data.synthetic.palette import RGB, background_colour, clip_rgb

OCCLUSION_KINDS = ("sunglasses", "mask", "hand", "hat")  # in draw order; occluders.OCCLUDER_DRAWERS draws each

# ranges at nuisance_strength 1
MAX_YAW_DEG = 28.0
MAX_ROLL_DEG = 10.0
MAX_SCALE_CHANGE = 0.09
MAX_SHIFT = 5.0  # template units
MAX_LIGHT_GRADIENT = 0.75  # brightness ratio change across the face from one side to the other
MAX_BRIGHTNESS_CHANGE = 0.3
MAX_CONTRAST_CHANGE = 0.3
MAX_WARMTH = 0.22  # red/blue gain swing of the colour temperature
MAX_BLUR_SIGMA = 1.3  # output pixels
MAX_NOISE_STD = 12.0  # grey levels
JPEG_PROBABILITY = 0.8
JPEG_QUALITY_RANGE = (25, 95)
BLINK_PROBABILITY = 0.08
MOUTH_OPEN_PROBABILITY = 0.3
MAX_BACKGROUND_TEXTURE = 40.0  # std of the low-frequency background blotches, grey levels


@dataclass(frozen=True)
class ImageNuisance:
    """Everything that changes from one image of a person to the next."""

    yaw_deg: float
    roll_deg: float
    scale: float
    shift_x: float
    shift_y: float
    smile: float
    mouth_open: float
    eye_openness: float
    brow_raise: float
    gaze_x: float
    light_angle: float
    light_gradient: float
    brightness: float
    contrast: float
    warmth: float
    blur_sigma: float
    noise_std: float
    jpeg_quality: int  # 0 = saved losslessly
    occlusion: str  # "none" or one of OCCLUSION_KINDS
    occlusion_rgb: RGB
    background_rgb: RGB
    background_cells: int
    background_amplitude: float
    texture_seed: int  # seeds the arrays (background texture, sensor noise, occluder placement)


def _symmetric(rng: np.random.Generator, half_range: float) -> float:
    """Uniform in [-half_range, half_range]."""
    return float(rng.uniform(-half_range, half_range))


def sample_nuisance(
    rng: np.random.Generator, identity: IdentityParams, strength: float = 1.0, occlusion_probability: float = 0.15
) -> ImageNuisance:
    """Draw one image's pose, expression, lighting, degradation and occluder; ranges scale with strength."""
    blinking = rng.random() < BLINK_PROBABILITY * min(strength, 1.0)
    quality_low, quality_high = JPEG_QUALITY_RANGE
    jpeg_quality = 0
    if strength > 0 and rng.random() < JPEG_PROBABILITY:
        jpeg_quality = int(round(quality_high - rng.uniform(0.0, 1.0) * min(strength, 1.0) * (quality_high - quality_low)))
    occlusion = str(rng.choice(OCCLUSION_KINDS)) if rng.random() < occlusion_probability else "none"
    return ImageNuisance(
        yaw_deg=_symmetric(rng, MAX_YAW_DEG * strength),
        roll_deg=_symmetric(rng, MAX_ROLL_DEG * strength),
        scale=1.0 + _symmetric(rng, MAX_SCALE_CHANGE * strength),
        shift_x=_symmetric(rng, MAX_SHIFT * strength),
        shift_y=_symmetric(rng, MAX_SHIFT * strength),
        smile=float(np.clip(identity.resting_smile + rng.normal(0.0, 0.45 * strength), -0.6, 1.2)),
        mouth_open=float(rng.uniform(0.0, 1.0)) if rng.random() < MOUTH_OPEN_PROBABILITY * strength else 0.0,
        eye_openness=float(rng.uniform(0.0, 0.25) if blinking else rng.uniform(1.0 - 0.35 * strength, 1.15)),
        brow_raise=_symmetric(rng, 2.5 * strength),
        gaze_x=_symmetric(rng, 0.35 * strength),
        light_angle=float(rng.uniform(0.0, 2 * np.pi)),
        light_gradient=float(rng.uniform(0.0, MAX_LIGHT_GRADIENT * strength)),
        brightness=1.0 + _symmetric(rng, MAX_BRIGHTNESS_CHANGE * strength),
        contrast=1.0 + _symmetric(rng, MAX_CONTRAST_CHANGE * strength),
        warmth=_symmetric(rng, MAX_WARMTH * strength),
        blur_sigma=float(rng.uniform(0.0, MAX_BLUR_SIGMA * strength)),
        noise_std=float(rng.uniform(0.0, MAX_NOISE_STD * strength)),
        jpeg_quality=jpeg_quality,
        occlusion=occlusion,
        occlusion_rgb=clip_rgb(rng.uniform(0.0, 255.0, 3)),
        background_rgb=background_colour(rng),
        background_cells=int(rng.integers(2, 9)),
        background_amplitude=float(rng.uniform(0.0, MAX_BACKGROUND_TEXTURE)),
        texture_seed=int(rng.integers(0, 2**31)),
    )
