"""Per-rank peak memory of one stage on several processes: the measuring worker the memory benches share.

`run_stage` writes a pipeline config, starts the stage under `torch.distributed.run` (2 processes unless told) with this
file as each rank's program (DeepSpeed on its CPU accelerator here, CUDA on GPUs), and returns what every rank recorded:

- `before_load`: the peak before the first model's weights load (libraries, distributed set-up, data);
- `before_training`: the peak before `Trainer.train` (loading the models);
- `training`: the peak from `Trainer.train` on (DeepSpeed's set-up and the steps), measured afresh;
- `stage`: the peak over the whole stage;
- `loads`: for each model loaded, in order, its class, the memory in use (MiB) before and after
  `rlhf.models.load_weights` (what the model holds on this rank once loaded; under ZeRO-3 its partition) and
  the high-water mark once it loaded.

On a CPU a peak is the resident high-water mark (VmHWM; glibc is told to hand freed tensors back to the
system, MALLOC_MMAP_THRESHOLD_, so it follows live tensors rather than the allocator's cache). On a GPU it is
the CUDA caching allocator's peak reserved memory plus what the CUDA context took before the first tensor,
which is what `nvidia-smi` shows and `rlhf plan` plans for.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _status_mib(field: str) -> float:
    """A memory figure of this process from Linux's /proc/self/status (VmHWM: the peak, VmRSS: now)."""
    status = Path("/proc/self/status").read_text(encoding="ascii")
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


class Peaks:
    """This process's memory high-water mark, and how to start it afresh."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.context = 0.0
        if self.cuda:  # the CUDA context: device memory in use that the caching allocator does not hold
            torch.zeros(1, device="cuda")
            free, total = torch.cuda.mem_get_info()
            self.context = (total - free - torch.cuda.memory_reserved()) / 2**20

    def peak_mib(self) -> float:
        if self.cuda:
            import torch

            return self.context + torch.cuda.max_memory_reserved() / 2**20
        return _status_mib("VmHWM")

    def current_mib(self) -> float:
        if self.cuda:
            import torch

            return self.context + torch.cuda.memory_allocated() / 2**20
        return _status_mib("VmRSS")

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:  # Linux: "5" sets the high-water mark back to the current resident size
            Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def worker(out_dir: Path, stage: str, argv: list[str]) -> int:
    """One rank of `stages.<stage>`; its peaks land in out_dir/rank<r>.json when the process ends. The
    wrappers only read the high-water mark around the library calls: the stage runs unchanged."""
    import importlib

    import transformers

    import rlhf.models

    main = importlib.import_module(f"stages.{stage}").main
    peaks, recorded, loads = Peaks(), {}, []
    load = rlhf.models.load_weights  # every model's weights, ZeRO-3's partitioned loading or from_pretrained

    def measured_load(auto_class: type, *args: Any, **kwargs: Any) -> Any:
        recorded.setdefault("before_load", peaks.peak_mib())
        before = peaks.current_mib()
        model = load(auto_class, *args, **kwargs)
        loads.append({"model": auto_class.__name__, "before": before, "after": peaks.current_mib(),
                      "peak": peaks.peak_mib()})  # fmt: skip
        return model

    train = transformers.Trainer.train

    def measured_train(self: transformers.Trainer, *args: Any, **kwargs: Any) -> Any:
        recorded["before_training"] = peaks.peak_mib()
        peaks.reset()
        try:
            return train(self, *args, **kwargs)
        finally:
            recorded["training"] = peaks.peak_mib()

    rlhf.models.load_weights = measured_load
    transformers.Trainer.train = measured_train

    def record() -> None:
        recorded["stage"] = max([peaks.peak_mib(), *recorded.values()])
        out = out_dir / f"rank{os.environ['RANK']}.json"
        out.write_text(json.dumps({**recorded, "loads": loads}), encoding="utf-8")

    atexit.register(record)
    return main(argv)


@dataclass(frozen=True)
class StageRun:
    ranks: list[dict[str, Any]]  # each rank's peaks (MiB) and loads, as the module docstring lists them
    result: dict[str, Any]  # the stage's result.json
    log: str  # what the ranks wrote to stderr


def run_stage(
    config: str, zero: dict[str, object], folder: Path, stage: str = "sft", processes: int = 2
) -> StageRun:
    """Run `stages.<stage>` of the pipeline config text on `processes` processes with this
    `zero_optimization` (over what `zero_stage` sets)."""
    from rlhf.distributed import deepspeed_config, free_port, has_gpu
    from rlhf.settings import DistributedConfig

    out_dir = Path(tempfile.mkdtemp(dir=folder))
    (out_dir / "pipeline.yaml").write_text(config, encoding="utf-8")
    deepspeed = deepspeed_config(DistributedConfig(zero_stage=zero["stage"]))
    deepspeed["zero_optimization"] |= zero
    (out_dir / "deepspeed.json").write_text(json.dumps(deepspeed), encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(free_port()), __file__, str(out_dir), stage,
               "--config", str(out_dir / "pipeline.yaml"), "--run-dir", str(out_dir / "run"),
               f"distributed.deepspeed_config={out_dir / 'deepspeed.json'}", f"distributed.num_processes={processes}"]  # fmt: skip
    cpu = {"DS_ACCELERATOR": "cpu", "MALLOC_MMAP_THRESHOLD_": "65536"}
    env = {**os.environ, "PYTHONPATH": str(REPO)} | ({} if has_gpu() else cpu)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{stage} at ZeRO {zero}: the stage failed:\n{done.stderr[-3000:]}")
    result = json.loads((out_dir / "run" / stage / "result.json").read_text(encoding="utf-8"))
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(processes)]
    return StageRun(ranks, result, done.stderr)


if __name__ == "__main__":  # a rank: rank_memory.py OUT_DIR STAGE STAGE-ARGS...
    sys.exit(worker(Path(sys.argv[1]), sys.argv[2], sys.argv[3:]))
