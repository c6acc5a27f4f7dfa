"""A stage runs no more threads than the cores other processes leave free."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rlhf.cpu_threads import busy_cores, stage_threads, threads_for_load

CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("wanted", "cores", "busy", "threads"),
    [(2, 2, 0.1, 2), (2, 2, 0.9, 1), (2, 2, 2.0, 1), (4, 16, 10.2, 4), (8, 16, 10.2, 6), (2, 2, 5.0, 1)],
)
def test_threads_fit_the_free_cores(wanted: int, cores: int, busy: float, threads: int) -> None:
    assert threads_for_load(wanted, cores, busy) == threads


def test_busy_processes_are_seen_and_leave_the_stage_one_thread() -> None:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(CORES)]
    try:
        busy = busy_cores(interval=1.0)
        assert busy is not None and busy > CORES - 0.5, busy
        assert stage_threads(CORES, "test") == 1
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert busy_cores(interval=1.0) < busy - 0.5  # they are gone
