"""How many CPU threads a stage runs: those asked for, but no more than the cores other processes leave free.

torch's CPU build runs its ops on libgomp, whose threads spin at every barrier before they sleep. Where another
process keeps a core busy, a stage on all cores waits at each barrier for a thread that has no core, and a
stage of many short ops (a small model meets thousands of barriers per step) runs many times slower: the
quickstart's PPO stage took 519 s instead of 26 s beside two other jobs. Sizing the thread pool to the free
cores avoids the stall without costing a quiet machine anything; `OMP_WAIT_POLICY=PASSIVE` (threads that sleep
at once) also avoids most of it but slowed every quiet step of the tiny model by 15-40%
(bench/omp_contention.py has both).

The free cores are read once, when the stage starts: a process that starts later still slows it.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.3


def busy_cores(interval: float = SAMPLE_SECONDS) -> float | None:
    """Cores kept busy by other processes over `interval`, from /proc/stat (this process sleeps meanwhile);
    None where there is no /proc/stat."""

    def totals() -> tuple[list[int], int]:
        with open("/proc/stat", encoding="ascii") as stat:
            lines = stat.read().splitlines()
        cpus = sum(1 for line in lines if line.startswith("cpu") and line[3].isdigit())
        return [int(field) for field in lines[0].split()[1:9]], cpus  # user ... steal (guest is in user)

    try:
        before, cpus = totals()
        time.sleep(interval)
        after, _ = totals()
    except OSError:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    idle = spent[3] + spent[4]  # idle, iowait
    return (1 - idle / sum(spent)) * cpus if sum(spent) > 0 else 0.0


def threads_for_load(wanted: int, cores: int, busy: float) -> int:
    """`wanted` threads, but no more than the cores left free by `busy` other work (at least 1)."""
    return max(1, min(wanted, cores - round(busy)))


def stage_threads(wanted: int, stage: str) -> int:
    """The thread count a stage starts torch with: `wanted` (the stage's `num_threads`, else torch's own
    default, which a launcher's OMP_NUM_THREADS sets), fewer where other processes keep cores busy."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = busy_cores()
    if busy is None:
        return wanted
    threads = threads_for_load(wanted, cores, busy)
    if threads < wanted:
        log.info("%s: %d of %d threads: other processes keep %.1f of %d cores busy", stage, threads, wanted,
                 busy, cores)  # fmt: skip
    return threads
