"""Scale-out over the processes that `accelerate launch` (or torchrun) starts, through accelerate's Accelerator.

Every process samples its share of the answer batches, scores its share of
the held-out answers and, at every optimiser step, runs its share of the
trajectories in the global batch. The training module and its optimiser go
through `Accelerator.prepare`, so accelerate's engine keeps the copies in
step: DDP (the default of `accelerate launch --multi_gpu`, and the only one on
CPU processes), or FSDP / DeepSpeed ZeRO when `accelerate config` (or
`accelerate launch --config_file`) chooses them. Nothing here writes a
collective by hand; results are gathered with accelerate's `gather_object`.
The main process alone writes the output.

With one process (no WORLD_SIZE in the environment) nothing from accelerate is
touched: `prepare` and `backward` are the plain PyTorch calls.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch

from ..errors import BakingError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel processes, and the Accelerator that joins them."""

    rank: int = 0
    world: int = 1
    device: str | None = None
    """The device this process must use (cuda:LOCAL_RANK on GPUs), or None: use the configured one."""
    accelerator: Any = None
    """accelerate.Accelerator under a launcher with several processes; None in a single process."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def engine(self) -> str:
        """'single', or accelerate's distributed type: MULTI_CPU / MULTI_GPU (DDP), FSDP, DEEPSPEED..."""
        if self.accelerator is None:
            return "single"
        return str(self.accelerator.distributed_type).split(".")[-1]

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
        from accelerate.utils import gather_object

        return gather_object([obj])  # one item per process, concatenated in rank order

    def sum(self, value: float) -> float:
        """`value` summed over the processes (e.g. each process's share of a batch's loss)."""
        if not self.distributed:
            return value
        return float(sum(self.gather(value)))

    def prepare(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """(module, optimizer) wrapped by the launcher's engine (DDP, FSDP, DeepSpeed); unchanged in one process.

        Every call that needs gradients must then go through the returned module,
        so the engine's hooks (gradient all-reduce, parameter gathering) run.
        """
        if not self.distributed:
            return module, optimizer
        return self.accelerator.prepare(module, optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        if self.distributed:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    @property
    def sharded(self) -> bool:
        """The engine shards parameters (FSDP, DeepSpeed): saving and resuming need gathered weights."""
        return self.engine in ("FSDP", "DEEPSPEED")

    def full_params(self, module: torch.nn.Module):
        """Context in which the prepared `module`'s own (root) parameters are whole, for passes that do not
        go through its forward (held-out KL). FSDP2 wraps each decoder layer too, and those gather their
        own parameters when called; everywhere else this does nothing."""
        if self.engine != "FSDP":
            return contextlib.nullcontext()
        if hasattr(module, "unshard"):  # FSDP2 (fully_shard)
            return _Unsharded(module)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(module, writeback=False)

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()


SINGLE = Workers()


class _Unsharded:
    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.module.unshard()

    def __exit__(self, *exc):
        self.module.reshard()


def current(device: str = "auto") -> Workers:
    """The Workers of this process; starts accelerate's Accelerator (and its process group) under a launcher.

    CPU processes talk over gloo, GPU processes over NCCL (accelerate picks).
    Each GPU process gets its own card (cuda:LOCAL_RANK) when `device` is
    'auto' or 'cuda'. Our own --precision decides autocast, so accelerate's
    mixed precision stays off; we place the model ourselves.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    from accelerate import Accelerator

    cpu = device.startswith("cpu") or (device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=cpu, mixed_precision="no", device_placement=False)
    asked = [name for name, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(flag, "false").lower() == "true"]
    running = str(accelerator.distributed_type).split(".")[-1]
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if running == "DEEPSPEED" and getattr(plugin, "zero_stage", None) == 3:
        raise BakingError("DeepSpeed ZeRO stage 3 partitions the parameters, which the bake does not gather; "
                          "use ZeRO stage 1 or 2, or FSDP")
    if asked and running != asked[0]:
        # accelerate 1.15 turns FSDP and DeepSpeed on only for GPU-like processes; on CPU it would quietly
        # run plain DDP, holding the whole model in every process: not what the launch asked for.
        raise BakingError(f"the launch asked for {asked[0]}, but accelerate runs these processes as {running} "
                          f"(FSDP and DeepSpeed need GPUs); launch without the {asked[0]} config for DDP, or run "
                          "on GPUs")
    own_device = str(accelerator.device) if device in ("auto", "cuda") else None
    return Workers(rank=accelerator.process_index, world=accelerator.num_processes, device=own_device,
                   accelerator=accelerator)
