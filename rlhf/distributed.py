"""Rank helpers: who am I in a distributed run, and log lines that say so.

Launchers (deepspeed, torchrun) describe a process through environment variables; reading them here keeps
every stage free of launcher details. A single in-process run is rank 0 of world size 1.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf.config import PipelineConfig
from rlhf.errors import ConfigError
from rlhf.quiet_console import quiet_console
from rlhf.settings import DistributedConfig, PolicyStageConfig, TrainStageConfig, ppo_batches
from rlhf.stage_table import stage_key

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone publishes, writes summaries and talks to wandb."""
        return self.rank == 0


def rank_info() -> RankInfo:
    """This process's place in the run, from the launcher's environment variables."""
    return RankInfo(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def configure_logging(info: RankInfo, debug: bool = False) -> None:
    """Log lines carry the rank, so interleaved output from several processes stays readable; the process
    that launches a node's ranks in a run of several nodes carries its node's. The console shows our own lines
    unless -v asks for everything (`rlhf.quiet_console`)."""
    who = (
        f"node {node_rank()}"
        if "NODE_RANK" in os.environ and "RANK" not in os.environ
        else f"rank {info.rank}"
    )
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format=f"%(asctime)s [{who}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_console()


def deepspeed_config(dist: DistributedConfig) -> dict[str, Any] | None:
    """The DeepSpeed config a stage runs with: the configured JSON file, or one for `zero_stage` whose batch
    sizes, accumulation, clipping and precision are "auto" (the trainer fills them in); None without either."""
    if dist.deepspeed_config is not None:
        path = Path(dist.deepspeed_config)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"distributed.deepspeed_config: cannot read {path} as JSON ({exc})") from None
        if not isinstance(config, dict) or "zero_optimization" not in config:
            raise ConfigError(f"distributed.deepspeed_config: {path} has no 'zero_optimization' section")
        return config
    if dist.zero_stage is None:
        return None
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": ZERO_OPTIMIZATION[dist.zero_stage],
    }


# What `zero_stage: N` means (configs/deepspeed/zeroN.json say the same). Bucket sizes are "auto": the
# trainer sets them from the model's hidden size. DeepSpeed's own default, 5e8 elements, costs 2 GB of fp32
# buffer per rank whatever the model: at ZeRO-3 that outweighed what partitioning saved on a 100M model
# (bench/zero_memory.py). ZeRO-3 releases gathered weights once they are used and not wanted again within
# 3e7 elements (DeepSpeed-Chat's stage3_max_live_parameters): DeepSpeed's 1e9 keeps every weight of a model
# under 1B parameters gathered through the step: 1.33 GiB a rank more at the 0.5B shape in fp32
# (bench/plan_accuracy.py). ZeRO-3 gathers the full weights for the final save instead of leaving shards.
_BUCKETS = {"overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": "auto"}
_RELEASE = {"stage3_max_live_parameters": 30_000_000, "stage3_max_reuse_distance": 30_000_000}
ZERO_OPTIMIZATION: dict[int, dict[str, Any]] = {
    0: {"stage": 0},
    1: {"stage": 1, "reduce_bucket_size": "auto"},
    2: {"stage": 2, **_BUCKETS, "reduce_scatter": True},
    3: {"stage": 3, **_BUCKETS, "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", **_RELEASE, "stage3_gather_16bit_weights_on_model_save": True},
}  # fmt: skip


def deepspeed_plugin(dist: DistributedConfig) -> DeepSpeedPlugin | None:
    """accelerate's DeepSpeed plugin for a stage that drives accelerate itself (PPO); see `deepspeed_config`."""
    config = deepspeed_config(dist)
    if config is None:
        return None
    from accelerate.utils import DeepSpeedPlugin

    return DeepSpeedPlugin(hf_ds_config=config)


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def uses_deepspeed(dist: DistributedConfig) -> bool:
    """DeepSpeed runs the stage: a ZeRO stage or config is set, and there is a GPU or several CPU processes
    (a single CPU process has nothing to shard and trains without it)."""
    return deepspeed_config(dist) is not None and (has_gpu() or on_cpu_under_launcher())


def on_cpu_under_launcher() -> bool:
    """Several processes and no GPU: DeepSpeed then runs on its CPU accelerator over gloo."""
    return not has_gpu() and rank_info().world_size > 1


def start_cpu_deepspeed() -> None:
    """Start gloo and accelerate's shared state in DeepSpeed mode, for a Trainer to reuse
    (`accelerator_config={"use_configured_state": True}`).

    accelerate (and transformers through it) never starts DeepSpeed on CPUs, for want of a device backend,
    though DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu) trains fine over gloo.
    """
    import torch
    from accelerate import PartialState

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]


def make_accelerator(deepspeed: DeepSpeedPlugin | None = None, **options: Any) -> Accelerator:
    """accelerate's Accelerator for a stage that drives its own loop (PPO), on GPUs or on CPUs: several CPU
    processes with DeepSpeed reuse the state `start_cpu_deepspeed` sets up; without DeepSpeed, plain DDP."""
    from accelerate import Accelerator

    if deepspeed is not None and on_cpu_under_launcher():
        start_cpu_deepspeed()
    return Accelerator(cpu=not has_gpu() and deepspeed is None, deepspeed_plugin=deepspeed, **options)


