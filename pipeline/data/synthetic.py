"""Synthetic face identities: the project's default data set, drawn procedurally so nothing has to be downloaded.

No image here shows a real person. In the spirit of DigiFace-1M, each identity is a fixed draw of facial geometry
and appearance (face oval, skin tone, eyes, brows, nose, mouth, hair, ears, facial hair, moles, glasses), and each
image shows that identity under per-image nuisance (pose, expression, lighting, background, blur, sensor noise,
JPEG compression, occlusion). Faces are drawn in the ArcFace 112x112 five-point aligned layout, so they go through
the same code paths as real aligned crops. Identity is learnable from the face; raw pixels are a poor matcher.

Every array is a pure function of (seed, identity id, image index) through numpy Generators, so the output is
byte-identical whatever the generation order or the number of OpenCV threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.data.arrays import FaceArrays, VerificationPairs
from pipeline.errors import ConfigError

# --- layout: the insightface ArcFace template for 112x112 crops; all geometry below is in these units ----------
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

# --- rendering -----------------------------------------------------------------------------------------------
SUPERSAMPLE = 2  # draw at 2x and shrink with INTER_AREA: smooth edges at little cost
SUBPIXEL_BITS = 4  # fixed-point fraction bits for OpenCV drawing calls
SUBPIXEL_SCALE = 1 << SUBPIXEL_BITS
SKIN_SOFTEN_SIGMA = 1.2  # template units; blurs the face base so shading reads as shape, not as edges

# pseudo-depth (template units, towards the camera) that turns yaw into parallax between features
DEPTH_NOSE = 18.0
DEPTH_MOUTH = 8.0
DEPTH_EYES = 6.0
DEPTH_BROWS = 7.0
DEPTH_HAIRLINE = 4.0
DEPTH_OUTLINE = -2.0
DEPTH_EARS = -14.0

# --- seed streams: separate numpy SeedSequence branches so identities, images and pairs never share draws -------
IDENTITY_STREAM = 1
IMAGE_STREAM = 2
PAIR_STREAM = 3
VERIFICATION_ID_OFFSET = 1 << 30  # verification identity ids start here; training ids are 0..N-1
VERIFICATION_PAIRS_NAME = "synthetic-verify"

# --- appearance palettes (RGB) -------------------------------------------------------------------------------
SKIN_LIGHTEST = np.array([242.0, 208.0, 182.0])
SKIN_DARKEST = np.array([82.0, 52.0, 36.0])
HAIR_COLOURS = np.array(
    [
        [22, 18, 16],  # black
        [52, 36, 26],  # dark brown
        [92, 62, 38],  # brown
        [150, 112, 68],  # dark blonde
        [210, 175, 115],  # blonde
        [135, 58, 28],  # auburn
        [145, 143, 140],  # grey
        [222, 220, 212],  # white
    ],
    dtype=np.float64,
)
HAIR_COLOUR_WEIGHTS = np.array([0.26, 0.22, 0.16, 0.09, 0.08, 0.07, 0.07, 0.05])
IRIS_COLOURS = np.array(
    [[48, 30, 20], [88, 55, 30], [118, 92, 50], [80, 118, 70], [78, 118, 168], [118, 128, 138]], dtype=np.float64
)
IRIS_COLOUR_WEIGHTS = np.array([0.35, 0.25, 0.12, 0.08, 0.12, 0.08])
LIP_RED = np.array([168.0, 62.0, 72.0])
SCLERA_RGB = (236.0, 233.0, 228.0)
PUPIL_RGB = (14.0, 12.0, 12.0)
MOLE_RGB = (70.0, 45.0, 32.0)
MOUTH_INSIDE_RGB = (62.0, 22.0, 26.0)
TEETH_RGB = (228.0, 222.0, 205.0)

# hair styles and facial hair kinds (identity-level choices)
HAIR_STYLES = ("buzz", "short", "fringe", "side_part", "long", "curly", "bald")
HAIR_STYLE_WEIGHTS = np.array([0.1, 0.24, 0.14, 0.16, 0.2, 0.08, 0.08])
FACIAL_HAIR_KINDS = ("none", "stubble", "moustache", "goatee", "beard")
FACIAL_HAIR_WEIGHTS = np.array([0.58, 0.12, 0.08, 0.1, 0.12])
GLASSES_PROBABILITY = 0.12
LONG_HAIR_DROP = 70.0  # how far below the face centre long hair reaches (template units)
CURLY_HAIR_DROP = 22.0
OCCLUSION_KINDS = ("sunglasses", "mask", "hand", "hat")  # drawn by OCCLUDER_DRAWERS

# --- per-image nuisance ranges at nuisance_strength 1 ------------------------------------------------------------
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
BACKGROUND_SCENE_PROBABILITY = 0.5  # chance of extra rectangles/stripes behind the head
MAX_BACKGROUND_SATURATION = 0.6
MAX_BACKGROUND_TEXTURE = 40.0  # std of the low-frequency background blotches, grey levels
BACKGROUND_TINT_SHARE = 0.3  # blotches are mostly light/dark, a little coloured


# ------------------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticFaceConfig:
    """Sizes and difficulty of the generated set; the defaults give a few-minute CPU smoke run."""

    num_train_identities: int = 200
    images_per_identity: int = 20
    num_verification_identities: int = 60
    images_per_verification_identity: int = 6
    num_pairs: int = 600  # half same, half different
    image_size: int = 112
    seed: int = 0
    occlusion_probability: float = 0.15
    nuisance_strength: float = 1.0  # scales pose/lighting/blur/noise/JPEG ranges; 0 gives clean frontal faces

    def __post_init__(self) -> None:
        if self.num_train_identities < 1 or self.images_per_identity < 1:
            raise ConfigError("synthetic: need at least one training identity with one image")
        if self.num_train_identities > VERIFICATION_ID_OFFSET:
            raise ConfigError(f"synthetic: at most {VERIFICATION_ID_OFFSET} training identities")
        if self.num_verification_identities < 2 or self.images_per_verification_identity < 2:
            raise ConfigError("synthetic: verification needs >= 2 identities with >= 2 images each")
        if self.num_pairs < 2 or self.num_pairs % 2:
            raise ConfigError(f"synthetic: num_pairs must be even and >= 2 (half same, half different), got {self.num_pairs}")
        if self.image_size < 16:
            raise ConfigError(f"synthetic: image_size must be >= 16, got {self.image_size}")
        if not 0.0 <= self.occlusion_probability <= 1.0:
            raise ConfigError(f"synthetic: occlusion_probability must be in [0, 1], got {self.occlusion_probability}")
        if self.nuisance_strength < 0.0:
            raise ConfigError(f"synthetic: nuisance_strength must be >= 0, got {self.nuisance_strength}")


def train_identity_ids(config: SyntheticFaceConfig) -> range:
    """Global ids of the training identities; label k is id k."""
    return range(config.num_train_identities)


def verification_identity_ids(config: SyntheticFaceConfig) -> range:
    """Global ids of the verification identities: a separate range, so they never coincide with training ones."""
    return range(VERIFICATION_ID_OFFSET, VERIFICATION_ID_OFFSET + config.num_verification_identities)


def identity_image_seed(seed: int, identity_id: int) -> tuple[int, int, int]:
    """Seed words of one identity's image stream; image i draws from default_rng([*words, i])."""
    return (seed, IMAGE_STREAM, identity_id)


