"""The teacher's outputs over the training set, computed once: distillation then reads them instead of running the teacher
per step (embeddings always; tokens where a feature loss taps them)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.artifacts import atomic_path
from pipeline.data.store import save_array
from pipeline.distill.batches import images_to_tensor
from pipeline.distill.objective import teacher_token_shapes
from pipeline.distill.teacher_signals import tap_index
from pipeline.errors import ConfigError
from pipeline.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


@torch.inference_mode()
def compute_teacher_signals(teacher: nn.Module, images: np.ndarray, spec: PreprocessSpec, embeddings_path: Path, token_paths: dict[str, Path], batch_size: int = 128) -> None:
    """One teacher pass over every image and its mirror; writes (N, 2, D) fp32 embeddings and (N, 2, T, C) fp16 tokens."""
    teacher.eval()
    count = len(images)
    if token_paths and not hasattr(teacher, "forward_tokens"):
        raise ConfigError(f"feature distillation taps teacher tokens, but the teacher {type(teacher).__name__} has no forward_tokens")
    embeddings = np.zeros((count, 2, teacher.embedding_dim), np.float32)
    with contextlib.ExitStack() as stack:
        token_arrays = {}
        for tap, path in token_paths.items():
            temp = stack.enter_context(atomic_path(path))
            grid_h, grid_w, channels = teacher_token_shapes(teacher)[tap]
            shape = (count, 2, grid_h * grid_w, channels)
            token_arrays[tap] = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float16, shape=shape)
        for start in tqdm(range(0, count, batch_size), desc="teacher signals", unit="batch"):
            rows = images[start : start + batch_size]
            for mirror in (0, 1):
                batch = images_to_tensor(np.ascontiguousarray(rows), np.full(len(rows), bool(mirror)), spec)
                if token_paths:
                    embedding, per_block = teacher.forward_tokens(batch)
                    for tap, array in token_arrays.items():
                        array[start : start + len(rows), mirror] = per_block[tap_index(tap)].numpy().astype(np.float16)
                else:
                    embedding = teacher(batch)
                embeddings[start : start + len(rows), mirror] = embedding.numpy()
        for tap in list(token_arrays):
            token_arrays.pop(tap).flush()  # close each memmap before its temp file is renamed into place
    save_array(embeddings_path, embeddings)
    log.info("distill: cached teacher embeddings %s%s", embeddings.shape, f" and tokens at {', '.join(token_paths)}" if token_paths else "")
