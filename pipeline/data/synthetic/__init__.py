"""Synthetic face identities: the project's default data set, drawn procedurally so nothing has to be downloaded.

No image here shows a real person. In the spirit of DigiFace-1M, each identity is a fixed draw of facial geometry
and appearance (face oval, skin tone, eyes, brows, nose, mouth, hair, ears, facial hair, moles, glasses), and each
image shows that identity under per-image nuisance (pose, expression, lighting, background, blur, sensor noise,
JPEG compression, occlusion). Faces are drawn in the ArcFace 112x112 five-point aligned layout, so they go through
the same code paths as real aligned crops. Identity is learnable from the face; raw pixels are a poor matcher.

Every array is a pure function of (seed, identity id, image index) through numpy Generators, so the output is
byte-identical whatever the generation order or the number of OpenCV threads.

Modules, each with one job: template (the ArcFace layout), palette (colours), seeds (seed streams), identity (one
person's traits), nuisance (one image's draws), canvas (drawing in template units), head and features (the face),
occluders, capture (backdrop, crop, light, camera), render (one image), dataset (training set, pairs, preview).
"""

from pipeline.data.synthetic.dataset import (
    MIN_IMAGE_SIZE,
    VERIFICATION_PAIRS_NAME,
    generate_dataset,
    generate_training_set,
    generate_verification_pairs,
    preview_grid,
    sample_pair_indices,
    train_identity_ids,
    verification_identity_ids,
)
from pipeline.data.synthetic.identity import IdentityParams, sample_identity
from pipeline.data.synthetic.nuisance import ImageNuisance, sample_nuisance
from pipeline.data.synthetic.render import render_face, render_identity_images
from pipeline.data.synthetic.seeds import VERIFICATION_ID_OFFSET, identity_image_seed
from pipeline.data.synthetic.template import ARCFACE_LANDMARKS_112, TEMPLATE_SIZE

__all__ = [
    "ARCFACE_LANDMARKS_112",
    "MIN_IMAGE_SIZE",
    "TEMPLATE_SIZE",
    "VERIFICATION_ID_OFFSET",
    "VERIFICATION_PAIRS_NAME",
    "IdentityParams",
    "ImageNuisance",
    "generate_dataset",
    "generate_training_set",
    "generate_verification_pairs",
    "identity_image_seed",
    "preview_grid",
    "render_face",
    "render_identity_images",
    "sample_identity",
    "sample_nuisance",
    "sample_pair_indices",
    "train_identity_ids",
    "verification_identity_ids",
]
