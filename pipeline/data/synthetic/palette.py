"""Colours: the palettes identities and backgrounds draw from, and the small helpers every drawing module shares."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

RGB = tuple[float, float, float]  # a colour as cv2 drawing calls take it

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
MAX_BACKGROUND_SATURATION = 0.6


def clip_rgb(values: Iterable[float]) -> RGB:
    """Clip to the displayable range and freeze as a tuple (what cv2 drawing calls take)."""
    r, g, b = (min(max(float(v), 0.0), 255.0) for v in values)
    return (r, g, b)


def shade(rgb: RGB, factor: float) -> RGB:
    """Same hue, brighter or darker: the cheap stand-in for shading."""
    return clip_rgb(np.asarray(rgb) * factor)


def pick_colour(rng: np.random.Generator, palette: np.ndarray, weights: np.ndarray, jitter: float) -> np.ndarray:
    """A palette colour with a little per-identity variation, so no two people share an exact shade."""
    base = palette[rng.choice(len(palette), p=weights / weights.sum())]
    return base + rng.normal(0.0, jitter, 3)


def sample_skin(rng: np.random.Generator) -> np.ndarray:
    """Skin tone along a light-dark axis plus a warm/cool undertone."""
    darkness = rng.beta(1.4, 1.6)
    undertone = rng.normal(0.0, 7.0) * np.array([1.0, 0.2, -0.8])
    return (1 - darkness) * SKIN_LIGHTEST + darkness * SKIN_DARKEST + undertone + rng.normal(0.0, 3.0, 3)


def background_colour(rng: np.random.Generator) -> RGB:
    """A muted wall/sky/room colour: a grey level tinted by a random hue."""
    grey = rng.uniform(25.0, 230.0)
    tint = rng.uniform(0.0, 255.0, 3)
    saturation = rng.uniform(0.0, MAX_BACKGROUND_SATURATION)
    return clip_rgb(grey * (1.0 - saturation) + tint * saturation)
