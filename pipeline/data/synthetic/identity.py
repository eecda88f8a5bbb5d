"""One synthetic person: the facial geometry and appearance that stay fixed across all of their images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.synthetic.palette import (
    HAIR_COLOUR_WEIGHTS,
    HAIR_COLOURS,
    IRIS_COLOUR_WEIGHTS,
    IRIS_COLOURS,
    LIP_RED,
    RGB,
    clip_rgb,
    pick_colour,
    sample_skin,
)
from pipeline.data.synthetic.seeds import IDENTITY_STREAM
from pipeline.data.synthetic.template import (
    TEMPLATE_EYE_HALF_SPACING,
    TEMPLATE_EYE_Y,
    TEMPLATE_MOUTH_HALF_WIDTH,
    TEMPLATE_MOUTH_Y,
    TEMPLATE_NOSE_Y,
)

HAIR_STYLES = ("buzz", "short", "fringe", "side_part", "long", "curly", "bald")
HAIR_STYLE_WEIGHTS = np.array([0.1, 0.24, 0.14, 0.16, 0.2, 0.08, 0.08])
FACIAL_HAIR_KINDS = ("none", "stubble", "moustache", "goatee", "beard")
FACIAL_HAIR_WEIGHTS = np.array([0.58, 0.12, 0.08, 0.1, 0.12])
GLASSES_PROBABILITY = 0.12


@dataclass(frozen=True)
class IdentityParams:
    """Everything that stays fixed across one synthetic person's images (lengths in 112-template units)."""

    identity_id: int
    face_center_y: float
    face_half_width: float
    face_half_height: float
    jaw_taper: float  # how much narrower the chin is than the cheeks (0 = plain oval)
    chin_sharpness: float  # exponent of the taper: high = square jaw, low = pointed chin
    skin_rgb: RGB
    blush: float
    eye_half_spacing: float
    eye_y: float
    eye_half_width: float
    eye_half_height: float
    eye_tilt_deg: float
    iris_rgb: RGB
    iris_scale: float  # iris radius over eye half-width
    brow_gap: float
    brow_half_length: float
    brow_thickness: float
    brow_angle_deg: float
    brow_arch: float
    brow_rgb: RGB
    nose_y: float
    nose_half_width: float
    nose_bridge_shade: float
    mouth_y: float
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    lip_rgb: RGB
    resting_smile: float
    hair_rgb: RGB
    hair_style: str
    hairline_y: float
    hair_volume: float
    hairline_slant: float
    hairline_recession: float
    ear_half_width: float
    ear_half_height: float
    ear_y: float
    facial_hair: str
    facial_hair_density: float
    moles: tuple[tuple[float, float, float], ...]  # (x, y, radius) in face-normalised coordinates
    glasses: str  # "none", "round" or "square"
    glasses_rgb: RGB


def _sample_moles(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """A few moles at fixed face-relative spots: small but stable identity cues."""
    count = rng.choice(4, p=[0.5, 0.28, 0.15, 0.07])
    return tuple(
        (float(rng.uniform(-0.75, 0.75)), float(rng.uniform(-0.35, 0.75)), float(rng.uniform(0.6, 1.4)))
        for _ in range(count)
    )


def sample_identity(identity_id: int, seed: int = 0) -> IdentityParams:
    """Draw one synthetic person; depends only on (seed, identity_id), never on which other identities exist."""
    rng = np.random.default_rng([seed, IDENTITY_STREAM, identity_id])
    skin = sample_skin(rng)
    hair = pick_colour(rng, HAIR_COLOURS, HAIR_COLOUR_WEIGHTS, 8.0)
    hair_style = str(rng.choice(HAIR_STYLES, p=HAIR_STYLE_WEIGHTS / HAIR_STYLE_WEIGHTS.sum()))
    facial_hair = str(rng.choice(FACIAL_HAIR_KINDS, p=FACIAL_HAIR_WEIGHTS / FACIAL_HAIR_WEIGHTS.sum()))
    eye_y = TEMPLATE_EYE_Y + rng.normal(0.0, 1.4)
    fringe = hair_style == "fringe"
    glasses = str(rng.choice(["round", "square"])) if rng.random() < GLASSES_PROBABILITY else "none"
    return IdentityParams(
        identity_id=identity_id,
        face_center_y=60.0 + rng.normal(0.0, 1.5),
        face_half_width=rng.uniform(35.0, 43.0),
        face_half_height=rng.uniform(49.0, 56.0),
        jaw_taper=rng.uniform(0.12, 0.42),
        chin_sharpness=rng.uniform(1.2, 3.5),
        skin_rgb=clip_rgb(skin),
        blush=rng.uniform(0.0, 0.5),
        eye_half_spacing=TEMPLATE_EYE_HALF_SPACING + rng.normal(0.0, 1.3),
        eye_y=eye_y,
        eye_half_width=rng.uniform(5.0, 8.0),
        eye_half_height=rng.uniform(2.0, 3.6),
        eye_tilt_deg=rng.normal(0.0, 5.0),
        iris_rgb=clip_rgb(pick_colour(rng, IRIS_COLOURS, IRIS_COLOUR_WEIGHTS, 6.0)),
        iris_scale=rng.uniform(0.5, 0.62),
        brow_gap=rng.uniform(5.5, 9.5),
        brow_half_length=rng.uniform(6.5, 10.0),
        brow_thickness=rng.uniform(1.2, 3.4),
        brow_angle_deg=rng.normal(3.0, 7.0),
        brow_arch=rng.uniform(0.0, 3.0),
        brow_rgb=clip_rgb(hair * rng.uniform(0.45, 0.8) + 10.0),
        nose_y=TEMPLATE_NOSE_Y + rng.normal(0.0, 2.0),
        nose_half_width=rng.uniform(4.5, 8.5),
        nose_bridge_shade=rng.uniform(0.78, 0.93),
        mouth_y=TEMPLATE_MOUTH_Y + rng.normal(0.0, 1.8),
        mouth_half_width=TEMPLATE_MOUTH_HALF_WIDTH + rng.normal(0.0, 2.0),
        upper_lip=rng.uniform(1.4, 3.4),
        lower_lip=rng.uniform(2.0, 4.6),
        lip_rgb=clip_rgb(skin * rng.uniform(0.6, 0.8) + LIP_RED * rng.uniform(0.15, 0.35)),
        resting_smile=rng.normal(0.1, 0.25),
        hair_rgb=clip_rgb(hair),
        hair_style=hair_style,
        hairline_y=rng.uniform(31.0, 37.0) if fringe else rng.uniform(17.0, 28.0),
        hair_volume=rng.uniform(7.0, 13.0) if hair_style == "curly" else rng.uniform(1.5, 5.5),
        hairline_slant=rng.normal(0.0, 5.0) if hair_style == "side_part" else rng.normal(0.0, 1.0),
        hairline_recession=rng.uniform(0.0, 7.0) if rng.random() < 0.3 else 0.0,
        ear_half_width=rng.uniform(3.5, 5.5),
        ear_half_height=rng.uniform(7.5, 11.0),
        ear_y=eye_y + rng.uniform(8.0, 14.0),
        facial_hair=facial_hair,
        facial_hair_density=rng.uniform(0.55, 0.95) if facial_hair != "stubble" else rng.uniform(0.2, 0.38),
        moles=_sample_moles(rng),
        glasses=glasses,
        glasses_rgb=clip_rgb(rng.uniform(10.0, 120.0, 3) if rng.random() < 0.7 else rng.uniform(150.0, 230.0, 3)),
    )
