"""The head: face outline, ears, neck and shading (the softened base), scalp hair and facial hair."""

from __future__ import annotations

import numpy as np

from pipeline.data.synthetic.canvas import Canvas, FaceFrame
from pipeline.data.synthetic.identity import IdentityParams
from pipeline.data.synthetic.palette import LIP_RED, clip_rgb, shade
from pipeline.data.synthetic.template import DEPTH_EARS, DEPTH_EYES, DEPTH_HAIRLINE, DEPTH_MOUTH, DEPTH_NOSE, DEPTH_OUTLINE, FACE_CENTER_X

LONG_HAIR_DROP = 70.0  # how far below the face centre long hair reaches (template units)
CURLY_HAIR_DROP = 22.0


def oval_xy(identity: IdentityParams, angles: np.ndarray, grow: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Face outline at the given angles: an ellipse whose lower half narrows towards the chin."""
    sin, cos = np.sin(angles), np.cos(angles)
    taper = 1.0 - identity.jaw_taper * np.clip(sin, 0.0, None) ** identity.chin_sharpness
    x = FACE_CENTER_X + (identity.face_half_width + grow) * cos * taper
    y = identity.face_center_y + (identity.face_half_height + grow) * sin
    return x, y


def lower_outline(frame: FaceFrame, identity: IdentityParams, from_y: float, grow: float = 0.0) -> np.ndarray:
    """The outline below height from_y, right cheek round the chin to the left cheek (for beards and masks)."""
    start = np.arcsin(np.clip((from_y - identity.face_center_y) / identity.face_half_height, -1.0, 1.0))
    x, y = oval_xy(identity, np.linspace(start, np.pi - start, 30), grow)
    return frame.point(x, y, DEPTH_OUTLINE)


def _face_outline(frame: FaceFrame, identity: IdentityParams, grow: float = 0.0, samples: int = 72) -> np.ndarray:
    angles = np.linspace(0.0, 2 * np.pi, samples, endpoint=False)
    x, y = oval_xy(identity, angles, grow)
    return frame.point(x, y, DEPTH_OUTLINE)


def _back_hair(frame: FaceFrame, identity: IdentityParams) -> np.ndarray:
    """Hair behind the head: a rounded crown that falls to the shoulders (long) or to the jaw (curly)."""
    half_width = identity.face_half_width + identity.hair_volume + 3.0
    crown_height = identity.face_half_height + identity.hair_volume + 1.0
    angles = np.linspace(np.pi, 2 * np.pi, 32)
    crown_x = FACE_CENTER_X + half_width * np.cos(angles)
    crown_y = identity.face_center_y + crown_height * np.sin(angles)
    bottom = identity.face_center_y + (LONG_HAIR_DROP if identity.hair_style == "long" else CURLY_HAIR_DROP)
    ends_x = FACE_CENTER_X + np.array([half_width + 2.0, -half_width - 2.0])
    return frame.point(np.concatenate([crown_x, ends_x]), np.concatenate([crown_y, [bottom, bottom]]), DEPTH_OUTLINE - 4.0)


def draw_head_base(canvas: Canvas, frame: FaceFrame, identity: IdentityParams) -> None:
    """Back hair, neck, ears and the shaded face oval, later softened by one blur."""
    skin = identity.skin_rgb
    if identity.hair_style in ("long", "curly"):
        canvas.polygon(_back_hair(frame, identity), shade(identity.hair_rgb, 0.8))
    neck_half = identity.face_half_width * 0.62
    neck = frame.point(FACE_CENTER_X + np.array([-neck_half, neck_half, neck_half * 1.1, -neck_half * 1.1]),
                       np.array([80.0, 80.0, 140.0, 140.0]), DEPTH_EARS)  # fmt: skip
    canvas.polygon(neck, shade(skin, 0.72))
    for side in (-1.0, 1.0):
        ear_x = FACE_CENTER_X + side * (identity.face_half_width * 0.97 + identity.ear_half_width * 0.35)
        centre = frame.point(ear_x, identity.ear_y, DEPTH_EARS)
        axes = (frame.width(identity.ear_half_width), identity.ear_half_height)
        canvas.ellipse(centre, axes, shade(skin, 0.86), angle_deg=side * 8.0)
        canvas.ellipse(centre, (axes[0] * 0.55, axes[1] * 0.6), shade(skin, 0.7), angle_deg=side * 8.0)
    canvas.polygon(_face_outline(frame, identity), shade(skin, 0.84))
    canvas.polygon(_face_outline(frame, identity, grow=-4.5), skin)
    _draw_face_shading(canvas, frame, identity)


def _draw_face_shading(canvas: Canvas, frame: FaceFrame, identity: IdentityParams) -> None:
    """Eye sockets, nose shadow and cheeks: soft tones that the blur turns into shape cues."""
    skin = identity.skin_rgb
    for side in (-1.0, 1.0):
        eye = frame.point(FACE_CENTER_X + side * identity.eye_half_spacing, identity.eye_y - 1.0, DEPTH_EYES)
        canvas.ellipse(eye, (frame.width(identity.eye_half_width * 1.45), identity.eye_half_height + 3.5), shade(skin, 0.86))
        cheek = frame.point(FACE_CENTER_X + side * identity.eye_half_spacing * 1.15, identity.nose_y + 4.0, DEPTH_EYES)
        blush_rgb = clip_rgb(np.asarray(skin) * (1 - identity.blush * 0.3) + LIP_RED * identity.blush * 0.3)
        canvas.ellipse(cheek, (frame.width(7.0), 5.0), blush_rgb)
    bridge_top = frame.point(FACE_CENTER_X, identity.eye_y, DEPTH_NOSE * 0.5)
    tip = frame.point(FACE_CENTER_X, identity.nose_y - 1.0, DEPTH_NOSE)
    side_sign = 1.0 if frame.yaw_sin >= 0 else -1.0  # the shadowed flank is the one turned away
    flank = np.array([bridge_top, tip + [side_sign * -identity.nose_half_width * 0.9, 1.0],
                      tip + [side_sign * -identity.nose_half_width * 0.2, -identity.nose_half_width]])  # fmt: skip
    canvas.polygon(flank, shade(skin, identity.nose_bridge_shade))
    under_nose = frame.point(FACE_CENTER_X, identity.nose_y + 3.0, DEPTH_NOSE * 0.8)
    canvas.ellipse(under_nose, (frame.width(identity.nose_half_width * 0.9), 1.6), shade(skin, 0.85))
    chin = frame.point(FACE_CENTER_X, identity.mouth_y + identity.lower_lip + 4.0, DEPTH_MOUTH)
    canvas.ellipse(chin, (frame.width(6.0), 2.2), shade(skin, 0.9))


def _hairline(identity: IdentityParams, across: np.ndarray) -> np.ndarray:
    """Hairline height across the forehead (across runs -1..1): curved, maybe slanted, receding or ragged."""
    y = identity.hairline_y + 9.0 * across**2 + identity.hairline_slant * across
    y -= identity.hairline_recession * np.exp(-(((np.abs(across) - 0.55) / 0.2) ** 2))
    if identity.hair_style == "fringe":
        y += 1.6 * np.abs(np.sin(across * 11.0))
    return y


def _hair_cap(frame: FaceFrame, identity: IdentityParams) -> np.ndarray:
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


def draw_hair(canvas: Canvas, frame: FaceFrame, identity: IdentityParams) -> None:
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
    strand_rgb = shade(identity.hair_rgb, 1.25 if np.mean(identity.hair_rgb) < 60 else 0.8)
    for offset in (-0.45, -0.15, 0.2, 0.5):
        x = FACE_CENTER_X + offset * identity.face_half_width + np.array([-3.0, 0.0, 4.0])
        top = identity.face_center_y - identity.face_half_height
        strand = frame.point(x, np.array([top + 2.0, top + 8.0, identity.hairline_y - 2.0]), DEPTH_HAIRLINE)
        canvas.polyline(strand, strand_rgb, 0.5)


def _moustache(frame: FaceFrame, identity: IdentityParams, lip_top: float) -> np.ndarray:
    """A band over the upper lip whose ends droop past the mouth corners."""
    across = np.linspace(-1.0, 1.0, 15)
    x = FACE_CENTER_X + across * identity.mouth_half_width * 1.12
    lower = lip_top + 0.8 + 2.5 * across**2
    upper = lower - identity.facial_hair_density * 4.5 * (1.0 - 0.6 * across**2) - 0.8
    upper = np.maximum(upper, identity.nose_y + 3.5)  # never above the nostrils
    return np.concatenate([frame.point(x, upper, DEPTH_MOUTH), frame.point(x, lower, DEPTH_MOUTH)[::-1]])


def draw_facial_hair(canvas: Canvas, frame: FaceFrame, identity: IdentityParams) -> None:
    """Beard, goatee, stubble and moustache as see-through patches in the hair colour."""
    kind = identity.facial_hair
    if kind == "none":
        return
    mouth_half = identity.mouth_half_width
    lip_top = identity.mouth_y - identity.upper_lip - 1.0
    if kind in ("beard", "stubble"):
        jaw = lower_outline(frame, identity, identity.eye_y + 6.0)
        upper = frame.point(FACE_CENTER_X + np.array([-0.7 * identity.face_half_width, -mouth_half * 1.1, 0.0,
                                                      mouth_half * 1.1, 0.7 * identity.face_half_width]),
                            np.array([identity.nose_y + 2.0, lip_top - 1.0, identity.nose_y + 4.0, lip_top - 1.0,
                                      identity.nose_y + 2.0]), DEPTH_MOUTH)  # fmt: skip
        patch = np.concatenate([jaw, upper])
    elif kind == "goatee":
        x, y = oval_xy(identity, np.linspace(np.pi * 0.36, np.pi * 0.64, 12))
        chin = frame.point(x, y, DEPTH_OUTLINE)
        top = frame.point(FACE_CENTER_X + np.array([-mouth_half * 0.8, mouth_half * 0.8]), identity.mouth_y + 2.0, DEPTH_MOUTH)
        patch = np.concatenate([chin, top])
    else:
        patch = None
    if patch is not None:
        canvas.blend(lambda layer: layer.polygon(patch, identity.hair_rgb), identity.facial_hair_density)
    if kind in ("moustache", "goatee", "beard"):
        canvas.polygon(_moustache(frame, identity, lip_top), shade(identity.hair_rgb, 0.9))
