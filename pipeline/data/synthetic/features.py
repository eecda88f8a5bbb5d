"""The inner face: brows, eyes, nose, mouth and moles, each moved by the identity and by the image's expression."""

from __future__ import annotations

import numpy as np

from pipeline.data.synthetic.canvas import Canvas, FaceFrame
from pipeline.data.synthetic.identity import IdentityParams
from pipeline.data.synthetic.nuisance import ImageNuisance
from pipeline.data.synthetic.palette import MOLE_RGB, MOUTH_INSIDE_RGB, PUPIL_RGB, SCLERA_RGB, TEETH_RGB, shade
from pipeline.data.synthetic.template import DEPTH_BROWS, DEPTH_EYES, DEPTH_MOUTH, DEPTH_NOSE, FACE_CENTER_X


def draw_brows(canvas: Canvas, frame: FaceFrame, identity: IdentityParams, nuisance: ImageNuisance) -> None:
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


def draw_eyes(canvas: Canvas, frame: FaceFrame, identity: IdentityParams, nuisance: ImageNuisance) -> None:
    """Sclera, iris, pupil and lash line; openness squeezes the opening, gaze slides the iris."""
    half_height = max(identity.eye_half_height * nuisance.eye_openness, 0.25)
    half_width = frame.width(identity.eye_half_width)
    iris = identity.eye_half_width * identity.iris_scale
    lash_rgb = shade(identity.brow_rgb, 0.6)
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
        canvas.ellipse(centre, (half_width, half_height), shade(identity.skin_rgb, 0.7), angle_deg=tilt,
                       thickness=0.4, arc=(10.0, 170.0))  # fmt: skip


def draw_nose(canvas: Canvas, frame: FaceFrame, identity: IdentityParams) -> None:
    """Nostrils and the wings of the nose; the bridge is already shading from the base pass."""
    dark = shade(identity.skin_rgb, 0.45)
    wing = shade(identity.skin_rgb, 0.68)
    for side in (-1.0, 1.0):
        nostril = frame.point(FACE_CENTER_X + side * identity.nose_half_width * 0.45, identity.nose_y + 1.5, DEPTH_NOSE * 0.8)
        canvas.ellipse(nostril, (frame.width(identity.nose_half_width * 0.28), 0.9), dark, angle_deg=side * 15.0)
        wing_centre = frame.point(FACE_CENTER_X + side * identity.nose_half_width * 0.7, identity.nose_y, DEPTH_NOSE * 0.7)
        arc = (-100.0, 80.0) if side > 0 else (100.0, 280.0)
        canvas.ellipse(wing_centre, (frame.width(identity.nose_half_width * 0.35), 2.4), wing, thickness=0.5, arc=arc)


def draw_mouth(canvas: Canvas, frame: FaceFrame, identity: IdentityParams, nuisance: ImageNuisance) -> None:
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
    canvas.polygon(np.concatenate([lower_top, lower_bottom[::-1]]), shade(identity.lip_rgb, 1.08))
    canvas.polyline(curve(parting + gap * 0.5), shade(identity.lip_rgb, 0.55), 0.5)


def draw_moles(canvas: Canvas, frame: FaceFrame, identity: IdentityParams) -> None:
    """Moles at face-relative positions, so they move with the face."""
    for across, down, radius in identity.moles:
        centre = frame.point(FACE_CENTER_X + across * identity.face_half_width,
                             identity.face_center_y + down * identity.face_half_height, DEPTH_MOUTH)  # fmt: skip
        canvas.ellipse(centre, (frame.width(radius), radius), MOLE_RGB)
