"""Data parallelism over the processes that `accelerate launch` (or torchrun) starts.

Baking is data parallel. Every process holds the whole model: the frozen base
is only read, and the LoRA adapter and its optimiser state are small. Each
process samples its share of the answer batches, scores its share of the
held-out answers and, at every optimiser step, runs its share of the
trajectories in the global batch. The LoRA gradients are then summed over the
processes, so every copy takes the same step and the copies stay identical.
The main process alone writes the output.

With one process (no WORLD_SIZE in the environment) everything here is a no-op,
and nothing from accelerate or torch.distributed is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    world: int = 1
    device: str | None = None
    """The device this process must use (cuda:LOCAL_RANK on GPUs), or None: use the configured one."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share: every world-th item, starting at its rank."""
        return list(items[self.rank::self.world])

    def map(self, fn: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
        """fn over this process's shard, results from all processes put back in the order of `items`.

        `fn` must return one result per item of its shard.
        """
        mine = fn(self.shard(items))
        if not self.distributed:
            return mine
        pieces = self.gather(mine)
        return [pieces[i % self.world][i // self.world] for i in range(len(items))]

    def gather(self, obj):
        """Every process's `obj`, as a list in rank order (picklable objects)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum `tensors` over the processes, in place, as one flat all-reduce."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


SINGLE = Workers()


def current(device: str = "auto") -> Workers:
    """The Workers of this process; starts the process group on first use under a launcher.

    CPU processes talk over gloo, GPU processes over NCCL (accelerate picks).
    Each GPU process gets its own card (cuda:LOCAL_RANK) when `device` is
    'auto' or 'cuda'.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    from accelerate import PartialState

    cpu = device.startswith("cpu") or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    own_device = str(state.device) if device in ("auto", "cuda") else None
    return Workers(rank=state.process_index, world=state.num_processes, device=own_device)
