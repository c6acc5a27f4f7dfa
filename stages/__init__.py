"""The pipeline's stage programs (`python -m stages.X` or through `rlhf`)."""

from rlhf.cpu_threads import prefer_yielding_threads

prefer_yielding_threads()  # before any stage module imports torch
