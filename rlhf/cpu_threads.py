"""OpenMP threads that sleep at a barrier instead of spinning, for every process `rlhf` starts.

torch's CPU build runs its ops on libgomp, whose default wait spins for a while at every barrier. On a
machine where another process is busy, a spinning thread holds the core the thread it waits for needs, and a
stage of many short ops (a small model's training step meets thousands of barriers) runs many times slower:
the quickstart's PPO stage took 519 s instead of 26 s beside two other jobs. `OMP_WAIT_POLICY=PASSIVE` makes
waiting threads yield; `bench/omp_contention.py` measures both policies, quiet and beside a competitor.

libgomp reads the variable once, when torch loads it, so this must run before torch is imported: the CLI's
entry point and the `stages` package (for `python -m stages.X`) call it first; the processes a launcher
starts inherit it. A value the user set is kept.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_yielding_threads() -> None:
    """Set `OMP_WAIT_POLICY=PASSIVE` for this process and its children, unless the user chose a policy."""
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")
