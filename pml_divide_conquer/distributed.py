"""torch.distributed glue: which rank we are, gathering shards, broadcasting assignments, agreeing on learners.

Every function is a no-op (or the identity) when torch.distributed is not initialised, so single-process code
paths stay the same.
"""

import numpy as np
import torch
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size_and_rank():
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class Replicas:
    """The processes a sampler serves: the world size and rank as given, else torch.distributed's, read each time
    (so that an object built before ``init_process_group`` follows the processes started later)."""

    def __init__(self, world=None, rank=None):
        self.given = (None if world is None else int(world), None if rank is None else int(rank))

    @property
    def world(self):
        return self.given[0] if self.given[0] is not None else world_size_and_rank()[0]

    @property
    def rank(self):
        return self.given[1] if self.given[1] is not None else world_size_and_rank()[1]

    def check(self, what, error=RuntimeError):
        """Raise ``error`` if this process is not the rank (of the world size) ``what`` was built for."""
        world, rank = world_size_and_rank()
        if (self.world, self.rank) != (world, rank):
            raise error(
                f"{what} was built for rank {self.rank} of {self.world}, but this process is rank {rank} of {world}: "
                "build it after torch.distributed.init_process_group()"
            )


def collective_device():
    # nccl moves CUDA tensors only; gloo moves CPU tensors
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_indices(n, world_size, rank):
    """Rank ``rank``'s share of ``range(n)``: every ``world_size``-th index (disjoint, covering, no padding)."""
    return np.arange(rank, n, world_size)


def gather_shards(local, n):
    """Reassemble rows embedded by each rank (rank r holds rows ``shard_indices(n, W, r)``) on every rank."""
    if not is_distributed():
        return local
    world, _ = world_size_and_rank()
    device = collective_device()
    local_t = torch.as_tensor(local).to(device)
    # a rank whose shard is empty (fewer samples than ranks) cannot know the row size: take the largest
    width = torch.tensor([int(np.prod(local_t.shape[1:])) if len(local_t) else -1], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    if len(local_t) == 0 and local_t.dim() == 2 and int(width) >= 0:
        local_t = local_t.new_zeros((0, int(width)))
    max_rows = len(shard_indices(n, world, 0))
    padded = torch.zeros((max_rows,) + tuple(local_t.shape[1:]), dtype=local_t.dtype, device=device)
    padded[: len(local_t)] = local_t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = np.empty((n,) + tuple(local_t.shape[1:]), dtype=np.asarray(local).dtype)  # (the gathered row size)
    for r, part in enumerate(parts):
        idx = shard_indices(n, world, r)
        out[idx] = part[: len(idx)].cpu().numpy()
    return out


def broadcast_array(array, src=0):
    """Rank ``src``'s int64 array, on every rank (the others pass an array of the same shape)."""
    if not is_distributed():
        return array
    t = torch.as_tensor(np.ascontiguousarray(array, dtype=np.int64)).to(collective_device())
    dist.broadcast(t, src=src)
    return t.cpu().numpy()


def max_over_ranks(values):
    """The element-wise maximum of ``values`` (a few ints) over the ranks (``values`` itself without DDP): what one
    rank found, known to every rank, so that all raise together rather than one raising while the others wait."""
    if not is_distributed():
        return list(values)
    t = torch.as_tensor(values, dtype=torch.long, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def check_same_on_all_ranks(values, what):
    """Raise if ``values`` (a few ints) differ between ranks."""
    if not is_distributed():
        return
    world, rank = world_size_and_rank()
    t = torch.as_tensor(values, dtype=torch.long, device=collective_device())
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    seen = [p.cpu().tolist() for p in parts]
    if any(s != seen[0] for s in seen):
        raise RuntimeError(
            f"{what} differs across ranks: {seen}. Every rank must use the same ClusterSampler seed, labels and "
            "batch size, and take the same end-of-epoch steps."
        )


def all_gather_varying(local):
    """The concatenation over ranks of 1-D int64 arrays of different lengths (``local`` itself in one process)."""
    local = np.asarray(local, dtype=np.int64)
    if not is_distributed():
        return local
    world, _ = world_size_and_rank()
    device = collective_device()
    size = torch.tensor([len(local)], device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(x) for x in sizes]
    padded = torch.zeros(max(sizes), dtype=torch.long, device=device)
    padded[: len(local)] = torch.as_tensor(local, device=device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, sizes)])
