"""Helpers for data-parallel and sharded (FSDP2 / DTensor) training with the ECD optimizers.

ECD keeps ONE energy for the whole model, computed from the loss. Under data parallelism the
optimizer itself averages the loss over the process group (``reduce_loss``, see
:class:`ecdopt.ECD`) and makes every replica draw the same bounce directions, so DDP replicas
stay bit-identical. This module holds what is needed beyond that (docs/distributed.md):

- :func:`sum_of_squares` — Σx² over tensors that may be DTensors (FSDP2's ``fully_shard``
  parameters): the local shards' sums, all-reduced over the mesh dimensions the tensor is
  sharded along, so that Π² and |Θ|² are the *global* sums;
- :func:`shard_like` — cut a full tensor drawn identically on every rank (a bounce direction ξ)
  into the local shard of a DTensor, without communication;
- :func:`replica_divergence` — the largest difference between a rank's parameters and rank 0's
  (0.0 means bit-identical replicas), to check a run;
- :func:`free_port` — a free TCP port on 127.0.0.1 for a local process group.

Nothing here is imported by ``import ecdopt``; it loads ``torch.distributed`` only when used.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "free_port",
    "is_dtensor",
    "local_tensor",
    "replica_divergence",
    "shard_like",
    "sum_of_squares",
]


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (e.g. an FSDP2 parameter)."""
    if not isinstance(tensor, Tensor) or type(tensor) is Tensor:
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(tensor, DTensor)


def local_tensor(tensor: Tensor) -> Tensor:
    """The part of ``tensor`` stored on this rank: ``to_local()`` of a DTensor, else itself.

    For a ``torch.nn.Parameter`` wrapping a DTensor the result shares storage with it, so
    in-place updates of the local shard update the parameter.
    """
    return tensor.to_local() if is_dtensor(tensor) else tensor


def _local_sum_of_squares(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """Σx² of local tensors, accumulated in float64 (as ``ecdopt._kernels.sum_of_squares``)."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for t in tensors:
        if t.numel() == 0:  # an empty shard (uneven sharding) adds nothing
            continue
        (square,) = torch._foreach_powsum([t], 2, dtype=torch.float64)
        total = total + square.to(device=device)
    return total


def _shard_groups(tensor: Tensor) -> tuple[Any, tuple[int, ...]]:
    """(mesh, mesh dims along which ``tensor`` is sharded) of a DTensor."""
    from torch.distributed.tensor import Partial, Shard

    dims = []
    for dim, placement in enumerate(tensor.placements):
        if isinstance(placement, Shard):
            dims.append(dim)
        elif isinstance(placement, Partial):
            raise ValueError(
                "a DTensor with a Partial placement has no well-defined sum of squares; "
                "redistribute it to Shard or Replicate first"
            )
    return tensor.device_mesh, tuple(dims)


def sum_of_squares(tensors: Iterable[Tensor], device: torch.device | str) -> Tensor:
    """Σ over all tensors of Σx², as a float64 0-dim tensor on ``device``, global over shards.

    Plain tensors are summed locally (under DDP every replica holds all of them). DTensors
    contribute their local shard, and the partial sums are all-reduced (SUM) over the process
    groups of the mesh dimensions they are sharded along (one all-reduce per distinct mesh and
    set of dimensions; FSDP2 on a 1-D mesh: one). Replicated mesh dimensions are not summed, so
    HSDP (replicate × shard) counts every element once. Every rank of those groups must call
    this with the same DTensors (it is a collective when any DTensor is sharded).
    """
    device = torch.device(device)
    plain: list[Tensor] = []
    buckets: dict[tuple[int, tuple[int, ...]], tuple[Any, list[Tensor]]] = {}
    for t in tensors:
        if is_dtensor(t):
            mesh, dims = _shard_groups(t)
            key = (id(mesh), dims)
            buckets.setdefault(key, (mesh, []))[1].append(t.to_local())
        else:
            plain.append(t)
    total = _local_sum_of_squares(plain, device)
    for (_, dims), (mesh, locals_) in buckets.items():
        partial = _local_sum_of_squares(locals_, device)
        if dims:
            import torch.distributed as dist

            for dim in dims:  # sharded along several mesh dims (2-D sharding): reduce each
                group = mesh.get_group(dim)
                partial = partial.to(_collective_device(group, device))
                dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=group)
            partial = partial.to(device)
        total = total + partial
    return total


def _collective_device(group: Any, device: torch.device) -> torch.device:
    """The device a collective on ``group`` runs on: CPU for gloo, the accelerator for NCCL."""
    import torch.distributed as dist

    backend = str(dist.get_backend(group)).lower()
    return torch.device("cpu") if "gloo" in backend and "nccl" not in backend else device


def shard_like(full: Tensor, like: Tensor) -> Tensor:
    """``full`` (the global shape of ``like``, identical on every rank) as ``like`` is laid out.

    For a DTensor ``like`` this returns a DTensor with the same mesh and placements whose local
    shard is this rank's slice of ``full`` — no communication (every rank drew the same
    ``full`` from the same generator state). For a plain tensor it returns ``full``. This is how
    a bounce direction ξ is drawn so that a sharded run bounces exactly as the unsharded one.
    """
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"full has shape {tuple(full.shape)}, like {tuple(like.shape)}")
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def replica_divergence(params: Iterable[Tensor], group: Any = None) -> float:
    """max |p − p on rank 0| over all parameters and ranks of ``group`` (0.0: bit-identical).

    Collective: every rank of ``group`` must call it; all get the same value. DTensors are
    compared shard by shard (their local parts). Without an initialized process group it
    returns 0.0.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    locals_ = [local_tensor(p).detach() for p in params]
    if not locals_:
        return 0.0
    device = locals_[0].device
    dev = _collective_device(group, device)
    flat = torch.cat([t.reshape(-1).to(dev, torch.float64) for t in locals_])
    reference = flat.clone()
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast(reference, src=src, group=group)
    gap = (flat - reference).abs().max() if flat.numel() else flat.new_zeros(())
    # NaN compares as "different": report +inf rather than hide it
    gap = torch.where(torch.isnan(gap), torch.full_like(gap, float("inf")), gap)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX, group=group)
    return float(gap)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now (for ``MASTER_PORT`` of a local group).

    Another process may take it between this call and its use: retry on "address in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
