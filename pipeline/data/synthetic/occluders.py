"""Things in front of the face: an identity's spectacles, and the per-image occluders (sunglasses, mask, hand, hat)."""

from __future__ import annotations

import numpy as np

from pipeline.data.synthetic.canvas import Canvas, FaceFrame
from pipeline.data.synthetic.head import lower_outline
from pipeline.data.synthetic.identity import IdentityParams
from pipeline.data.synthetic.palette import RGB, clip_rgb, sample_skin, shade
from pipeline.data.synthetic.template import DEPTH_EARS, DEPTH_EYES, DEPTH_HAIRLINE, DEPTH_MOUTH, DEPTH_NOSE, FACE_CENTER_X


def _eye_rims(frame: FaceFrame, identity: IdentityParams) -> list[np.ndarray]:
    """Centres of the two lens/frame rims, just outside the eyes."""
    return [frame.point(FACE_CENTER_X + side * identity.eye_half_spacing, identity.eye_y + 0.5, DEPTH_EYES + 2.0)
            for side in (-1.0, 1.0)]  # fmt: skip


def draw_glasses(
    canvas: Canvas, frame: FaceFrame, identity: IdentityParams, style: str, rgb: RGB, filled: bool
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


def _draw_sunglasses(canvas: Canvas, frame: FaceFrame, identity: IdentityParams, rgb: RGB, rng: np.random.Generator) -> None:
    draw_glasses(canvas, frame, identity, str(rng.choice(["round", "square"])), shade(rgb, 0.25), filled=True)


def _draw_mask(canvas: Canvas, frame: FaceFrame, identity: IdentityParams, rgb: RGB, rng: np.random.Generator) -> None:
    """A pale medical/cloth mask from the nose bridge down round the chin, with pleats."""
    lower = lower_outline(frame, identity, identity.nose_y - 3.0, grow=0.5)
    top = frame.point(FACE_CENTER_X + np.array([-6.0, 0.0, 6.0]), identity.nose_y - np.array([5.0, 9.0, 5.0]), DEPTH_NOSE)
    mask_rgb = clip_rgb(np.asarray(rgb) * 0.35 + 160.0)
    canvas.polygon(np.concatenate([lower, top]), mask_rgb)
    for fold in (0.0, 5.0, 10.0):
        pleat = frame.point(FACE_CENTER_X + np.array([-22.0, 22.0]), identity.nose_y + 5.0 + fold, DEPTH_MOUTH)
        canvas.polyline(pleat, shade(mask_rgb, 0.85), 0.6)


def _draw_hand(canvas: Canvas, frame: FaceFrame, identity: IdentityParams, rgb: RGB, rng: np.random.Generator) -> None:
    """Someone's hand (its own skin tone) somewhere over the lower two thirds of the face."""
    centre = np.array([FACE_CENTER_X + rng.uniform(-22.0, 22.0), rng.uniform(55.0, 100.0)])
    half = np.array([rng.uniform(11.0, 20.0), rng.uniform(9.0, 15.0)])
    hand_rgb = clip_rgb(sample_skin(rng))
    canvas.ellipse(centre, half, hand_rgb, angle_deg=float(rng.uniform(-40.0, 40.0)))
    for finger in np.linspace(-0.6, 0.6, 4):
        knuckle = centre + [finger * half[0], -half[1] * 0.2]
        canvas.polyline(np.array([knuckle, knuckle + [0.0, half[1] * 0.9]]), shade(hand_rgb, 0.75), 0.5)


def _draw_hat(canvas: Canvas, frame: FaceFrame, identity: IdentityParams, rgb: RGB, rng: np.random.Generator) -> None:
    """A hat pulled down to just above the brows: hides the hair, the strongest appearance cue."""
    brim_y = identity.eye_y - identity.brow_gap - rng.uniform(2.0, 8.0)
    hat = np.array([[-60.0, brim_y], [60.0, brim_y], [45.0, -5.0], [-45.0, -5.0]])
    canvas.polygon(frame.point(FACE_CENTER_X + hat[:, 0], hat[:, 1], DEPTH_HAIRLINE), rgb)
    brim = frame.point(FACE_CENTER_X + np.array([-55.0, 55.0]), brim_y, DEPTH_HAIRLINE)
    canvas.polyline(brim, shade(rgb, 0.6), 2.0)


OCCLUDER_DRAWERS = {"sunglasses": _draw_sunglasses, "mask": _draw_mask, "hand": _draw_hand, "hat": _draw_hat}
