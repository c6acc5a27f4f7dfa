"""Several nodes, each started on its own (NODE_RANK, as a Slurm script does), here two "nodes" on the
loopback sharing one run directory; and a stage's own `distributed:` keys over the pipeline's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import validate_config
from rlhf.distributed import free_port, launch_command
from rlhf.errors import ConfigError
from rlhf.registry import Registry
from rlhf.settings import DistributedConfig
from rlhf.workspace import run_dir_for
from tests.conftest import REPO, pipeline_config

CONFIG = """
name: multinode
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 400, num_sft_eval: 16, num_preference_tasks: 200}
stages:
  sft: {learning_rate: 3.0e-3, max_steps: 4, per_device_train_batch_size: 8, max_length: 64, logging_steps: 1,
        save_steps: 2, num_threads: 1, evaluation: {max_new_tokens: 8, samples_per_prompt: 1}}
  reward: {max_steps: 4, per_device_train_batch_size: 8, max_length: 64, logging_steps: 1, save_steps: 2,
           num_threads: 1}
evaluation: null
distributed: {num_nodes: 2, num_processes: 1, zero_stage: 2}
tracking: none
"""


def run_nodes(args: list[str], nodes: int = 2) -> list[subprocess.CompletedProcess[str]]:
    """`rlhf ARGS` once per node, all at once, each with its NODE_RANK and the first node's address."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    command = [sys.executable, "-m", "rlhf.cli", *args]
    started = [
        subprocess.Popen(command, cwd=REPO, text=True, env=env | {"NODE_RANK": str(n)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for n in range(nodes)
    ]  # fmt: skip
    finished = []
    for process in started:
        out, err = process.communicate(timeout=600)
        finished.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return finished


def published(registry: Registry) -> list[str]:
    return [version.ref for entry in registry.list().values() for version in entry.versions]


# Stand-ins for Slurm's commands, which this machine lacks: `srun` starts its command once per node of the
# allocation, all at once, each with its SLURM_NODEID (here every "node" is this host); `scontrol show
# hostnames` names the nodes.
SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
  SLURM_NODEID=$node "$@" > "$SLURM_SUBMIT_DIR/node$node.out" 2> "$SLURM_SUBMIT_DIR/node$node.err" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
SCONTROL = "#!/usr/bin/env bash\nfor ((n = 0; n < SLURM_JOB_NUM_NODES; n++)); do echo 127.0.0.1; done\n"


@pytest.mark.slow
@pytest.mark.distributed
def test_the_slurm_script_runs_the_pipeline_on_two_loopback_nodes(tmp_path: Path) -> None:
    """scripts/slurm.sbatch as Slurm runs it: each node runs the whole pipeline, its torchrun meeting the
    other's at the first node's address, so every stage trains on 2 ranks, one per node. Rank 0 publishes each
    stage once, both nodes carry on with what it recorded (the reward model starts from the SFT version just
    published), and the first node alone writes the summary."""
    config = pipeline_config(tmp_path, CONFIG)
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (shims / name).write_text(text, encoding="utf-8")
        (shims / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[0-1]",
           "SLURM_SUBMIT_DIR": str(tmp_path), "MASTER_PORT": str(free_port()), "PYTHONPATH": str(REPO),
           "RLHF_VENV": str(Path(sys.executable).parents[1]), "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "scripts" / "slurm.sbatch"), str(config)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    stdout, stderr = ([(tmp_path / f"node{n}.{kind}").read_text() for n in (0, 1)] for kind in ("out", "err"))
    assert done.returncode == 0, stderr[0][-2000:] + stderr[1][-2000:]
    assert "--nnodes 2 --node_rank 1" in stderr[1] and "[rank 1] stages.sft" in stderr[1]
    assert "node 1: every stage done" in stderr[1]

    run_dir = tmp_path / "runs" / "slurm-4242"
    registry = Registry(tmp_path / "registry")
    assert published(registry) == ["reward-model:v1", "sft-policy:v1"]  # each once, by rank 0
    assert registry.manifest("reward-model:v1").parents == ["sft-policy:v1"]
    for out in stdout:
        assert "sft: published sft-policy:v1" in out and "reward: published reward-model:v1" in out
    for node, folder in ((0, run_dir), (1, run_dir / ".node1")):  # each node logged its own rank
        assert f"[rank {node}] stages.sft" in (folder / "sft" / "stage.log").read_text(encoding="utf-8")
    assert not list((tmp_path / "runs" / "checkpoints").glob("sft-*"))  # published: its checkpoints went
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert [stage["stage"] for stage in summary["stages"]] == ["sft", "reward"]
    assert (run_dir / ".node1" / "config.yaml").is_file()  # the second node kept its own files apart


@pytest.mark.slow
@pytest.mark.distributed
def test_rlhf_stage_on_two_loopback_nodes_with_the_deepspeed_launcher(tmp_path: Path) -> None:
    """deepspeed's launcher started on each node (`--no_ssh`, the hostfile naming both) trains one stage."""
    config = pipeline_config(tmp_path, CONFIG)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n", encoding="utf-8")
    run_dir = tmp_path / "shared-run"
    nodes = run_nodes(["stage", "sft", str(config), "distributed.launcher=deepspeed",
                       f"distributed.hostfile={hostfile}", "--run-dir", str(run_dir)])  # fmt: skip
    for n, done in enumerate(nodes):
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"--no_ssh --node_rank {n}" in done.stderr
        node_log = (run_dir if n == 0 else run_dir / f".node{n}") / "sft" / "stage.log"
        assert "dist_world_size=2" in node_log.read_text()  # the launcher's own lines, in the node's log
        assert done.stdout.count("sft: done in") == 1
    assert published(Registry(tmp_path / "registry")) == ["sft-policy:v1"]


def test_several_nodes_need_the_first_nodes_address_and_one_run_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dist = DistributedConfig(num_nodes=2, num_processes=8, launcher="torchrun")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(ConfigError, match="num_nodes=2: set MASTER_ADDR on every node"):
        launch_command(dist, "stages.sft", [])
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("NODE_RANK", "1")
    command = launch_command(dist, "stages.sft", ["--config", "c.yaml"])
    assert command[command.index("--node_rank") + 1] == "1"
    assert command[command.index("--master_addr") + 1] == "10.0.0.1"
    assert command[-3:] == ["stages.sft", "--config", "c.yaml"]
    with pytest.raises(ConfigError, match="needs a hostfile"):
        launch_command(dist.model_copy(update={"launcher": "deepspeed"}), "stages.sft", [])
    cfg = validate_config({"model": "tiny-llama", "stages": {"sft": {}}})
    with pytest.raises(ConfigError, match=r"NODE_RANK is set .*pass --run-dir"):
        run_dir_for(cfg, None)


def test_a_stages_own_distributed_keys_go_over_the_pipelines() -> None:
    cfg = validate_config({
        "model": "tiny-llama",
        "distributed": {"num_processes": 8, "deepspeed_config": "configs/deepspeed/zero2.json"},
        "stages": {"sft": {}, "reward": {"distributed": {"num_processes": 4}},
                   "policy": {"ppo": {"algorithm": "ppo", "distributed": {"num_nodes": 2, "zero_stage": 3}}}},
    })  # fmt: skip
    assert cfg.distributed_for("sft") == cfg.distributed
    reward = cfg.distributed_for("reward")
    assert (reward.num_processes, reward.deepspeed_config) == (4, "configs/deepspeed/zero2.json")
    ppo = cfg.distributed_for("policy-ppo")  # its ZeRO stage replaces the pipeline's DeepSpeed file
    assert (ppo.num_processes, ppo.num_nodes, ppo.zero_stage, ppo.deepspeed_config) == (8, 2, 3, None)
    with pytest.raises(ConfigError, match=r"stages\.sft\.distributed\.zero_stage"):
        validate_config({"model": "tiny-llama", "stages": {"sft": {"distributed": {"zero_stage": 4}}}})
