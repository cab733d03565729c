"""Torch's CPU threads: as many as the cores that other processes leave free, chosen once per command.

torch runs one OpenMP thread per core, and each parallel region (every matmul, every elementwise op of a
step) waits for its slowest thread. When another process keeps a core busy, one of our
threads waits for the scheduler in every region, thousands of times a step: on this 2-core machine a
training step of the default bake took 60 s on 2 threads next to busy processes, 11.5 s on one thread,
2.7 s idle (docs/performance.md, "A training step next to a busy process"). A niced neighbour counts as
busy too: it yields its core to a long training step, but decoding's tiny parallel regions still wait for it
(drift conversations ran at 40-70 s a turn on 2 threads next to a nice-19 job, against about 6 s alone).

The count is chosen once, when a command starts, and is not moved as neighbours come and go: bf16
results depend on the thread count (the matmul kernels split their sums by thread), so a count that
followed the load would make two runs of the same bake differ. baking.json records the count
(environment.torch_threads); `LM_EVAL_BAKING_THREADS=N`, or OMP_NUM_THREADS, pins it.
"""

from __future__ import annotations

import os

from ..constants import THREADS_ENV
from ..errors import BakingError

# Variables with which a user (or `accelerate launch`, or our test runner) already chose a count.
PINNING_ENV = (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SAMPLE_SECONDS = 0.3
# What psutil.cpu_times_percent counts as a core's busy time (idle, iowait and steal are not).
BUSY_KINDS = ("user", "nice", "system", "irq", "softirq")
IDLE_KINDS = ("idle", "iowait", "steal")


def pinned_threads() -> int | None:
    """The count the environment pins: LM_EVAL_BAKING_THREADS first, then OpenMP's and MKL's variables."""
    for name in PINNING_ENV:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        if not value.isdigit() or int(value) < 1:
            if name == THREADS_ENV:
                raise BakingError(f"{THREADS_ENV}={value!r} is not a thread count; set a whole number of at least "
                                  f"1, or unset it to use the cores other processes leave free")
            return None  # torch reads OpenMP's own syntax (e.g. "4,2"); leave it to torch
        return int(value)
    return None


def usable_cores() -> list[int]:
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        return list(range(os.cpu_count() or 1))


def busy_cores(cores: list[int], seconds: float = SAMPLE_SECONDS) -> float:
    """Cores of `cores` that other processes keep busy, niced or not, over `seconds` while we sleep.

    This process's own CPU time in the interval is taken off: OpenMP's worker threads spin for a while after
    a parallel region, and a loader may still be at work in a thread, which is not a neighbour.
    """
    import psutil

    me = psutil.Process()
    before = me.cpu_times()
    samples = psutil.cpu_times_percent(interval=seconds, percpu=True)
    after = me.cpu_times()
    busy = 0.0
    for core in cores:
        if core < len(samples):
            t = samples[core]
            # A share of the core's own total, not of 100: over a short sample the kinds need not add up to
            # 100 (a firecracker guest read idle 30% and 0 for the rest on an idle machine, user 30% on a busy
            # one, at 0.3 s).
            working = sum(getattr(t, kind, 0.0) for kind in BUSY_KINDS)
            total = working + sum(getattr(t, kind, 0.0) for kind in IDLE_KINDS)
            busy += working / total if total > 0 else 0.0
    own = (after.user - before.user + after.system - before.system) / seconds if seconds > 0 else 0.0
    return max(0.0, busy - own)


def threads_for_free_cores(cores: list[int] | None = None, busy: float | None = None) -> int:
    """One thread per core that others leave free, at least one."""
    cores = usable_cores() if cores is None else cores
    busy = busy_cores(cores) if busy is None else busy
    return max(1, len(cores) - round(busy))


_chosen: int | None = None


def fit_threads() -> int:
    """Set torch's intra-op threads for this process (pinned, or the free cores) and return the count.

    Chosen the first time a model is loaded on the CPU (core.models.load_model), then kept.
    """
    global _chosen
    if _chosen is None:
        import torch

        _chosen = pinned_threads() or threads_for_free_cores()
        if _chosen != torch.get_num_threads():
            torch.set_num_threads(_chosen)
    return _chosen
