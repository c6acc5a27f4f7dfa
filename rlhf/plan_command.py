"""What `rlhf plan` prints and reads: the plan as a table, its reasons and one-line summary, its JSON; sizes,
shapes and host memory from the command line; and the check `rlhf run` makes before training. The arithmetic
is `rlhf.memory_plan`'s. No torch here either.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlhf.config import PipelineConfig
from rlhf.errors import ConfigError, RlhfError
from rlhf.memory_plan import EVALUATION, Device, GiB, Hardware, Plan, plan

# --------------------------------------------------------------------------------------------------
# Output: table, reasons, summary, JSON

ROWS = {"weights": "weights", "gradients": "gradients", "optimizer_states": "optimizer states",
        "frozen_models": "frozen models", "activations": "activations",
        "activations_with_checkpointing": "act. (checkpointing)", "logits": "logits",
        "gathered_weights": "gathered weights", "kv_cache": "KV cache", "rollout_engine": "vLLM engine", "runtime": "runtime"}  # fmt: skip


def size(n: float) -> str:
    return "-" if n <= 0 else f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{max(n / 2**20, 1):.0f} MiB"


def hardware_text(plan: Plan) -> str:
    hw = plan.hardware
    where = f"{hw.nodes} nodes x " if hw.nodes > 1 else ""
    return f"{where}{hw.gpus_per_node} x {size(hw.gpu_memory_bytes)}" + (
        f" ({hw.source})" if hw.source else ""
    )


def table(plan: Plan) -> list[str]:
    """Components as rows, stages as columns: the table `rlhf plan` prints (and the example headers carry)."""
    cols, per = plan.stages, "GPU" if plan.device == "gpu" else "process"
    rows = [
        ["", *(s.stage for s in cols)],
        ["parameters", *(f"{s.parameters / 1e9:.2f}B" if s.parameters >= 1e9 else f"{s.parameters / 1e6:.1f}M"
                         for s in cols)],
        ["processes / ZeRO", *(f"{s.world_size} / {'-' if s.zero_stage is None else s.zero_stage}" for s in cols)],
        ["precision", *(s.precision + (", ckpt" if s.gradient_checkpointing else "") for s in cols)],
        *([label, *(size(getattr(s.components, name)) for s in cols)] for name, label in ROWS.items()
          if name != "rollout_engine" or any(s.components.rollout_engine for s in cols)),  # only with vLLM
        ["peak phase", *("training" if s.training_phase >= s.generation_phase else "generation" for s in cols)],
        [f"peak per {per}", *(size(s.total) for s in cols)],
        [f"of {size(plan.hardware.gpu_memory_bytes)}", *(f"{s.total / s.available:.0%}"
                                                         + ("" if s.fits else " (no)") for s in cols)],
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            .rstrip() for row in rows]  # fmt: skip


def reasons(plan: Plan) -> list[str]:
    """One line per stage that does not fit: what it needs, what there is, the changes that would fit it
    (alternatives joined by `or`; overrides that go together separated by spaces, as `rlhf run` takes them)."""
    per, lines = "GPU" if plan.device == "gpu" else "process", []
    for s in plan.stages:
        if not s.fits:
            fix = f"would fit with: {' or '.join(' '.join(f) for f in s.fixes)}" if s.fixes else (
                "no change tried fits it: it needs more memory or devices")  # fmt: skip
            lines.append(f"stage {s.stage}: needs {s.total / GiB:.1f} GiB per {per}, "
                         f"{s.available / GiB:.1f} GiB available; {fix}")  # fmt: skip
    return lines


def summary(plan: Plan) -> str:
    """The one line `rlhf plan` ends with and `rlhf run` prints before training."""
    stages = sum(s.stage != EVALUATION for s in plan.stages)
    what = f"{stages} stage{'s' * (stages != 1)}" + (
        " and the closing evaluation" * (stages < len(plan.stages))
    )
    if not plan.fits:
        failing = [s.stage for s in plan.stages if not s.fits]
        verb = "does" if len(failing) == 1 else "do"
        return f"plan: {', '.join(failing)} {verb} not fit on {hardware_text(plan)}; planned: {what}"
    top = max(plan.stages, key=lambda s: s.total)
    verb = "fits" if len(plan.stages) == 1 else "fit"
    per = "GPU" if plan.device == "gpu" else "process"
    return (f"plan: {what} {verb} on {hardware_text(plan)}; largest: {top.stage} {top.total / GiB:.1f} GiB per "
            f"{per} ({top.total / top.available:.0%})")  # fmt: skip


def format_plan(plan: Plan) -> list[str]:
    notes = [f"note: {s.stage}: {note}" for s in plan.stages for note in s.notes]
    return [*table(plan), "", *notes, *reasons(plan), summary(plan)]


def plan_json(plan: Plan) -> dict[str, Any]:
    """`rlhf plan --json`, format 1: {format, device, hardware, fits, summary, reasons, stages: [{stage, kind,
    parameters, world_size, zero_stage, precision, gradient_checkpointing, gradients_held, bytes: {each component,
    training_phase, generation_phase, total}, available_bytes, fits, notes, fixes}]}; sizes in bytes."""
    stages = [{"stage": s.stage, "kind": s.kind, "parameters": s.parameters, "world_size": s.world_size,
               "zero_stage": s.zero_stage, "precision": s.precision, "gradient_checkpointing": s.gradient_checkpointing,
               "gradients_held": s.gradients_held,
               "bytes": {**asdict(s.components), "training_phase": s.training_phase,
                         "generation_phase": s.generation_phase, "total": s.total},
               "available_bytes": s.available, "fits": s.fits, "notes": list(s.notes),
               "fixes": [list(fix) for fix in s.fixes]} for s in plan.stages]  # fmt: skip
    return {"format": 1, "device": plan.device, "hardware": asdict(plan.hardware), "fits": plan.fits,
            "summary": summary(plan), "reasons": reasons(plan), "stages": stages}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Inputs: sizes, shapes, host memory; the check before `rlhf run`

_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*(?:([kmgt])(i?)b?|b)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of `80GB` / `141G` (decimal: G = GB = 10^9), `80GiB` (binary: 2^30), `24000MB`, `512B`."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"--gpu-memory: expected a size such as 80GB, 80GiB, 141G or 24000MB, got {text!r}")
    number, prefix, binary = match.groups()
    power = "kmgt".index(prefix.lower()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def parse_shapes(items: list[str]) -> dict[str, str]:
    """`--model-shape REF=SPEC` arguments as {ref: spec}."""
    shapes = {}
    for item in items:
        ref, sep, spec = item.partition("=")
        if not (sep and ref and spec):
            raise ConfigError(f"--model-shape {item!r}: expected REF=SPEC, e.g. "
                              "registry:reward-model:latest=llama-3.1-8b-shape")  # fmt: skip
        shapes[ref] = spec
    return shapes


def host_hardware(gpus_per_node: int, nodes: int, meminfo: Path = Path("/proc/meminfo")) -> Hardware:
    """No GPU: each process of a node gets an equal share of the host's available memory (MemAvailable)."""
    match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(encoding="ascii"), re.MULTILINE)
    if not match:
        raise ConfigError(f"{meminfo} has no MemAvailable and there is no GPU: pass --gpu-memory")
    processes = f"{gpus_per_node} process{'es' * (gpus_per_node != 1)}"
    return Hardware(gpus_per_node, nodes, int(match.group(1)) * 1024 // gpus_per_node,
                    f"no GPU: host memory available / {processes}")  # fmt: skip


def preflight(cfg: PipelineConfig, hardware: Hardware, device: Device) -> tuple[list[str], bool]:
    """What `rlhf run` says before training (why a stage does not fit, the summary), and whether it fits. A
    model the plan cannot size offline stops nothing: the run resolves models itself, with its own errors."""
    try:
        planned = plan(cfg, hardware, device=device)
    except RlhfError as exc:
        return [f"plan: not checked ({exc})"], True
    return [*reasons(planned), summary(planned)], planned.fits