def launch_command(dist: DistributedConfig, module: str, args: list[str]) -> list[str]:
    """The command that starts `python -m MODULE ARGS` on every process of this node.

    torchrun: `num_processes` per node, `num_nodes` nodes meeting at MASTER_ADDR:MASTER_PORT, this node's
    rank from NODE_RANK. deepspeed: its launcher, which from one node starts the others over ssh (hostfile);
    with NODE_RANK set it is started on each node instead (`--no_ssh`, as a Slurm script does).
    """
    if dist.launcher == "torchrun":
        addr, port = rendezvous(dist)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(dist.num_processes),
                   "--nnodes", str(dist.num_nodes), "--node_rank", str(node_rank()),
                   "--master_addr", addr, "--master_port", port]  # fmt: skip
        return [*command, "-m", module, *args]
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_nodes", str(dist.num_nodes),
               "--num_gpus", str(dist.num_processes)]  # fmt: skip
    if dist.hostfile:
        command += ["--hostfile", dist.hostfile]
    if dist.num_nodes > 1 and "NODE_RANK" in os.environ:
        if not dist.hostfile:
            raise ConfigError(
                "distributed.hostfile: the deepspeed launcher on several nodes needs a hostfile"
            )
        addr, port = rendezvous(dist)
        command += ["--no_ssh", "--node_rank", str(node_rank()), "--master_addr", addr]
    else:  # one node, or the first node starting the others: deepspeed finds the address itself
        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT") or str(free_port())
        command += ["--master_addr", addr] if addr else []
    return [*command, "--master_port", port, "--module", module, *args]


def node_rank() -> int:
    """This node's place among `num_nodes`, from NODE_RANK (set on each node, e.g. from SLURM_NODEID)."""
    return int(os.environ.get("NODE_RANK", "0"))


def is_first_node() -> bool:
    """The first node alone evaluates, summarizes and owns the run directory; the others follow its stages."""
    return node_rank() == 0


def rendezvous(dist: DistributedConfig) -> tuple[str, str]:
    """Where the processes meet: one node finds a free local port itself; several must be told the first
    node's address and a port, the same on every node."""
    if dist.num_nodes == 1:
        return os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT") or str(free_port())
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"distributed.num_nodes={dist.num_nodes}: set {' and '.join(missing)} on every node "
            "(the first node's address and a free port; scripts/slurm.sbatch does)"
        )
    return os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]


def wait_for_all_ranks() -> None:
    """A barrier at the end of a launched stage: every rank leaves only after rank 0 has recorded the result,
    so a launcher that exits 0 on any node means the stage is published and recorded."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def free_port() -> int:
    """A free TCP port on this host, for a single node's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def needs_launcher(dist: DistributedConfig) -> bool:
    """Several processes asked for, and this process is not one of them already."""
    return dist.num_processes * dist.num_nodes > 1 and "LOCAL_RANK" not in os.environ


def stage_batches(stage: str, cfg: TrainStageConfig) -> tuple[int, int, str]:
    """(micro-batch per process, gradient accumulation steps, where the accumulation comes from) a stage
    trains with: its own settings for the TRL trainers, what PPO derives from its rollout for PPO."""
    key = stage_key(stage)
    if isinstance(cfg, PolicyStageConfig) and cfg.online:
        batches = ppo_batches(cfg, key)
        source = (f"{key}.ppo: {batches.rollout} responses per update / {cfg.ppo.num_mini_batches} "
                  f"num_mini_batches / micro-batch {batches.micro} = {batches.accumulation}")  # fmt: skip
        return batches.micro, batches.accumulation, source
    accumulation = cfg.gradient_accumulation_steps
    return cfg.per_device_train_batch_size, accumulation, f"{key}.gradient_accumulation_steps: {accumulation}"


def check_deepspeed_batches(cfg: PipelineConfig, stages: list[str] | None = None) -> None:
    """Fail before any training when a DeepSpeed config's explicit batch sizes disagree with a stage's
    (every stage, or those named).

    The TRL trainers would stop only at start-up, after the stages before them, and PPO overwrites the JSON's
    numbers with its own, so deliberate numbers would silently not be what ran. "auto" or absent values are
    filled in by the trainer and need no check.
    """
    for stage, stage_cfg in cfg.stages.plan().items():
        dist = cfg.distributed_for(stage)
        config = deepspeed_config(dist)
        if config is None or (stages is not None and stage not in stages):
            continue
        key = stage_key(stage)
        micro, accumulation, accumulation_source = stage_batches(stage, stage_cfg)
        world = planned_world_size(dist)
        total = micro * accumulation * world
        expected = {
            "train_micro_batch_size_per_gpu": (micro, f"{key}.per_device_train_batch_size: micro-batch {micro}"),
            "gradient_accumulation_steps": (accumulation, accumulation_source),
            "train_batch_size": (
                total, f"{key}: micro-batch {micro} x accumulation {accumulation} x {world} processes = {total}"
            ),
        }  # fmt: skip
        source = dist.deepspeed_config or f"zero_stage {dist.zero_stage}"
        for name, (value, stated) in expected.items():
            given = config.get(name, "auto")
            if given != "auto" and given != value:
                raise ConfigError(f"{stated}, but {source} sets {name}: {given}")


def planned_world_size(dist: DistributedConfig) -> int:
    """The processes a stage trains on: inside a launched process the launcher's world (a hand-started
    torchrun need not match the config), else the configured processes per node x nodes."""
    if "LOCAL_RANK" in os.environ:
        return rank_info().world_size
    return dist.num_processes * dist.num_nodes
