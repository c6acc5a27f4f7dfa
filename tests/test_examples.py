"""The example recipes in configs/examples/ (every *.yaml there, so a new one is covered): each is a valid
config whose stages can start, whose DeepSpeed files exist and agree with its batch settings, and whose
comment block says how to run it and on what. Plus the batch check itself, on numbers worked out by hand.

No training, no hub, no registry: what is checked is what fails a researcher's run in its first minutes.
"""

from __future__ import annotations

import importlib
import json
import shlex
from functools import partial
from itertools import takewhile
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub.utils import validate_repo_id

from rlhf.architectures import is_builtin_spec
from rlhf.cli import main as rlhf_main
from rlhf.config import PipelineConfig, load_config, validate_config
from rlhf.data.importers import FORMATS
from rlhf.distributed import check_deepspeed_batches, deepspeed_config
from rlhf.errors import ConfigError
from rlhf.launch import run_standalone
from rlhf.pipeline import run_pipeline
from rlhf.registry import Reference, is_reference
from rlhf.stage_table import REWARD_MODEL, latest_version_of, stage_key, stage_spec
from stages import policy
from tests.conftest import REPO

EXAMPLES = sorted((REPO / "configs" / "examples").glob("*.yaml"))
BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths in the examples are relative to the repository root, where researchers run them."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def check_resolvable(name: str, where: str) -> None:
    """A model a researcher's run can load: a registry reference that parses (an earlier run published it;
    the run resolves it when it starts) or a hub id (`org/name`). Not a built-in tiny spec (a toy for tests)
    and not a local directory (one machine's path)."""
    if is_reference(name):
        Reference.parse(name)
        return
    assert not is_builtin_spec(name), f"{where}: {name} is a built-in toy model"
    assert "/" in name and not Path(name).exists(), f"{where}: {name} is not a hub id (org/name)"
    validate_repo_id(name)


def start_of(cfg: PipelineConfig, stage: str) -> str | None:
    """The model a stage starts from, as `run_pipeline` picks it: the stage's own `model`, else the output of
    the stage it follows (its table entry's `starts_from`) when that runs too (None: nothing to resolve now), else `model`."""
    plan = cfg.stages.plan()
    if plan[stage].model is not None:
        return plan[stage].model.name
    return None if stage_spec(stage).starts_from in plan else cfg.model.name


def header(path: Path) -> str:
    """The comment block an example starts with."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(takewhile(lambda line: line.startswith("#"), lines))


PLAN_TITLE = "# Memory plan per GPU"


def plan_block(path: Path) -> tuple[list[str], list[str]]:
    """The `rlhf plan` command an example's header names (`#   $ rlhf plan ...`, lines ending in `\\` go on)
    and the output printed under it (each line after `#   `)."""
    lines = header(path).splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith(PLAN_TITLE)), None)
    assert first is not None, f"{path.name}: its header has no '{PLAN_TITLE}' block"
    command, at = "", first + 1
    while True:
        text = lines[at].removeprefix("#").strip().removeprefix("$ ")
        at += 1
        if not text.endswith("\\"):
            return shlex.split(command + text), [
                line.removeprefix("#").removeprefix("   ") for line in lines[at:]
            ]
        command += text[:-1] + " "


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_stage_of_an_example_can_start(path: Path) -> None:
    """Each planned stage has its program, its algorithm, and a start it can resolve; so has PPO's reward
    model (its own, else a reward stage's output when one runs, else the registry's latest)."""
    cfg = load_config(path)
    check_resolvable(cfg.model.name, "model")  # the pipeline resolves it first, whichever stage uses it
    plan = cfg.stages.plan()
    for name, stage in plan.items():
        program = stage_spec(name).name
        assert callable(importlib.import_module(stage_spec(name).program).run)
        if (start := start_of(cfg, name)) is not None:
            check_resolvable(start, f"{stage_key(name)}.model")
        if program == "policy":
            assert stage.algorithm in policy.ALGORITHMS
            reward = stage.ppo.reward_model
            if stage.algorithm == "ppo" and (reward is not None or "reward" not in plan):
                check_resolvable(
                    reward.name if reward else latest_version_of(REWARD_MODEL),
                    f"{stage_key(name)}.ppo.reward_model",
                )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_files_are_named_from_the_repo_root(path: Path) -> None:
    cfg = load_config(path)
    data = cfg.data
    files = [data.sft_train, data.sft_eval, data.eval_prompts, *data.preferences.files]
    for name, stage in cfg.stages.plan().items():
        files += [cfg.distributed_for(name).deepspeed_config, getattr(stage, "dataset", None)]
        files += [stage.ppo.prompts] if stage_spec(name).name == "policy" else []
    for file in filter(None, files):
        assert not Path(file).is_absolute() and ".." not in Path(file).parts, file
    assert data.preferences.format is None or data.preferences.format in FORMATS


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_deepspeed_configs_exist_parse_and_agree_with_the_batches(path: Path) -> None:
    cfg = load_config(path)
    for name in cfg.stages.plan():
        dist = cfg.distributed_for(name)
        assert dist.deepspeed_config is None or (REPO / dist.deepspeed_config).is_file()
        config = deepspeed_config(dist)  # parses; a file without zero_optimization is an error
        if config is not None and config["zero_optimization"]["stage"] == 3:
            assert config["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save") is True
    check_deepspeed_batches(cfg)


def test_some_example_states_its_batch_numbers() -> None:
    """At least one recipe gives DeepSpeed explicit batch sizes, so the check runs on a real example."""
    explicit = [
        path
        for path in EXAMPLES
        for cfg in [load_config(path)]
        for name in cfg.stages.plan()
        if (config := deepspeed_config(cfg.distributed_for(name)))
        and any(config.get(key, "auto") != "auto" for key in BATCH_KEYS)
    ]
    assert explicit


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_comment_says_how_to_run_it_and_on_what(path: Path) -> None:
    cfg = load_config(path)
    text = header(path)
    command = f"configs/examples/{path.name}"
    assert f"rlhf run {command}" in text
    dists = [cfg.distributed_for(name) for name in cfg.stages.plan()]
    if any(dist.num_nodes > 1 for dist in dists):
        assert f"sbatch scripts/slurm.sbatch {command}" in text
    gpus = max(dist.num_processes * dist.num_nodes for dist in dists)
    assert "Hardware:" in text and f"{gpus} GPUs" in text
    assert "Memory notes" in text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_fits_the_hardware_its_header_names_and_carries_its_plan(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The header's `rlhf plan` command plans for the hardware the header states, every stage fits, and the
    block under it is what the command prints now (regenerate it when the planner or the recipe changes)."""
    command, block = plan_block(path)
    assert command[:3] == ["rlhf", "plan", f"configs/examples/{path.name}"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    gpus = int(flags["--gpus-per-node"]) * int(flags.get("--nodes", "1"))
    memory = flags["--gpu-memory"].removesuffix("GB")
    hardware = header(path)[header(path).index("Hardware:") :]
    assert f"{gpus} GPUs" in hardware and f"{memory} GB" in hardware.split("\n#\n")[0]
    assert rlhf_main(command[1:]) == 0, capsys.readouterr().out  # exit 0: every stage fits
    printed = capsys.readouterr().out.splitlines()
    assert block[-1] == printed[-1]  # the summary line
    assert block == printed


# --------------------------------------------------------------------------------------------------
# check_deepspeed_batches on hand-made configs


def ds_file(folder: Path, **batches: Any) -> str:
    """A ZeRO-2 DeepSpeed config with the given batch settings (absent: DeepSpeed's own inference)."""
    path = folder / "ds.json"
    path.write_text(json.dumps({**batches, "zero_optimization": {"stage": 2}}), encoding="utf-8")
    return str(path)


def pipeline(stages: dict[str, Any], **distributed: Any) -> PipelineConfig:
    return validate_config({"model": "tiny-llama", "stages": stages, "distributed": distributed})


def test_a_train_batch_size_that_disagrees_names_the_stage_the_file_and_both_numbers(tmp_path: Path) -> None:
    sft = {"sft": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}}
    ds = ds_file(
        tmp_path, train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2, train_batch_size=32
    )
    with pytest.raises(ConfigError) as caught:
        check_deepspeed_batches(pipeline(sft, num_processes=8, deepspeed_config=ds))
    expected = (
        f"stages.sft: micro-batch 4 x accumulation 2 x 8 processes = 64, but {ds} sets train_batch_size: 32"
    )
    assert str(caught.value) == expected
    check_deepspeed_batches(pipeline(sft, num_processes=4, deepspeed_config=ds))  # 4 x 2 x 4 = 32


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        ({"train_micro_batch_size_per_gpu": 8}, r"^stages.reward.per_device_train_batch_size: micro-batch 4, but .*ds.json sets train_micro_batch_size_per_gpu: 8$"),
        ({"gradient_accumulation_steps": 1}, r"^stages.reward.gradient_accumulation_steps: 2, but .*ds.json sets gradient_accumulation_steps: 1$"),
    ],
)  # fmt: skip
def test_micro_batch_and_accumulation_mismatches_name_the_stage_key(
    tmp_path: Path, batches: dict[str, int], message: str
) -> None:
    stages = {"reward": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}}
    with pytest.raises(ConfigError, match=message):
        check_deepspeed_batches(
            pipeline(stages, num_processes=2, deepspeed_config=ds_file(tmp_path, **batches))
        )


def test_auto_and_absent_batch_settings_are_left_to_the_trainer(tmp_path: Path) -> None:
    stages = {"sft": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}}
    check_deepspeed_batches(pipeline(stages, num_processes=8, zero_stage=3))
    ds = ds_file(tmp_path, train_micro_batch_size_per_gpu="auto", train_batch_size=64)
    check_deepspeed_batches(pipeline(stages, num_processes=8, deepspeed_config=ds))


def ppo_pipeline(ds: str, per_device: int, num_nodes: int = 2) -> PipelineConfig:
    """A DPO and a PPO policy stage; only PPO has DeepSpeed (its own `distributed:` over the pipeline's).
    PPO: 12 prompts x 4 samples = 48 responses per process and update, in 3 minibatches of 16."""
    ppo = {
        "algorithm": "ppo",
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": 5,  # not PPO's: it derives its own accumulation
        "distributed": {"deepspeed_config": ds, "num_nodes": num_nodes},
        "ppo": {"prompts_per_update": 12, "rollout": {"samples_per_prompt": 4}, "num_mini_batches": 3},
    }
    return pipeline({"policy": {"dpo": {"algorithm": "dpo"}, "ppo": ppo}}, num_processes=2)


def test_ppo_batches_are_those_ppo_derives(tmp_path: Path) -> None:
    ds = partial(ds_file, tmp_path)
    # minibatches of 16 in micro-batches of 8: 2 accumulation steps; 2 processes x 2 nodes: 8 x 2 x 4 = 64
    agreeing = ds(train_micro_batch_size_per_gpu=8, gradient_accumulation_steps=2, train_batch_size=64)
    check_deepspeed_batches(ppo_pipeline(agreeing, per_device=8))
    # a micro-batch larger than the minibatch is cut to it: 16, 1 step, 16 x 1 x 4 = 64
    cut = ds(train_micro_batch_size_per_gpu=16, gradient_accumulation_steps=1, train_batch_size=64)
    check_deepspeed_batches(ppo_pipeline(cut, per_device=32))
    # the stage's own distributed keys count: one node, 8 x 2 x 2 = 32
    check_deepspeed_batches(ppo_pipeline(ds(train_batch_size=32), per_device=8, num_nodes=1))

    # 5 is the stage's own gradient_accumulation_steps, which PPO ignores
    wrong = ds(gradient_accumulation_steps=5)
    with pytest.raises(ConfigError) as caught:
        check_deepspeed_batches(ppo_pipeline(wrong, per_device=8))
    assert str(caught.value) == (
        "stages.policy.ppo.ppo: 48 responses per update / 3 num_mini_batches / micro-batch 8 = 2, "
        f"but {wrong} sets gradient_accumulation_steps: 5"
    )
    with pytest.raises(
        ConfigError, match=r"^stages.policy.ppo: micro-batch 8 x accumulation 2 x 4 processes = 64, "
    ):
        check_deepspeed_batches(ppo_pipeline(ds(train_batch_size=32), per_device=8))


def test_ppo_rollouts_that_do_not_split_fail_before_training(tmp_path: Path) -> None:
    # minibatches of 16 do not split into micro-batches of 5
    cfg = ppo_pipeline(ds_file(tmp_path), per_device=5)
    with pytest.raises(
        ConfigError,
        match=r"^stages\.policy\.ppo\.ppo: 48 responses per update .* must split into 3 minibatches",
    ):
        check_deepspeed_batches(cfg)


def test_inside_a_launched_process_the_launchers_world_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`torchrun --nproc_per_node 2 -m stages.sft ...` on a config that says one process trains on two."""
    stages = {"sft": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}}
    cfg = pipeline(stages, deepspeed_config=ds_file(tmp_path, train_batch_size=16))  # 4 x 2 x 2 processes
    with pytest.raises(ConfigError, match=r"x 1 processes = 8, but"):
        check_deepspeed_batches(cfg)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_deepspeed_batches(cfg)


def test_runs_stop_on_a_mismatch_before_making_a_run_directory(tmp_path: Path) -> None:
    ds = ds_file(tmp_path, train_batch_size=3)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"model: tiny-llama\nstages: {{sft: {{}}}}\ndistributed: {{num_processes: 2, deepspeed_config: {ds}}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="train_batch_size: 3"):
        run_pipeline(load_config(config), tmp_path / "run")
    with pytest.raises(ConfigError, match="train_batch_size: 3"):
        run_standalone("sft", lambda cfg, ctx: pytest.fail("trained"), str(config), [], str(tmp_path / "one"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "one").exists()