# ------------------------------------------------------------------------------------------------------------
# identity parameters
# ------------------------------------------------------------------------------------------------------------


RGB = tuple[float, float, float]


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


def _rgb(values: Iterable[float]) -> RGB:
    """Clip to the displayable range and freeze as a tuple (what cv2 drawing calls take)."""
    r, g, b = (min(max(float(v), 0.0), 255.0) for v in values)
    return (r, g, b)


def _shade(rgb: RGB, factor: float) -> RGB:
    """Same hue, brighter or darker: the cheap stand-in for shading."""
    return _rgb(np.asarray(rgb) * factor)


def _pick(rng: np.random.Generator, palette: np.ndarray, weights: np.ndarray, jitter: float) -> np.ndarray:
    """A palette colour with a little per-identity variation, so no two people share an exact shade."""
    base = palette[rng.choice(len(palette), p=weights / weights.sum())]
    return base + rng.normal(0.0, jitter, 3)


def _sample_skin(rng: np.random.Generator) -> np.ndarray:
    """Skin tone along a light-dark axis plus a warm/cool undertone."""
    darkness = rng.beta(1.4, 1.6)
    undertone = rng.normal(0.0, 7.0) * np.array([1.0, 0.2, -0.8])
    return (1 - darkness) * SKIN_LIGHTEST + darkness * SKIN_DARKEST + undertone + rng.normal(0.0, 3.0, 3)


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
    skin = _sample_skin(rng)
    hair = _pick(rng, HAIR_COLOURS, HAIR_COLOUR_WEIGHTS, 8.0)
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
        skin_rgb=_rgb(skin),
        blush=rng.uniform(0.0, 0.5),
        eye_half_spacing=TEMPLATE_EYE_HALF_SPACING + rng.normal(0.0, 1.3),
        eye_y=eye_y,
        eye_half_width=rng.uniform(5.0, 8.0),
        eye_half_height=rng.uniform(2.0, 3.6),
        eye_tilt_deg=rng.normal(0.0, 5.0),
        iris_rgb=_rgb(_pick(rng, IRIS_COLOURS, IRIS_COLOUR_WEIGHTS, 6.0)),
        iris_scale=rng.uniform(0.5, 0.62),
        brow_gap=rng.uniform(5.5, 9.5),
        brow_half_length=rng.uniform(6.5, 10.0),
        brow_thickness=rng.uniform(1.2, 3.4),
        brow_angle_deg=rng.normal(3.0, 7.0),
        brow_arch=rng.uniform(0.0, 3.0),
        brow_rgb=_rgb(hair * rng.uniform(0.45, 0.8) + 10.0),
        nose_y=TEMPLATE_NOSE_Y + rng.normal(0.0, 2.0),
        nose_half_width=rng.uniform(4.5, 8.5),
        nose_bridge_shade=rng.uniform(0.78, 0.93),
        mouth_y=TEMPLATE_MOUTH_Y + rng.normal(0.0, 1.8),
        mouth_half_width=TEMPLATE_MOUTH_HALF_WIDTH + rng.normal(0.0, 2.0),
        upper_lip=rng.uniform(1.4, 3.4),
        lower_lip=rng.uniform(2.0, 4.6),
        lip_rgb=_rgb(skin * rng.uniform(0.6, 0.8) + LIP_RED * rng.uniform(0.15, 0.35)),
        resting_smile=rng.normal(0.1, 0.25),
        hair_rgb=_rgb(hair),
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
        glasses_rgb=_rgb(rng.uniform(10.0, 120.0, 3) if rng.random() < 0.7 else rng.uniform(150.0, 230.0, 3)),
    )


# ------------------------------------------------------------------------------------------------------------
# per-image nuisance
# ------------------------------------------------------------------------------------------------------------


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


