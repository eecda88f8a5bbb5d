"""Online augmentation of aligned training faces: geometry, colour, blur, JPEG and occlusion, per image.

Why: a short schedule sees each face a few times; fresh views make those passes worth more, and a distilling
teacher that embeds the same augmented view the student sees hands over how its embedding moves under pose,
lighting and compression, which a cache of the clean image cannot.

Every random choice of a row derives from the row's own seed, which the batch carries (drawn with the epoch's
order, `batches.epoch_batches`): a resumed run, or a data-parallel run that augments only its share of a batch,
augments each face exactly as an uninterrupted single-process run does.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import AugmentConfig

_DRAWS_PER_ROW = 16
_BLUR_KERNEL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def row_draws(seeds: np.ndarray) -> np.ndarray:
    """(N, 16) uniforms in [0, 1), row i from seed i alone."""
    return np.stack([np.random.default_rng(int(seed)).random(_DRAWS_PER_ROW) for seed in seeds]) if len(seeds) else np.zeros((0, _DRAWS_PER_ROW))


def augment_faces(images: np.ndarray, seeds: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB faces -> augmented uint8 faces of the same shape; row i depends on seeds[i] alone."""
    if len(images) == 0:
        return images
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return augment_pixels(pixels, seeds, config).permute(0, 2, 3, 1).contiguous().numpy()


def augment_pixels(pixels: torch.Tensor, seeds: np.ndarray, config: AugmentConfig) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB faces on any device -> augmented uint8 faces there (row i from seeds[i] alone).

    Why a tensor form: on a GPU the augmentation runs beside the model; on the host it took 0.35 s per batch of 256
    on 2 cores, a tenth of what the trainer reached on an H200 with it on the GPU (only JPEG re-encoding, when on,
    visits the host).
    """
    if len(pixels) == 0:
        return pixels
    draws = row_draws(seeds)
    signed = torch.from_numpy(draws * 2 - 1).float().to(pixels.device)  # in [-1, 1)
    uniform = torch.from_numpy(draws).float().to(pixels.device)
    augmented = _geometry(pixels.float(), signed, config)
    augmented = _colour(augmented, signed, uniform, config)
    augmented = augmented.round_().clamp_(0, 255).to(torch.uint8)
    _jpeg(augmented, draws, config)
    _occlude(augmented, draws, config)
    return augmented


def _geometry(pixels: torch.Tensor, signed: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """Zoom, rotation and shift as one affine warp (reflected borders, so no black wedges teach the network)."""
    if not (config.scale or config.rotate_degrees or config.shift):
        return pixels
    zoom = 1 + signed[:, 0] * config.scale
    angle = signed[:, 1] * math.radians(config.rotate_degrees)
    shift_x, shift_y = signed[:, 2] * config.shift * 2, signed[:, 3] * config.shift * 2  # grid units span 2 per side
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _colour(pixels: torch.Tensor, signed: torch.Tensor, uniform: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    rows = len(pixels)
    grey = pixels.mean(dim=1, keepdim=True)
    saturation = (1 + signed[:, 4] * config.saturation).view(rows, 1, 1, 1)
    pixels = grey + (pixels - grey) * saturation
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (1 + signed[:, 5] * config.contrast).view(rows, 1, 1, 1)
    brightness = (signed[:, 6] * config.brightness * 255).view(rows, 1, 1, 1)
    pixels = (pixels - mean) * contrast + mean + brightness
    to_grey = (uniform[:, 7] < config.grayscale_probability).view(rows, 1, 1, 1)
    pixels = torch.where(to_grey, pixels.mean(dim=1, keepdim=True).expand_as(pixels), pixels)
    blurred_rows = torch.nonzero(uniform[:, 8] < config.blur_probability).flatten()
    if len(blurred_rows):  # only the chosen rows: blurring every row doubled the augmentation's cost
        kernel = (_BLUR_KERNEL[:, None] * _BLUR_KERNEL[None, :]).expand(3, 1, 5, 5).contiguous().to(pixels.device)
        blurred = F.conv2d(F.pad(pixels[blurred_rows], (2, 2, 2, 2), mode="reflect"), kernel, groups=3)
        pixels = pixels.index_copy(0, blurred_rows, blurred)
    return pixels


def _jpeg(pixels: torch.Tensor, draws: np.ndarray, config: AugmentConfig) -> None:
    """Re-encode the chosen rows of (N, 3, H, W) uint8 faces as JPEG at a drawn quality, in place (cv2 works in BGR)."""
    low, high = config.jpeg_quality
    for row in np.flatnonzero(draws[:, 9] < config.jpeg_probability):
        quality = int(round(low + draws[row, 10] * (high - low)))
        face_bgr = pixels[row].flip(0).permute(1, 2, 0).contiguous().cpu().numpy()
        ok, encoded = cv2.imencode(".jpg", face_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            decoded = torch.from_numpy(cv2.imdecode(encoded, cv2.IMREAD_COLOR)).permute(2, 0, 1).flip(0)
            pixels[row] = decoded.to(pixels.device)


def _occlude(pixels: torch.Tensor, draws: np.ndarray, config: AugmentConfig) -> None:
    """A flat grey rectangle at a drawn place and size over the chosen rows of (N, 3, H, W) faces, in place."""
    height, width = pixels.shape[2:4]
    low, high = config.occlusion_size
    for row in np.flatnonzero(draws[:, 11] < config.occlusion_probability):
        box_h = max(1, int(round((low + draws[row, 12] * (high - low)) * height)))
        box_w = max(1, int(round((low + draws[row, 13] * (high - low)) * width)))
        top = int(draws[row, 14] * (height - box_h + 1))
        left = int(draws[row, 15] * (width - box_w + 1))
        pixels[row, :, top : top + box_h, left : left + box_w] = 128
