"""Data-parallel training under torchrun: which rank this process is, and the few collectives the pipeline needs.

`torchrun --nproc_per_node N -m pipeline run ...` starts N copies of the CLI. Every rank derives the same global
batch from (seed, epoch) (see `batches.epoch_batches`) and trains on its slice rows[rank::N] inside
DistributedDataParallel, so the gradient is the mean over the global batch, as in a single-process run with that
batch size: the distributed sampler is that slicing, with nothing to save for resume. Only rank 0 writes
artifacts and checkpoints; the others read rank 0's checkpoint to resume. NCCL on GPUs, gloo on CPU.
BatchNorm statistics are per rank unless `sync_batchnorm` is on: then `CrossRankBatchNorm` all-reduces each
layer's sums over ranks (torch's own SyncBatchNorm refuses CPU tensors), so a run on N ranks normalises exactly as
one process with the global batch does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; the default is a single process on the CPU (or the one GPU)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_rows(self, rows: np.ndarray) -> np.ndarray:
        """This rank's slice of a global batch."""
        return rows[self.rank :: self.world_size]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_from_main(self, value: object) -> object:
        """Rank 0's `value` on every rank (decisions such as "this stage is cached" must agree)."""
        if not self.enabled:
            return value
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when any rank's `flag` is true (a stop signal seen by one rank stops all)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of a (detached) tensor over ranks: losses logged as the global batch's, as a single process would."""
        if not self.enabled:
            return values
        values = values.detach().clone().to(self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size


_CURRENT = Distributed(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))


def current() -> Distributed:
    """The context `init_from_environment` set up, or a single process."""
    return _CURRENT


def init_from_environment() -> Distributed:
    """Join the torchrun job described by RANK/WORLD_SIZE/LOCAL_RANK (a no-op outside torchrun)."""
    global _CURRENT
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _CURRENT
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as error:
        raise PipelineError(f"WORLD_SIZE={world_size} but RANK/LOCAL_RANK are missing or not integers: {error}") from error
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _CURRENT = Distributed(rank, world_size, device)
    log.info("rank %d of %d on %s (%s)", rank, world_size, device, backend)
    return _CURRENT


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch: per-channel sum, sum of squares and count all-reduced with autograd.

    Normalises with the biased variance and updates running statistics with the unbiased one, as BatchNorm does
    on one process; outside distributed training it is plain BatchNorm.
    """

    def __init__(self, *args, plain_class: type[nn.Module] = nn.BatchNorm2d, **kwargs):
        super().__init__(*args, **kwargs)
        self.plain_class = plain_class

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = x.new_tensor([x.numel() // channels], dtype=x.dtype)
        totals = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        total = totals[-1]
        mean = totals[:channels] / total
        variance = totals[channels : 2 * channels] / total - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                self.num_batches_tracked.add_(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * variance * total / (total - 1))
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _swap_batchnorms(module: nn.Module, to_cross_rank: bool) -> None:
    for name, child in module.named_children():
        if to_cross_rank and isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d) and not isinstance(child, CrossRankBatchNorm):
            swapped = CrossRankBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats, plain_class=type(child))
        elif not to_cross_rank and isinstance(child, CrossRankBatchNorm):
            swapped = child.plain_class(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
        else:
            _swap_batchnorms(child, to_cross_rank)
            continue
        swapped.load_state_dict(child.state_dict())
        swapped.to(next(child.buffers(), torch.empty(0)).device)
        setattr(module, name, swapped)


def sync_batchnorms(module: nn.Module) -> None:
    """Make every BatchNorm1d/2d in `module` a `CrossRankBatchNorm`, in place (same statistics and weights)."""
    _swap_batchnorms(module, to_cross_rank=True)


def unsync_batchnorms(module: nn.Module) -> None:
    """Undo `sync_batchnorms` in place, so the trained model saves and exports as plain BatchNorm."""
    _swap_batchnorms(module, to_cross_rank=False)
