"""``torch.distributed`` as the library and the driver use it: which process this is, the few
collectives they need, and how a process joins the group that ``torchrun`` describes.

One process per device, launched by ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``)::

    device = init_from_environment("cuda")     # NCCL on cuda:LOCAL_RANK; "cpu": gloo
    part = shard_batches(len(dataset), 8)      # this rank's share of the dataset's batches
    scores = gather_objects(local_scores)      # every rank's, in rank order

Without a process group every function here answers for a single process (rank 0 of 1) and the
collectives return their input, so code written for many processes runs unchanged in one.

Every collective has a timeout (``UAAL_COLLECTIVE_TIMEOUT`` seconds, default 1800): the group is
created with it, and the barrier of a gloo group is :func:`torch.distributed.monitored_barrier`,
which names the rank that did not arrive. A rank that crashed or never started makes the others
raise instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "LAUNCH_VARIABLES",
    "DistributedLaunchError",
    "is_distributed",
    "world_size",
    "rank",
    "is_main_process",
    "launched",
    "collective_timeout",
    "init_from_environment",
    "collective_device",
    "all_reduce_sum",
    "gather_objects",
    "broadcast_object",
    "barrier",
    "shutdown",
    "shard_batches",
    "batch_numbers",
    "describe",
]

#: What a launcher (torchrun, Slurm's srun with the usual exports) sets for every process.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_DEFAULT_TIMEOUT_SECONDS = 1800.0


class DistributedLaunchError(RuntimeError):
    """The processes were launched in a way the run cannot use (a rank without a device, a bad
    environment); the message says what to change."""


def is_distributed() -> bool:
    """Whether this process belongs to an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Whether this process is rank 0: the one that writes files and shows progress."""
    return rank() == 0


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` set and > 1, or
    ``RANK`` set): then :func:`init_from_environment` joins the group."""
    return "RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def collective_timeout() -> datetime.timedelta:
    """How long any collective may wait: ``UAAL_COLLECTIVE_TIMEOUT`` seconds, default 30 minutes
    (a long pool scoring on one rank is waited for; a dead rank is not waited for forever)."""
    text = os.environ.get("UAAL_COLLECTIVE_TIMEOUT", "")
    try:
        seconds = float(text) if text else _DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise DistributedLaunchError(f"UAAL_COLLECTIVE_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def _environment_int(name: str) -> int:
    text = os.environ.get(name)
    if text is None:
        missing = [key for key in LAUNCH_VARIABLES if key not in os.environ]
        raise DistributedLaunchError(
            f"this process was launched as one of several but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; launch with torchrun (it sets {', '.join(LAUNCH_VARIABLES)})"
        )
    try:
        return int(text)
    except ValueError:
        raise DistributedLaunchError(f"the launcher set {name}={text!r}, which is not an integer") from None


def init_from_environment(device: str | torch.device = "cpu") -> torch.device:
    """Joins the process group the launcher describes and returns this rank's device.

    ``device``'s type picks the backend: ``"cuda"`` uses NCCL and the GPU ``LOCAL_RANK`` (which must
    exist on this node), ``"cpu"`` uses gloo. Without a launcher (:func:`launched` is False), or when
    the group exists already, nothing is initialized and the device is returned as given (a CUDA
    device without an index then means ``cuda:LOCAL_RANK``).

    Raises:
        DistributedLaunchError: a launch variable is missing or not an integer, or this rank has no
            device (no CUDA, or ``LOCAL_RANK`` beyond the node's GPUs).
    """
    device = torch.device(device)
    if not launched() and not is_distributed():
        return device
    local_rank = _environment_int("LOCAL_RANK")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is None and local_rank >= count:
            raise DistributedLaunchError(
                f"rank {os.environ.get('RANK')} (LOCAL_RANK={local_rank}) has no CUDA device: this node has {count}; "
                f"launch at most {count} processes per node (torchrun --nproc_per_node), or train on 'cpu' (gloo)"
            )
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)  # NCCL and all_gather_object use the current device
    if not is_distributed():
        for name in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
            _environment_int(name)  # a clear error before torch's
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=collective_timeout(),
            device_id=device if device.type == "cuda" else None,
        )
    return device


def collective_device() -> torch.device:
    """Where the group's collectives take tensors: this rank's GPU for NCCL, the CPU for gloo."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over the ranks, as a new tensor on ``tensor``'s device (the input is
    left as it is; it may live on any device, it travels through :func:`collective_device`)."""
    if not is_distributed() or world_size() == 1:
        return tensor
    total = tensor.detach().to(collective_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` without a group."""
    if not is_distributed() or world_size() == 1:
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value: Any, source: int = 0) -> Any:
    """Rank ``source``'s ``value`` on every rank (the others' ``value`` is ignored)."""
    if not is_distributed() or world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def barrier() -> None:
    """Waits until every rank arrives, for at most :func:`collective_timeout`; a gloo group names
    the ranks that did not arrive."""
    if not is_distributed() or world_size() == 1:
        return
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=collective_timeout())
    else:
        dist.barrier()


def shutdown() -> None:
    """Leaves the process group cleanly: waits for every rank, then destroys the group. A process
    that exits with the group alive can abort in its teardown while another rank still talks to it."""
    if not is_distributed():
        return
    barrier()
    dist.destroy_process_group()


def shard_batches(num_items: int, batch_size: int) -> list[list[int]]:
    """This rank's batches of items ``0 .. num_items - 1``: the batches of ``batch_size`` that one
    process would make in order, every ``world_size``-th of them from the ``rank``-th.

    Sharding whole batches keeps each image in the batch it has in one process, so per-image results
    of a batched forward are bit-identical to the single-process ones, and a batch's number (for keyed
    randomness) is the same too: see :func:`batch_numbers`.
    """
    return [
        list(range(b * batch_size, min((b + 1) * batch_size, num_items))) for b in batch_numbers(num_items, batch_size)
    ]


def batch_numbers(num_items: int, batch_size: int) -> list[int]:
    """The single-process position of each batch :func:`shard_batches` gives this rank."""
    return list(range(rank(), -(-num_items // batch_size), world_size()))


def describe() -> dict[str, Any]:
    """World size, rank, backend and device of this process, for ``uaal info`` and logs."""
    if not is_distributed():
        return {"world_size": 1, "rank": 0, "backend": None, "launched": launched()}
    return {"world_size": world_size(), "rank": rank(), "backend": dist.get_backend(), "launched": True}