def _background_colour(rng: np.random.Generator) -> RGB:
    """A muted wall/sky/room colour: a grey level tinted by a random hue."""
    grey = rng.uniform(25.0, 230.0)
    tint = rng.uniform(0.0, 255.0, 3)
    saturation = rng.uniform(0.0, MAX_BACKGROUND_SATURATION)
    return _rgb(grey * (1.0 - saturation) + tint * saturation)


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
        occlusion_rgb=_rgb(rng.uniform(0.0, 255.0, 3)),
        background_rgb=_background_colour(rng),
        background_cells=int(rng.integers(2, 9)),
        background_amplitude=float(rng.uniform(0.0, MAX_BACKGROUND_TEXTURE)),
        texture_seed=int(rng.integers(0, 2**31)),
    )


# ------------------------------------------------------------------------------------------------------------
# drawing primitives
# ------------------------------------------------------------------------------------------------------------


class _Canvas:
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

    def blend(self, draw: Callable[[_Canvas], None], alpha: float) -> None:
        """Draw through a copy and mix it back, for see-through things (stubble, buzz cuts)."""
        layer = _Canvas(self.image.copy(), self.pixels_per_unit, self.line_type)
        draw(layer)
        cv2.addWeighted(layer.image, alpha, self.image, 1.0 - alpha, 0.0, dst=self.image)


@dataclass(frozen=True)
class _FaceFrame:
    """Fake 3D: yaw squeezes x about the face centre and slides each feature by its pseudo-depth."""

    yaw_cos: float
    yaw_sin: float

    @classmethod
    def from_yaw(cls, yaw_deg: float) -> _FaceFrame:
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


# ------------------------------------------------------------------------------------------------------------
# face parts
# ------------------------------------------------------------------------------------------------------------


