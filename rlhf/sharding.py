"""ZeRO-3 for every model a stage holds: frozen models as sharded DeepSpeed inference engines, and the
share of each model a rank really holds and its peak memory, reported so that a run (and a test) can see it.

DeepSpeed shards only what its engine holds; a frozen reference or reward model left outside it sits whole
on every GPU. As DeepSpeed-Chat and OpenRLHF do, each frozen model gets its own ZeRO-3 engine (no optimizer),
its parameters gathered layer by layer in each forward pass and, with `offload_frozen_models`, kept in CPU
memory between passes. Loading partitions too: the model is built under `deepspeed.zero.Init` (transformers
does so whenever a ZeRO-3 `HfDeepSpeedConfig` is alive: the stage creates its trainer arguments or
accelerator first), so no rank ever holds the whole model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

log = logging.getLogger(__name__)


def zero3_enabled() -> bool:
    """A ZeRO-3 DeepSpeed config is alive in this process: models load partitioned (`deepspeed.zero.Init`)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def held_share(model: nn.Module) -> tuple[int, int]:
    """(bytes of parameters this rank holds, bytes of the whole model's): under ZeRO-3 a parameter's own
    tensor is an empty placeholder, its partition in `ds_tensor` and its full size in `ds_numel`."""
    held = full = 0
    for param in model.parameters():
        partitioned = hasattr(param, "ds_tensor")
        held += (param.ds_tensor.numel() if partitioned else param.numel()) * param.element_size()
        full += (param.ds_numel if partitioned else param.numel()) * param.element_size()
    return held, full


def log_held_shares(stage: str, models: Mapping[str, nn.Module | None]) -> dict[str, float]:
    """One line per rank: the share of each model's parameter bytes it holds (1.0: a whole copy), and the
    bytes; `held_from_log` reads the lines back. Returns {name: share}."""
    shares, parts = {}, []
    for name, model in models.items():
        if model is not None:
            held, full = held_share(model)
            shares[name] = held / max(full, 1)
            parts.append(f"{name} {shares[name]:.1%} ({held / 2**20:,.1f} of {full / 2**20:,.1f} MiB)")
    log.info("%s: this rank holds %s", stage, ", ".join(parts))
    return shares


_HELD_LINE = re.compile(r"\[rank (\d+)\] rlhf\.sharding: [^:]+: this rank holds (.+)")
_HELD_MODEL = re.compile(r"([\w ]+?) ([\d.]+)% \(([\d,.]+) of ([\d,.]+) MiB\)(?:, |$)")


def held_from_log(log: str) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{rank: {model: (share, MiB held, MiB whole)}} from the `log_held_shares` lines of a multi-process
    stage's output (each line prefixed with its rank), for the tests and benches that check sharding."""
    return {rank: {name: (float(share) / 100, float(held.replace(",", "")), float(whole.replace(",", "")))
                   for name, share, held, whole in _HELD_MODEL.findall(models)}
            for rank, models in _HELD_LINE.findall(log)}  # fmt: skip


def peak_memory_gib() -> float:
    """This rank's peak memory so far: allocated GPU memory on CUDA, else the process's resident high-water
    mark (Linux VmHWM). What a stage reports as `peak_memory_gib`, to set against `rlhf plan`."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    status = Path("/proc/self/status").read_text(encoding="ascii")
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 2**20 if match else float("nan")


def frozen_engine(model: nn.Module, accelerator: Accelerator, offload: bool) -> Any:
    """A frozen model ready for forward passes on the accelerator's device: under ZeRO-3 its own DeepSpeed
    inference engine (partitioned; shards in CPU memory with `offload`), else the model moved to the device.

    The engine's config is the training one's precision and ZeRO-3 bucket sizes without the optimizer,
    scheduler and optimizer offload (nothing trains), as TRL's `prepare_deepspeed` does for DPO's reference.
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return model.to(accelerator.device)
    import deepspeed

    config = {
        key: value for key, value in plugin.deepspeed_config.items() if key not in ("optimizer", "scheduler")
    }
    zero = {key: value for key, value in config["zero_optimization"].items() if key != "offload_optimizer"}
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    for key, size in (("reduce_bucket_size", hidden and hidden * hidden),
                      ("stage3_prefetch_bucket_size", hidden and int(0.9 * hidden * hidden)),
                      ("stage3_param_persistence_threshold", hidden and 10 * hidden)):  # fmt: skip
        if zero.get(key) == "auto":
            zero[key] = size or 0
    if offload:
        zero["offload_param"] = {"device": "cpu", "pin_memory": accelerator.device.type == "cuda"}
    config["zero_optimization"] = zero
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine
