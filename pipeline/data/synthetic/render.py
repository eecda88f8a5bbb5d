"""One finished image: the face drawn over its backdrop at SUPERSAMPLE x size, shrunk, posed, lit and degraded."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pipeline.data.synthetic.canvas import Canvas, FaceFrame
from pipeline.data.synthetic.capture import apply_light, degrade, draw_background, pose_warp
from pipeline.data.synthetic.features import draw_brows, draw_eyes, draw_moles, draw_mouth, draw_nose
from pipeline.data.synthetic.head import draw_facial_hair, draw_hair, draw_head_base
from pipeline.data.synthetic.identity import IdentityParams
from pipeline.data.synthetic.nuisance import ImageNuisance, sample_nuisance
from pipeline.data.synthetic.occluders import OCCLUDER_DRAWERS, draw_glasses
from pipeline.data.synthetic.seeds import seed_words
from pipeline.data.synthetic.template import TEMPLATE_SIZE

SUPERSAMPLE = 2  # draw at 2x and shrink with INTER_AREA: smooth edges at little cost
SKIN_SOFTEN_SIGMA = 1.2  # template units; blurs the face base so shading reads as shape, not as edges


def _soften(canvas: Canvas) -> None:
    """Blur the base layer so shading reads as shape; done at half resolution, where it costs a third."""
    height, width = canvas.image.shape[:2]
    half = cv2.resize(canvas.image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    cv2.GaussianBlur(half, (0, 0), SKIN_SOFTEN_SIGMA * canvas.pixels_per_unit / 2, dst=half)
    cv2.resize(half, (width, height), dst=canvas.image, interpolation=cv2.INTER_LINEAR)


def _draw_face(canvas: Canvas, identity: IdentityParams, nuisance: ImageNuisance, rng: np.random.Generator) -> None:
    """The whole head in painter's order, in frontal template coordinates (pose warp comes later)."""
    frame = FaceFrame.from_yaw(nuisance.yaw_deg)
    draw_head_base(Canvas(canvas.image, canvas.pixels_per_unit, cv2.LINE_8), frame, identity)
    _soften(canvas)
    draw_facial_hair(canvas, frame, identity)
    draw_hair(canvas, frame, identity)
    draw_brows(canvas, frame, identity, nuisance)
    draw_eyes(canvas, frame, identity, nuisance)
    draw_nose(canvas, frame, identity)
    draw_mouth(canvas, frame, identity, nuisance)
    draw_moles(canvas, frame, identity)
    if identity.glasses != "none" and nuisance.occlusion != "sunglasses":
        draw_glasses(canvas, frame, identity, identity.glasses, identity.glasses_rgb, filled=False)
    if nuisance.occlusion != "none":
        OCCLUDER_DRAWERS[nuisance.occlusion](canvas, frame, identity, nuisance.occlusion_rgb, rng)


def render_face(identity: IdentityParams, nuisance: ImageNuisance, image_size: int = TEMPLATE_SIZE) -> np.ndarray:
    """One (H, W, 3) uint8 RGB face: drawn at SUPERSAMPLE x size, shrunk, posed, lit and degraded."""
    canvas_size = image_size * SUPERSAMPLE
    pixels_per_unit = canvas_size / TEMPLATE_SIZE
    rng = np.random.default_rng(nuisance.texture_seed)
    canvas = Canvas(np.empty((canvas_size, canvas_size, 3), np.uint8), pixels_per_unit)
    draw_background(canvas.image, nuisance, rng)
    _draw_face(canvas, identity, nuisance, rng)
    small = cv2.resize(canvas.image, (image_size, image_size), interpolation=cv2.INTER_AREA)
    posed = pose_warp(small, nuisance, image_size / TEMPLATE_SIZE)
    return degrade(apply_light(posed, nuisance), nuisance, rng)


def render_identity_images(
    identity: IdentityParams,
    count: int,
    rng_seed: int | Sequence[int],
    image_size: int = TEMPLATE_SIZE,
    nuisance_strength: float = 1.0,
    occlusion_probability: float = 0.15,
) -> np.ndarray:
    """(count, H, W, 3) uint8 RGB images of one identity; image i depends only on (rng_seed, i)."""
    words = seed_words(rng_seed)
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    for image_index in range(count):
        rng = np.random.default_rng([*words, image_index])
        nuisance = sample_nuisance(rng, identity, nuisance_strength, occlusion_probability)
        images[image_index] = render_face(identity, nuisance, image_size)
    return images