def _oval_xy(identity: IdentityParams, angles: np.ndarray, grow: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Face outline at the given angles: an ellipse whose lower half narrows towards the chin."""
    sin, cos = np.sin(angles), np.cos(angles)
    taper = 1.0 - identity.jaw_taper * np.clip(sin, 0.0, None) ** identity.chin_sharpness
    x = FACE_CENTER_X + (identity.face_half_width + grow) * cos * taper
    y = identity.face_center_y + (identity.face_half_height + grow) * sin
    return x, y


def _lower_outline(frame: _FaceFrame, identity: IdentityParams, from_y: float, grow: float = 0.0) -> np.ndarray:
    """The outline below height from_y, right cheek round the chin to the left cheek (for beards and masks)."""
    start = np.arcsin(np.clip((from_y - identity.face_center_y) / identity.face_half_height, -1.0, 1.0))
    x, y = _oval_xy(identity, np.linspace(start, np.pi - start, 30), grow)
    return frame.point(x, y, DEPTH_OUTLINE)


def _face_outline(frame: _FaceFrame, identity: IdentityParams, grow: float = 0.0, samples: int = 72) -> np.ndarray:
    angles = np.linspace(0.0, 2 * np.pi, samples, endpoint=False)
    x, y = _oval_xy(identity, angles, grow)
    return frame.point(x, y, DEPTH_OUTLINE)


def _draw_background(image: np.ndarray, nuisance: ImageNuisance, rng: np.random.Generator) -> None:
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
            colour = _background_colour(rng)
            cv2.rectangle(image, tuple(int(v) for v in corner), tuple(int(v) for v in corner + extent), colour, -1)


def _back_hair(frame: _FaceFrame, identity: IdentityParams) -> np.ndarray:
    """Hair behind the head: a rounded crown that falls to the shoulders (long) or to the jaw (curly)."""
    half_width = identity.face_half_width + identity.hair_volume + 3.0
    crown_height = identity.face_half_height + identity.hair_volume + 1.0
    angles = np.linspace(np.pi, 2 * np.pi, 32)
    crown_x = FACE_CENTER_X + half_width * np.cos(angles)
    crown_y = identity.face_center_y + crown_height * np.sin(angles)
    bottom = identity.face_center_y + (LONG_HAIR_DROP if identity.hair_style == "long" else CURLY_HAIR_DROP)
    ends_x = FACE_CENTER_X + np.array([half_width + 2.0, -half_width - 2.0])
    return frame.point(np.concatenate([crown_x, ends_x]), np.concatenate([crown_y, [bottom, bottom]]), DEPTH_OUTLINE - 4.0)


def _draw_head_base(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams) -> None:
    """Back hair, neck, ears and the shaded face oval, later softened by one blur."""
    skin = identity.skin_rgb
    if identity.hair_style in ("long", "curly"):
        canvas.polygon(_back_hair(frame, identity), _shade(identity.hair_rgb, 0.8))
    neck_half = identity.face_half_width * 0.62
    neck = frame.point(FACE_CENTER_X + np.array([-neck_half, neck_half, neck_half * 1.1, -neck_half * 1.1]),
                       np.array([80.0, 80.0, 140.0, 140.0]), DEPTH_EARS)  # fmt: skip
    canvas.polygon(neck, _shade(skin, 0.72))
    for side in (-1.0, 1.0):
        ear_x = FACE_CENTER_X + side * (identity.face_half_width * 0.97 + identity.ear_half_width * 0.35)
        centre = frame.point(ear_x, identity.ear_y, DEPTH_EARS)
        axes = (frame.width(identity.ear_half_width), identity.ear_half_height)
        canvas.ellipse(centre, axes, _shade(skin, 0.86), angle_deg=side * 8.0)
        canvas.ellipse(centre, (axes[0] * 0.55, axes[1] * 0.6), _shade(skin, 0.7), angle_deg=side * 8.0)
    canvas.polygon(_face_outline(frame, identity), _shade(skin, 0.84))
    canvas.polygon(_face_outline(frame, identity, grow=-4.5), skin)
    _draw_face_shading(canvas, frame, identity)


def _draw_face_shading(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams) -> None:
    """Eye sockets, nose shadow and cheeks: soft tones that the blur turns into shape cues."""
    skin = identity.skin_rgb
    for side in (-1.0, 1.0):
        eye = frame.point(FACE_CENTER_X + side * identity.eye_half_spacing, identity.eye_y - 1.0, DEPTH_EYES)
        canvas.ellipse(eye, (frame.width(identity.eye_half_width * 1.45), identity.eye_half_height + 3.5), _shade(skin, 0.86))
        cheek = frame.point(FACE_CENTER_X + side * identity.eye_half_spacing * 1.15, identity.nose_y + 4.0, DEPTH_EYES)
        blush_rgb = _rgb(np.asarray(skin) * (1 - identity.blush * 0.3) + LIP_RED * identity.blush * 0.3)
        canvas.ellipse(cheek, (frame.width(7.0), 5.0), blush_rgb)
    bridge_top = frame.point(FACE_CENTER_X, identity.eye_y, DEPTH_NOSE * 0.5)
    tip = frame.point(FACE_CENTER_X, identity.nose_y - 1.0, DEPTH_NOSE)
    side_sign = 1.0 if frame.yaw_sin >= 0 else -1.0  # the shadowed flank is the one turned away
    flank = np.array([bridge_top, tip + [side_sign * -identity.nose_half_width * 0.9, 1.0],
                      tip + [side_sign * -identity.nose_half_width * 0.2, -identity.nose_half_width]])  # fmt: skip
    canvas.polygon(flank, _shade(skin, identity.nose_bridge_shade))
    under_nose = frame.point(FACE_CENTER_X, identity.nose_y + 3.0, DEPTH_NOSE * 0.8)
    canvas.ellipse(under_nose, (frame.width(identity.nose_half_width * 0.9), 1.6), _shade(skin, 0.85))
    chin = frame.point(FACE_CENTER_X, identity.mouth_y + identity.lower_lip + 4.0, DEPTH_MOUTH)
    canvas.ellipse(chin, (frame.width(6.0), 2.2), _shade(skin, 0.9))


def _hairline(identity: IdentityParams, across: np.ndarray) -> np.ndarray:
    """Hairline height across the forehead (across runs -1..1): curved, maybe slanted, receding or ragged."""
    y = identity.hairline_y + 9.0 * across**2 + identity.hairline_slant * across
    y -= identity.hairline_recession * np.exp(-(((np.abs(across) - 0.55) / 0.2) ** 2))
    if identity.hair_style == "fringe":
        y += 1.6 * np.abs(np.sin(across * 11.0))
    return y


def _hair_cap(frame: _FaceFrame, identity: IdentityParams) -> np.ndarray:
    """Polygon of the hair on top of the head: outer crown, down the temples, back along the hairline."""
    half_width = identity.face_half_width + identity.hair_volume
    crown_height = identity.face_half_height + identity.hair_volume
    angles = np.linspace(np.pi, 2 * np.pi, 40)
    bump = 1.0 + (0.05 * np.sin(angles * 22.0) if identity.hair_style == "curly" else 0.0)
    crown = frame.point(FACE_CENTER_X + half_width * np.cos(angles) * bump,
                        identity.face_center_y + crown_height * np.sin(angles) * bump, DEPTH_OUTLINE)  # fmt: skip
    sideburn_y = identity.eye_y - 1.0
    across = np.linspace(1.0, -1.0, 31)
    line = frame.point(FACE_CENTER_X + across * identity.face_half_width * 0.86, _hairline(identity, across), DEPTH_HAIRLINE)
    right_burn = frame.point(FACE_CENTER_X + identity.face_half_width * np.array([1.02, 0.9]), sideburn_y, DEPTH_OUTLINE)
    left_burn = frame.point(FACE_CENTER_X - identity.face_half_width * np.array([0.9, 1.02]), sideburn_y, DEPTH_OUTLINE)
    return np.concatenate([crown, right_burn, line, left_burn])


def _draw_hair(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams) -> None:
    """Top hair by style: solid for most, see-through for buzz cuts, only side tufts when bald."""
    if identity.hair_style == "bald":
        for side in (-1.0, 1.0):
            tuft = frame.point(FACE_CENTER_X + side * identity.face_half_width, identity.eye_y - 6.0, DEPTH_OUTLINE)
            canvas.blend(lambda layer: layer.ellipse(tuft, (2.5, 8.0), identity.hair_rgb, angle_deg=side * 10.0), 0.7)
        return
    cap = _hair_cap(frame, identity)
    if identity.hair_style == "buzz":
        canvas.blend(lambda layer: layer.polygon(cap, identity.hair_rgb), 0.55)
        return
    canvas.polygon(cap, identity.hair_rgb)
    strand_rgb = _shade(identity.hair_rgb, 1.25 if np.mean(identity.hair_rgb) < 60 else 0.8)
    for offset in (-0.45, -0.15, 0.2, 0.5):
        x = FACE_CENTER_X + offset * identity.face_half_width + np.array([-3.0, 0.0, 4.0])
        top = identity.face_center_y - identity.face_half_height
        strand = frame.point(x, np.array([top + 2.0, top + 8.0, identity.hairline_y - 2.0]), DEPTH_HAIRLINE)
        canvas.polyline(strand, strand_rgb, 0.5)


def _moustache(frame: _FaceFrame, identity: IdentityParams, lip_top: float) -> np.ndarray:
    """A band over the upper lip whose ends droop past the mouth corners."""
    across = np.linspace(-1.0, 1.0, 15)
    x = FACE_CENTER_X + across * identity.mouth_half_width * 1.12
    lower = lip_top + 0.8 + 2.5 * across**2
    upper = lower - identity.facial_hair_density * 4.5 * (1.0 - 0.6 * across**2) - 0.8
    upper = np.maximum(upper, identity.nose_y + 3.5)  # never above the nostrils
    return np.concatenate([frame.point(x, upper, DEPTH_MOUTH), frame.point(x, lower, DEPTH_MOUTH)[::-1]])


def _draw_facial_hair(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams) -> None:
    """Beard, goatee, stubble and moustache as see-through patches in the hair colour."""
    kind = identity.facial_hair
    if kind == "none":
        return
    mouth_half = identity.mouth_half_width
    lip_top = identity.mouth_y - identity.upper_lip - 1.0
    if kind in ("beard", "stubble"):
        jaw = _lower_outline(frame, identity, identity.eye_y + 6.0)
        upper = frame.point(FACE_CENTER_X + np.array([-0.7 * identity.face_half_width, -mouth_half * 1.1, 0.0,
                                                      mouth_half * 1.1, 0.7 * identity.face_half_width]),
                            np.array([identity.nose_y + 2.0, lip_top - 1.0, identity.nose_y + 4.0, lip_top - 1.0,
                                      identity.nose_y + 2.0]), DEPTH_MOUTH)  # fmt: skip
        patch = np.concatenate([jaw, upper])
    elif kind == "goatee":
        x, y = _oval_xy(identity, np.linspace(np.pi * 0.36, np.pi * 0.64, 12))
        chin = frame.point(x, y, DEPTH_OUTLINE)
        top = frame.point(FACE_CENTER_X + np.array([-mouth_half * 0.8, mouth_half * 0.8]), identity.mouth_y + 2.0, DEPTH_MOUTH)
        patch = np.concatenate([chin, top])
    else:
        patch = None
    if patch is not None:
        canvas.blend(lambda layer: layer.polygon(patch, identity.hair_rgb), identity.facial_hair_density)
    if kind in ("moustache", "goatee", "beard"):
        canvas.polygon(_moustache(frame, identity, lip_top), _shade(identity.hair_rgb, 0.9))


def _draw_brows(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams, nuisance: ImageNuisance) -> None:
    """Tapered arcs: thick at the inner end, tilted and arched per identity, raised per expression."""
    along = np.linspace(-1.0, 1.0, 12)  # inner end to outer end
    tilt = np.tan(np.deg2rad(identity.brow_angle_deg))
    for side in (-1.0, 1.0):
        centre_x = FACE_CENTER_X + side * (identity.eye_half_spacing + 1.0)
        x = centre_x + side * along * identity.brow_half_length
        y = (identity.eye_y - identity.eye_half_height - identity.brow_gap - nuisance.brow_raise
             - identity.brow_arch * (1.0 - along**2) - tilt * along * identity.brow_half_length)  # fmt: skip
        half_thickness = identity.brow_thickness * (1.0 - 0.55 * (along + 1.0) / 2.0) / 2.0
        upper = frame.point(x, y - half_thickness, DEPTH_BROWS)
        lower = frame.point(x, y + half_thickness, DEPTH_BROWS)
        canvas.polygon(np.concatenate([upper, lower[::-1]]), identity.brow_rgb)


def _draw_eyes(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams, nuisance: ImageNuisance) -> None:
    """Sclera, iris, pupil and lash line; openness squeezes the opening, gaze slides the iris."""
    half_height = max(identity.eye_half_height * nuisance.eye_openness, 0.25)
    half_width = frame.width(identity.eye_half_width)
    iris = identity.eye_half_width * identity.iris_scale
    lash_rgb = _shade(identity.brow_rgb, 0.6)
    for side in (-1.0, 1.0):
        centre = frame.point(FACE_CENTER_X + side * identity.eye_half_spacing, identity.eye_y, DEPTH_EYES)
        tilt = -side * identity.eye_tilt_deg
        if nuisance.eye_openness > 0.3:
            canvas.ellipse(centre, (half_width, half_height), SCLERA_RGB, angle_deg=tilt)
            iris_centre = centre + [nuisance.gaze_x * identity.eye_half_width, 0.0]
            canvas.ellipse(iris_centre, (frame.width(iris), min(iris, half_height)), identity.iris_rgb)
            pupil = iris * 0.45
            canvas.ellipse(iris_centre, (frame.width(pupil), min(pupil, half_height)), PUPIL_RGB)
        canvas.ellipse(centre, (half_width, half_height), lash_rgb, angle_deg=tilt, thickness=0.8, arc=(180.0, 360.0))
        canvas.ellipse(centre, (half_width, half_height), _shade(identity.skin_rgb, 0.7), angle_deg=tilt,
                       thickness=0.4, arc=(10.0, 170.0))  # fmt: skip


def _draw_nose(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams) -> None:
    """Nostrils and the wings of the nose; the bridge is already shading from the base pass."""
    dark = _shade(identity.skin_rgb, 0.45)
    wing = _shade(identity.skin_rgb, 0.68)
    for side in (-1.0, 1.0):
        nostril = frame.point(FACE_CENTER_X + side * identity.nose_half_width * 0.45, identity.nose_y + 1.5, DEPTH_NOSE * 0.8)
        canvas.ellipse(nostril, (frame.width(identity.nose_half_width * 0.28), 0.9), dark, angle_deg=side * 15.0)
        wing_centre = frame.point(FACE_CENTER_X + side * identity.nose_half_width * 0.7, identity.nose_y, DEPTH_NOSE * 0.7)
        arc = (-100.0, 80.0) if side > 0 else (100.0, 280.0)
        canvas.ellipse(wing_centre, (frame.width(identity.nose_half_width * 0.35), 2.4), wing, thickness=0.5, arc=arc)


def _draw_mouth(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams, nuisance: ImageNuisance) -> None:
    """Lips from curves through the corners: smile lifts the corners, opening parts the lips."""
    along = np.linspace(-1.0, 1.0, 21)
    bulge = np.sqrt(np.clip(1.0 - along**2, 0.0, None))
    corner_y = identity.mouth_y - nuisance.smile * 2.6
    parting = corner_y + (identity.mouth_y + nuisance.smile * 1.2 - corner_y) * (1.0 - along**2)
    gap = nuisance.mouth_open * 6.0 * (1.0 - along**2)
    cupid = 0.35 * identity.upper_lip * np.exp(-((along / 0.15) ** 2))
    x = FACE_CENTER_X + along * identity.mouth_half_width * (1.0 + 0.12 * max(nuisance.smile, 0.0))

    def curve(y: np.ndarray) -> np.ndarray:
        return frame.point(x, y, DEPTH_MOUTH)

    upper_top = curve(parting - identity.upper_lip * bulge + cupid)
    lower_top = curve(parting + gap)
    lower_bottom = curve(parting + gap + identity.lower_lip * bulge)
    if nuisance.mouth_open > 0.1:
        canvas.polygon(np.concatenate([curve(parting), lower_top[::-1]]), MOUTH_INSIDE_RGB)
        if nuisance.smile > 0.2:
            canvas.polygon(np.concatenate([curve(parting), curve(parting + gap * 0.4)[::-1]]), TEETH_RGB)
    canvas.polygon(np.concatenate([upper_top, curve(parting)[::-1]]), identity.lip_rgb)
    canvas.polygon(np.concatenate([lower_top, lower_bottom[::-1]]), _shade(identity.lip_rgb, 1.08))
    canvas.polyline(curve(parting + gap * 0.5), _shade(identity.lip_rgb, 0.55), 0.5)


def _draw_moles(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams) -> None:
    """Moles at face-relative positions, so they move with the face."""
    for across, down, radius in identity.moles:
        centre = frame.point(FACE_CENTER_X + across * identity.face_half_width,
                             identity.face_center_y + down * identity.face_half_height, DEPTH_MOUTH)  # fmt: skip
        canvas.ellipse(centre, (frame.width(radius), radius), MOLE_RGB)


def _eye_rims(frame: _FaceFrame, identity: IdentityParams) -> list[np.ndarray]:
    """Centres of the two lens/frame rims, just outside the eyes."""
    return [frame.point(FACE_CENTER_X + side * identity.eye_half_spacing, identity.eye_y + 0.5, DEPTH_EYES + 2.0)
            for side in (-1.0, 1.0)]  # fmt: skip


def _draw_glasses(
    canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams, style: str, rgb: RGB, filled: bool
) -> None:
    """Spectacles (identity accessory) or sunglasses (occluder): two rims, a bridge and the arms."""
    half_width, half_height = identity.eye_half_width * 1.55, identity.eye_half_width * 1.05
    left, right = _eye_rims(frame, identity)
    for centre, side in ((left, -1.0), (right, 1.0)):
        if style == "square":
            corners = np.array([[-1, -1], [1, -1], [1, 0.8], [0.7, 1], [-0.7, 1], [-1, 0.8]]) * [half_width, half_height]
            rim = centre + corners * [frame.yaw_cos, 1.0]
            if filled:
                canvas.polygon(rim, rgb)
            else:
                canvas.polyline(rim, rgb, 0.9, closed=True)
        else:
            axes = (frame.width(half_width), half_height)
            canvas.ellipse(centre, axes, rgb, thickness=None if filled else 0.9)
        arm_end = frame.point(FACE_CENTER_X + side * identity.face_half_width * 1.02, identity.eye_y - 1.0, DEPTH_EARS)
        canvas.polyline(np.array([centre + [side * frame.width(half_width), -half_height * 0.4], arm_end]), rgb, 0.9)
    bridge = np.array([left + [frame.width(half_width), -half_height * 0.3], (left + right) / 2 - [0.0, half_height * 0.5],
                       right - [frame.width(half_width), half_height * 0.3]])  # fmt: skip
    canvas.polyline(bridge, rgb, 0.9)


def _draw_sunglasses(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams, rgb: RGB, rng: np.random.Generator) -> None:
    _draw_glasses(canvas, frame, identity, str(rng.choice(["round", "square"])), _shade(rgb, 0.25), filled=True)


def _draw_mask(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams, rgb: RGB, rng: np.random.Generator) -> None:
    """A pale medical/cloth mask from the nose bridge down round the chin, with pleats."""
    lower = _lower_outline(frame, identity, identity.nose_y - 3.0, grow=0.5)
    top = frame.point(FACE_CENTER_X + np.array([-6.0, 0.0, 6.0]), identity.nose_y - np.array([5.0, 9.0, 5.0]), DEPTH_NOSE)
    mask_rgb = _rgb(np.asarray(rgb) * 0.35 + 160.0)
    canvas.polygon(np.concatenate([lower, top]), mask_rgb)
    for fold in (0.0, 5.0, 10.0):
        pleat = frame.point(FACE_CENTER_X + np.array([-22.0, 22.0]), identity.nose_y + 5.0 + fold, DEPTH_MOUTH)
        canvas.polyline(pleat, _shade(mask_rgb, 0.85), 0.6)


def _draw_hand(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams, rgb: RGB, rng: np.random.Generator) -> None:
    """Someone's hand (its own skin tone) somewhere over the lower two thirds of the face."""
    centre = np.array([FACE_CENTER_X + rng.uniform(-22.0, 22.0), rng.uniform(55.0, 100.0)])
    half = np.array([rng.uniform(11.0, 20.0), rng.uniform(9.0, 15.0)])
    hand_rgb = _rgb(_sample_skin(rng))
    canvas.ellipse(centre, half, hand_rgb, angle_deg=float(rng.uniform(-40.0, 40.0)))
    for finger in np.linspace(-0.6, 0.6, 4):
        knuckle = centre + [finger * half[0], -half[1] * 0.2]
        canvas.polyline(np.array([knuckle, knuckle + [0.0, half[1] * 0.9]]), _shade(hand_rgb, 0.75), 0.5)


def _draw_hat(canvas: _Canvas, frame: _FaceFrame, identity: IdentityParams, rgb: RGB, rng: np.random.Generator) -> None:
    """A hat pulled down to just above the brows: hides the hair, the strongest appearance cue."""
    brim_y = identity.eye_y - identity.brow_gap - rng.uniform(2.0, 8.0)
    hat = np.array([[-60.0, brim_y], [60.0, brim_y], [45.0, -5.0], [-45.0, -5.0]])
    canvas.polygon(frame.point(FACE_CENTER_X + hat[:, 0], hat[:, 1], DEPTH_HAIRLINE), rgb)
    brim = frame.point(FACE_CENTER_X + np.array([-55.0, 55.0]), brim_y, DEPTH_HAIRLINE)
    canvas.polyline(brim, _shade(rgb, 0.6), 2.0)


OCCLUDER_DRAWERS = {"sunglasses": _draw_sunglasses, "mask": _draw_mask, "hand": _draw_hand, "hat": _draw_hat}


# ------------------------------------------------------------------------------------------------------------
# image assembly
# ------------------------------------------------------------------------------------------------------------


def _soften(canvas: _Canvas) -> None:
    """Blur the base layer so shading reads as shape; done at half resolution, where it costs a third."""
    height, width = canvas.image.shape[:2]
    half = cv2.resize(canvas.image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    cv2.GaussianBlur(half, (0, 0), SKIN_SOFTEN_SIGMA * canvas.pixels_per_unit / 2, dst=half)
    cv2.resize(half, (width, height), dst=canvas.image, interpolation=cv2.INTER_LINEAR)


def _draw_face(canvas: _Canvas, identity: IdentityParams, nuisance: ImageNuisance, rng: np.random.Generator) -> None:
    """The whole head in painter's order, in frontal template coordinates (pose warp comes later)."""
    frame = _FaceFrame.from_yaw(nuisance.yaw_deg)
    _draw_head_base(_Canvas(canvas.image, canvas.pixels_per_unit, cv2.LINE_8), frame, identity)
    _soften(canvas)
    _draw_facial_hair(canvas, frame, identity)
    _draw_hair(canvas, frame, identity)
    _draw_brows(canvas, frame, identity, nuisance)
    _draw_eyes(canvas, frame, identity, nuisance)
    _draw_nose(canvas, frame, identity)
    _draw_mouth(canvas, frame, identity, nuisance)
    _draw_moles(canvas, frame, identity)
    if identity.glasses != "none" and nuisance.occlusion != "sunglasses":
        _draw_glasses(canvas, frame, identity, identity.glasses, identity.glasses_rgb, filled=False)
    if nuisance.occlusion != "none":
        OCCLUDER_DRAWERS[nuisance.occlusion](canvas, frame, identity, nuisance.occlusion_rgb, rng)


def _pose_warp(image: np.ndarray, nuisance: ImageNuisance, pixels_per_unit: float) -> np.ndarray:
    """In-plane roll, scale and shift about the face centre, as a loose face detector would leave them."""
    centre = (FACE_CENTER_X * pixels_per_unit, TEMPLATE_EYE_Y * pixels_per_unit + 10.0 * pixels_per_unit)
    matrix = cv2.getRotationMatrix2D(centre, nuisance.roll_deg, nuisance.scale)
    matrix[:, 2] += np.array([nuisance.shift_x, nuisance.shift_y]) * pixels_per_unit
    size = image.shape[1], image.shape[0]
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _light(image: np.ndarray, nuisance: ImageNuisance) -> np.ndarray:
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


def _degrade(image: np.ndarray, nuisance: ImageNuisance, rng: np.random.Generator) -> np.ndarray:
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


def render_face(identity: IdentityParams, nuisance: ImageNuisance, image_size: int = TEMPLATE_SIZE) -> np.ndarray:
    """One (H, W, 3) uint8 RGB face: drawn at SUPERSAMPLE x size, shrunk, posed, lit and degraded."""
    canvas_size = image_size * SUPERSAMPLE
    pixels_per_unit = canvas_size / TEMPLATE_SIZE
    rng = np.random.default_rng(nuisance.texture_seed)
    canvas = _Canvas(np.empty((canvas_size, canvas_size, 3), np.uint8), pixels_per_unit)
    _draw_background(canvas.image, nuisance, rng)
    _draw_face(canvas, identity, nuisance, rng)
    small = cv2.resize(canvas.image, (image_size, image_size), interpolation=cv2.INTER_AREA)
    posed = _pose_warp(small, nuisance, image_size / TEMPLATE_SIZE)
    return _degrade(_light(posed, nuisance), nuisance, rng)


def _seed_words(rng_seed: int | Sequence[int]) -> list[int]:
    return [int(rng_seed)] if np.isscalar(rng_seed) else [int(word) for word in rng_seed]


def render_identity_images(
    identity: IdentityParams,
    count: int,
    rng_seed: int | Sequence[int],
    image_size: int = TEMPLATE_SIZE,
    nuisance_strength: float = 1.0,
    occlusion_probability: float = 0.15,
) -> np.ndarray:
    """(count, H, W, 3) uint8 RGB images of one identity; image i depends only on (rng_seed, i)."""
    words = _seed_words(rng_seed)
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    for image_index in range(count):
        rng = np.random.default_rng([*words, image_index])
        nuisance = sample_nuisance(rng, identity, nuisance_strength, occlusion_probability)
        images[image_index] = render_face(identity, nuisance, image_size)
    return images


# ------------------------------------------------------------------------------------------------------------
# data sets
# ------------------------------------------------------------------------------------------------------------


def _progress(items: Sequence[int], enabled: bool, description: str) -> Iterable[int]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="id")


def _render_identities(
    config: SyntheticFaceConfig, identity_ids: Sequence[int], images_each: int, progress: bool, description: str
) -> np.ndarray:
    """All images of the given identities, identity-major: identity k occupies rows k*images_each onwards."""
    size = config.image_size
    images = np.empty((len(identity_ids) * images_each, size, size, 3), np.uint8)
    for position, identity_id in enumerate(_progress(identity_ids, progress, description)):
        identity = sample_identity(identity_id, config.seed)
        images[position * images_each : (position + 1) * images_each] = render_identity_images(
            identity, images_each, identity_image_seed(config.seed, identity_id), size,
            config.nuisance_strength, config.occlusion_probability,
        )  # fmt: skip
    return images


def generate_training_set(config: SyntheticFaceConfig, progress: bool = False) -> FaceArrays:
    """Training faces with labels 0..num_train_identities-1 (label = training identity id)."""
    identity_ids = train_identity_ids(config)
    images = _render_identities(config, identity_ids, config.images_per_identity, progress, "synthetic train")
    labels = np.repeat(np.arange(len(identity_ids), dtype=np.int64), config.images_per_identity)
    return FaceArrays(images=images, labels=labels)


def sample_pair_indices(
    num_identities: int, images_per_identity: int, num_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image-row indices (first, second) and issame for num_pairs pairs, exactly half of them same-identity.

    Same pairs are distinct image pairs of one identity, drawn without repeats while there are enough; different
    pairs join images of two distinct identities. Order is shuffled so issame is not a block pattern.
    """
    rng = np.random.default_rng([seed, PAIR_STREAM])
    half = num_pairs // 2
    first_in, second_in = np.triu_indices(images_per_identity, k=1)
    same_pool = len(first_in) * num_identities
    pick = rng.choice(same_pool, size=half, replace=half > same_pool)
    same_identity, within = np.divmod(pick, len(first_in))
    same = np.stack([same_identity * images_per_identity + first_in[within],
                     same_identity * images_per_identity + second_in[within]], axis=1)  # fmt: skip
    identity_a = rng.integers(0, num_identities, half)
    identity_b = (identity_a + rng.integers(1, num_identities, half)) % num_identities
    different = np.stack([identity_a * images_per_identity + rng.integers(0, images_per_identity, half),
                          identity_b * images_per_identity + rng.integers(0, images_per_identity, half)], axis=1)  # fmt: skip
    pairs = np.concatenate([same, different])
    issame = np.concatenate([np.ones(half, bool), np.zeros(half, bool)])
    order = rng.permutation(num_pairs)
    return pairs[order, 0], pairs[order, 1], issame[order]


def generate_verification_pairs(config: SyntheticFaceConfig, progress: bool = False) -> VerificationPairs:
    """Pairs over identities disjoint from training, in the insightface .bin layout, named "synthetic-verify"."""
    per_identity = config.images_per_verification_identity
    images = _render_identities(config, verification_identity_ids(config), per_identity, progress, "synthetic verify")
    first, second, issame = sample_pair_indices(config.num_verification_identities, per_identity, config.num_pairs, config.seed)
    interleaved = np.stack([first, second], axis=1).reshape(-1)
    return VerificationPairs(images=images[interleaved], issame=issame, name=VERIFICATION_PAIRS_NAME)


def generate_dataset(config: SyntheticFaceConfig, progress: bool = False) -> tuple[FaceArrays, VerificationPairs]:
    """The training set and the verification pairs of one configuration."""
    return generate_training_set(config, progress), generate_verification_pairs(config, progress)


def preview_grid(config: SyntheticFaceConfig, identities: int = 8, images_each: int = 6) -> np.ndarray:
    """A (identities*H, images_each*W, 3) RGB mosaic of training identities, one row per person, for eyeballing."""
    images = _render_identities(config, train_identity_ids(config)[:identities], images_each, False, "preview")
    size = config.image_size
    rows = images.reshape(identities, images_each, size, size, 3)
    return rows.transpose(0, 2, 1, 3, 4).reshape(identities * size, images_each * size, 3)
