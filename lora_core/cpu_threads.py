"""torch's process-wide intra-op thread setting: the one way to change it for a while, and the CPU
counts the patcher's thread choices read.

    with torch_threads(1):      # torch.set_num_threads(1) for the block, the old value restored after
        ...

The setting is process-wide, not per thread: hold it only around work nothing else in the process
runs at the same time (slot writes, one generation under the pipeline's lock).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count is `n` inside the block, its previous value after (also on an
    exception). None leaves the setting alone."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def usable_cpus() -> int:
    """CPUs this process may run on (a process pinned to 2 of 16 CPUs has 2)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def runnable_elsewhere() -> int | None:
    """Threads of other processes runnable at this moment (Linux: /proc/loadavg's running count
    minus this process's running threads); None where that cannot be read."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            running = int(f.read().split()[3].split("/")[0])
        ours = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                    stat = f.read()
            except OSError:  # the thread ended meanwhile
                continue
            if stat[stat.rindex(")") + 2:].startswith("R"):
                ours += 1
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - ours)


def free_cpu_threads() -> int | None:
    """torch's setting lowered to the CPUs other processes leave free right now (at least 1);
    None: keep torch's setting (nothing busy elsewhere, or no way to tell)."""
    elsewhere = runnable_elsewhere()
    if elsewhere is None:
        return None
    free = usable_cpus() - elsewhere
    return max(1, free) if free < torch.get_num_threads() else None
