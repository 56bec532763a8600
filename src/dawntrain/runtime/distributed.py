"""torch.distributed under torchrun: one process per device, the same code path as one process.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them a run is a world of one and nothing
here touches torch.distributed. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import gc
import math
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from torch import nn

from dawntrain.errors import ConfigError, DawntrainError
from dawntrain.runtime.device import resolve_device


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @classmethod
    def single(cls, device: str = "auto") -> World:
        """One process, no process group: what a benchmark or a notebook builds a run for."""
        return cls(device=resolve_device(device))


class RankLost(DawntrainError):
    """Another rank died or stopped answering."""


class SharedStoreWarning(UserWarning):
    """torchrun restarts workers while sharing its rendezvous store with them."""


def shared_store_restarts() -> bool:
    """torchrun with --max-restarts > 0 that shares its rendezvous TCPStore with the workers
    (torch's default since 2.5): the restarted group can read the previous group's addresses
    from that store and fail to connect (pytorch/pytorch#135712)."""
    restarts = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return shared and restarts.isdigit() and int(restarts) > 0


def setup(device: str = "auto", timeout_s: float = 300.0) -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if rank == 0 and shared_store_restarts():
        warnings.warn(
            "torchrun --max-restarts shares its rendezvous store with the workers, and a "
            "restarted group can then fail to connect (pytorch/pytorch#135712); start torchrun "
            "with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/distributed.md)",
            SharedStoreWarning,
            stacklevel=2,
        )
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "start at most one process per GPU (--nproc_per_node)"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return World(rank, size, local_rank, dev)


def cleanup(world: World) -> None:
    if world.active and dist.is_initialized():
        # A DDP wrapper that only a reference cycle still holds (a plug-in that keeps the run in a
        # closure on it, say) would otherwise be freed at interpreter exit, where gloo can abort a
        # run that finished (SIGABRT, "terminate called without an active exception";
        # pytorch/pytorch#179291): free it now, while the interpreter is whole.
        gc.collect()
        dist.destroy_process_group()


MAX = dist.ReduceOp.MAX


def _grouped() -> bool:
    """Whether this process is in a process group (torchrun), which the collectives below need;
    without one each acts as on a single rank."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if _grouped():
        dist.all_reduce(tensor, op=op)
    return tensor


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor`, stacked in rank order (one process: `tensor[None]`)."""
    if not _grouped():
        return tensor[None].clone()
    rows = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, tensor.contiguous())
    return torch.stack(rows)


def all_gather_indexed(
    index: torch.Tensor, values: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (dataset positions `index`, `values` one row or number per position) of a
    step of the global `batch`, in rank order: one gather of a rank's largest share of the batch,
    padded, not of a whole per-image table. float64 carries the positions exactly."""
    size = dist.get_world_size() if _grouped() else 1
    most = -(-batch // size)
    flat = values.reshape(len(index), math.prod(values.shape[1:]))
    rows = torch.full((most, 1 + flat.shape[1]), -1.0, dtype=torch.float64, device=values.device)
    rows[: len(index), 0], rows[: len(index), 1:] = index, flat
    rows = all_gather(rows).flatten(0, 1)
    mine = rows[:, 0] >= 0
    gathered = rows[mine, 1:].to(values.dtype)
    return rows[mine, 0].long(), gathered.reshape(-1, *values.shape[1:])


def barrier() -> None:
    if _grouped():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if not _grouped():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class CrossRankBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch for any backend (torch's SyncBatchNorm needs CUDA).

    Two all-reduces with autograd (mean, then the centred second moment) give the same statistics
    one process computes on the whole batch, without the cancellation of E[x²] − E[x]².
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _grouped()):
            return super().forward(x)
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        total = dist_nn.all_reduce(torch.cat([xf.sum((0, 2, 3)), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = dist_nn.all_reduce((centred * centred).sum((0, 2, 3))) / n
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
            self.num_batches_tracked += 1
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def data_parallel(model: nn.Module, world: World) -> nn.Module:
    """`model` as a training step calls it in `world`: DDP when there are several ranks (its
    gradients averaged over them), the model itself in a world of one."""
    if not world.active:
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm2d layers → torch's SyncBatchNorm on CUDA, CrossRankBatchNorm elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            bn = CrossRankBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            bn.load_state_dict(child.state_dict())
            if child.affine:
                bn.weight.requires_grad_(child.weight.requires_grad)
                bn.bias.requires_grad_(child.bias.requires_grad)
            setattr(model, name, bn)
        else:
            convert_sync_batchnorm(child, device)
    return model
