"""Where a feature-map pixel lies on the aligned face, and how far apart two face points are: the geometry URFM's
attention is biased by.

Why a module of its own: both URFM variants place pixels of grids of any size on one face (`grid_positions`), and the
published URFM (`urfm.py`) buckets pairs of face points by iRPE's piecewise index of a distance that adds a
facial-structure term to the Euclidean one (`bucket_ids`). Positions are (y, x) in face coordinates [0, 1].

The facial-structure distance (the paper defines it only in its figures; this is the definition used here):
- Regions: the 5 points of insightface's 112x112 ArcFace template (the two eye centres, the nose tip, the two mouth
  corners) each own the face points nearer to it than to any other landmark and within `face_radius` of it
  (a fraction of the face side; default 0.15, about 17 pixels, just under half the 35-pixel eye distance); every
  other point belongs to a sixth region, "rest of the face".
- Each region has an anchor: its landmark; the rest's anchor is the centroid of the five landmarks.
- D_face(a, b) = 0 when a and b lie in the same region, else the Euclidean distance between the two regions' anchors.
  So two points of one eye are structurally close however the grid falls, and a point of the eye and one of the
  mouth are far apart even where their pixel distance is small.
- D(a, b) = |a - b| + gamma * D_face(a, b), both measured in `distance_unit` (default 1/14 of the face side: iRPE's
  DeiT setting is a 14x14 token grid, so its piecewise parameters keep their meaning). gamma = 0 is iRPE's
  Euclidean method.
"""

from __future__ import annotations

import math

import torch

from pipeline.align.transform import ARCFACE_TEMPLATE_112
from pipeline.errors import ConfigError

FACE_LANDMARKS = torch.tensor(ARCFACE_TEMPLATE_112[:, ::-1].copy() / 112.0, dtype=torch.float32)
"""(5, 2) (y, x) ArcFace template points in face coordinates: eyes, nose tip, mouth corners."""
REST_OF_FACE = len(FACE_LANDMARKS)  # the region index of points near no landmark
REGION_ANCHORS = torch.cat([FACE_LANDMARKS, FACE_LANDMARKS.mean(dim=0, keepdim=True)])


def grid_positions(height: int, width: int, extent: float = 1.0) -> torch.Tensor:
    """(height*width, 2) (y, x) centres of a feature map's pixels, in face coordinates [0, 1].

    `extent` is the fraction of the face side the grid spans from the top-left corner (arcface_torch's patch-9 ViT
    tiles only 108 of 112 pixels: extent 108/112).
    """
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * extent
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * extent
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)


def euclidean_distance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(P, Q) distances between (P, 2) and (Q, 2) face points, computed directly (the matrix-product shortcut of
    `torch.cdist` moves values across bucket boundaries)."""
    return torch.cdist(first.float(), second.float(), compute_mode="donot_use_mm_for_euclid_dist")


def facial_regions(positions: torch.Tensor, face_radius: float = 0.15) -> torch.Tensor:
    """(P,) region index of each (P, 2) face point: the nearest template landmark within `face_radius`, else
    `REST_OF_FACE`."""
    distances = euclidean_distance(positions, FACE_LANDMARKS)
    nearest, region = distances.min(dim=1)
    return torch.where(nearest <= face_radius, region, torch.full_like(region, REST_OF_FACE))


def facial_distance(first: torch.Tensor, second: torch.Tensor, face_radius: float = 0.15) -> torch.Tensor:
    """(P, Q) facial-structure distance D_face between (P, 2) and (Q, 2) face points, in face-side units (module
    docstring): 0 within one region, else the distance between the regions' anchors."""
    first_region, second_region = facial_regions(first, face_radius), facial_regions(second, face_radius)
    between = euclidean_distance(REGION_ANCHORS[first_region], REGION_ANCHORS[second_region])
    return torch.where(first_region[:, None] == second_region[None, :], torch.zeros_like(between), between)


def piecewise_index(distance: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """iRPE's piecewise index function g (Wu et al., ICCV 2021, eq. 18) of non-negative distances: exact (rounded)
    up to `alpha`, logarithmic from `alpha` to `gamma`, capped at int(`beta`) (iRPE's bucket count is int(beta) + 1)."""
    if not 0 < alpha < beta < gamma:
        raise ConfigError(f"urfm: iRPE's piecewise index needs 0 < alpha < beta < gamma, got {alpha}, {beta}, {gamma}")
    near = distance.round()
    far = (alpha + torch.log(distance.clamp(min=alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)).round()
    return torch.where(distance <= alpha, near, far).clamp(max=int(beta)).long()


def bucket_ids(anchors: torch.Tensor, positions: torch.Tensor, gamma: float, alpha: float = 3.8, beta: float = 7.6,
               irpe_gamma: float = 30.4, face_radius: float = 0.15, distance_unit: float = 1 / 14) -> torch.Tensor:
    """(L, P) bucket of every (anchor, pixel) pair: iRPE's piecewise index of |a - p| + gamma * D_face(a, p).

    The default alpha:beta:gamma is iRPE's 1:2:8 at ratio 3.8 (twice its DeiT ratio, so the face diagonal spreads over
    int(beta) + 1 = 8 buckets instead of 4).
    """
    euclidean = euclidean_distance(anchors, positions)
    distance = (euclidean + gamma * facial_distance(anchors, positions, face_radius)) / distance_unit
    return piecewise_index(distance, alpha, beta, irpe_gamma)


def bucket_count(beta: float) -> int:
    """How many distance buckets `piecewise_index` fills: 0 .. int(beta)."""
    return int(beta) + 1
