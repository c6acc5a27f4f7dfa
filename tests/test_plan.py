"""`rlhf plan`: the memory planner against numbers worked out by hand from a model's dimensions, parameter
counts of the real shapes against their published figures, the fixes it proposes (re-planned: they fit), and
the command end to end. No torch here: the planner needs none, and `rlhf plan` must not import it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rlhf.config import PipelineConfig, load_config, validate_config
from rlhf.errors import ConfigError
from rlhf.memory_plan import GiB, Hardware, StagePlan, candidate_changes, plan
from rlhf.model_sizes import Shapes, adapter_params, causal_params, classifier_params
from rlhf.plan_command import format_plan, parse_shapes, parse_size, reasons, summary
from tests.conftest import REPO, run_cli

QWEN_EXAMPLE = REPO / "configs" / "examples" / "qwen2.5-0.5b-zero2.yaml"

# A small llama, sized by hand: h=64, 2 layers, vocabulary 100, 4 heads of 16, 2 KV heads, MLP 128, untied.
LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "tie_word_embeddings": False}  # fmt: skip
EMBEDDINGS = 100 * 64  # 6,400
LAYER = (
    64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64
)  # q, k + v, o, MLP (gate, up, down), 2 RMSNorms
N = EMBEDDINGS + 2 * LAYER + 64 + 100 * 64  # + final norm + the untied LM head
CLASSIFIER = N - 100 * 64 + 64  # no LM head; a 64 x 1 score head
# Activations a layer keeps per token: 10 hidden-size and 4 MLP-size values, bf16
LAYER_BYTES = (10 * 64 + 4 * 128) * 2
KV_PER_TOKEN = 2 * 2 * 2 * 16 * 2  # keys and values x layers x KV heads x head_dim x 2 bytes (bf16)


@pytest.fixture()
def llama_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "small-llama-dir"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA), encoding="utf-8")
    return folder


def config(model: Path, stages: dict[str, Any], tmp_path: Path, **distributed: Any) -> PipelineConfig:
    return validate_config({"model": str(model), "stages": stages, "distributed": distributed,
                            "data": {"eval_prompts": "prompts.jsonl"}, "registry": str(tmp_path / "registry")})  # fmt: skip


def one(cfg: PipelineConfig, device: str = "gpu", memory: float = 80 * GiB, **kwargs: Any) -> StagePlan:
    """The plan of the config's first stage on 2 processes."""
    return plan(cfg, Hardware(2, 1, int(memory)), device=device, **kwargs).stages[0]  # type: ignore[arg-type]


SFT = {"precision": "bf16", "per_device_train_batch_size": 4, "max_length": 32,
       "evaluation": {"batch_size": 8, "max_new_tokens": 16}}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Parameter counts


def test_the_real_shapes_have_their_published_parameter_counts() -> None:
    shapes = Shapes(Path("registry"))
    assert causal_params(shapes.of("qwen2.5-0.5b-shape", "model").dims) == 494_032_768  # tied embeddings
    assert (
        causal_params(shapes.of("Qwen/Qwen2.5-0.5B", "model").dims) == 494_032_768
    )  # the hub id, by SHAPE_OF
    assert causal_params(shapes.of("llama-3.2-1b-shape", "model").dims) == 1_235_814_400
    llama8b = shapes.of("meta-llama/Llama-3.1-8B", "model").dims
    assert causal_params(llama8b) == 8_030_261_248
    assert classifier_params(llama8b) == 8_030_261_248 - 128_256 * 4096 + 4096  # no LM head, a score head


def test_a_directory_and_a_lora_adapter_on_it_are_sized_from_their_configs(
    llama_dir: Path, tmp_path: Path
) -> None:
    shapes = Shapes(tmp_path / "registry")
    assert LAYER == 36_992 and N == 86_848 and CLASSIFIER == 80_512
    assert causal_params(shapes.of(str(llama_dir), "model").dims) == N
    assert classifier_params(shapes.of(str(llama_dir), "model").dims) == CLASSIFIER
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(llama_dir), "r": 8, "target_modules": ["q_proj", "v_proj"]}))  # fmt: skip
    shape = shapes.of(str(adapter), "model")
    assert shape.dims == shapes.of(str(llama_dir), "model").dims
    assert shape.adapter == 2 * 8 * ((64 + 64) + (64 + 32))  # layers x r x (in + out) of q and v: 3,584


def test_lora_all_linear_counts_r_times_in_plus_out_of_every_linear(llama_dir: Path, tmp_path: Path) -> None:
    dims = Shapes(tmp_path).of(str(llama_dir), "model").dims
    per_layer = (
        (64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64)
    )  # q, k, v, o, gate, up, down
    assert adapter_params(dims, 8, "all-linear", "lora") == 2 * 8 * per_layer == 16_384
    with pytest.raises(ConfigError, match=r"^stages.sft.lora: target_modules \['c_attn'\] match no linear"):
        adapter_params(dims, 8, ["c_attn"], "stages.sft.lora")


# --------------------------------------------------------------------------------------------------
# What a stage holds


@pytest.mark.parametrize(
    ("zero_stage", "expected"),
    [
        (None, (4 * N, 4 * N, 8 * N)),  # no DeepSpeed: fp32 weights under autocast, fp32 grads, Adam
        (0, (2 * N, 2 * N, 12 * N)),  # DeepSpeed bf16: 16-bit weights and grads, fp32 master + Adam
        (1, (2 * N, 2 * N, 12 * N // 2)),  # optimizer states over W = 2
        (2, (2 * N, 2 * N // 2, 12 * N // 2)),  # + gradients
        (3, (2 * N // 2, 2 * N // 2, 12 * N // 2)),  # + weights
    ],
)
def test_model_states_follow_the_zero_stage(
    llama_dir: Path, tmp_path: Path, zero_stage: int | None, expected: tuple[int, int, int]
) -> None:
    cfg = config(llama_dir, {"sft": SFT}, tmp_path, num_processes=2, zero_stage=zero_stage)
    c = one(cfg).components
    assert (c.weights, c.gradients, c.optimizer_states) == expected
    assert c.frozen_models == 0


def test_fp32_and_auto_on_a_cpu_keep_four_bytes_a_weight(llama_dir: Path, tmp_path: Path) -> None:
    cfg = config(llama_dir, {"sft": {**SFT, "precision": "auto"}}, tmp_path, num_processes=2, zero_stage=2)
    cpu = one(cfg, device="cpu")
    assert cpu.precision == "fp32" and cpu.zero_stage == 2  # two CPU processes run DeepSpeed
    c = cpu.components
    # ZeRO-2's optimizer copies its fp32 partition of the weights even when they are fp32 already
    assert (c.weights, c.gradients, c.optimizer_states) == (4 * N, 4 * N // 2, 12 * N // 2)
    zero3 = one(config(llama_dir, {"sft": {**SFT, "precision": "auto"}}, tmp_path, num_processes=2, zero_stage=3),
                device="cpu").components  # fmt: skip
    assert zero3.optimizer_states == 8 * N // 2  # ZeRO-3 steps its fp32 partition in place
    assert one(cfg).precision == "bf16"  # auto on a GPU


def test_activations_logits_and_the_held_out_sampling(llama_dir: Path, tmp_path: Path) -> None:
    tokens = 4 * 32  # micro-batch x max_length
    for zero_stage, gathered in ((2, 0), (3, 2 * N)):  # ZeRO-3 gathers the whole bf16 model to sample
        cfg = config(llama_dir, {"sft": SFT}, tmp_path, num_processes=2, zero_stage=zero_stage)
        c = one(cfg).components
        layer = LAYER_BYTES * tokens
        assert c.activations == 2 * layer
        assert c.activations_with_checkpointing == 2 * 64 * tokens * 2 + layer  # each layer's input + 1 layer
        assert c.logits == tokens * 100 * 4 * 3  # fp32 logits, log-softmax, gradient
        assert c.kv_cache == KV_PER_TOKEN * 8 * (32 + 16)  # evaluation.batch_size x (prompt + new tokens)
        assert c.gathered_weights == gathered
    checkpointed = one(config(llama_dir, {"sft": {**SFT, "gradient_checkpointing": True}}, tmp_path,
                              num_processes=2, zero_stage=2))  # fmt: skip
    c = checkpointed.components
    # gradients come as the backward pass frees the activations: the larger of the two at the peak
    assert not checkpointed.gradients_held
    assert checkpointed.training_phase == c.weights + c.optimizer_states + max(
        c.activations_with_checkpointing + c.logits, c.gradients
    )
    assert checkpointed.total == c.runtime + max(checkpointed.training_phase, checkpointed.generation_phase)
    for held in ({"zero_stage": 3}, {"zero_stage": 2, "accumulation": 2}):  # both alive through the forward
        settings = {**SFT, "gradient_accumulation_steps": held.pop("accumulation", 1)}
        stage = one(config(llama_dir, {"sft": settings}, tmp_path, num_processes=2, **held))
        c = stage.components
        assert (
            stage.gradients_held
            and stage.training_phase
            == c.weights + c.gradients + c.optimizer_states + (c.activations + c.logits)
        )


def test_lora_trains_its_adapter_in_16_bytes_on_a_frozen_16_bit_base(llama_dir: Path, tmp_path: Path) -> None:
    cfg = config(llama_dir, {"sft": {**SFT, "lora": {"r": 8}}}, tmp_path, num_processes=2, zero_stage=3)
    stage = one(cfg)
    adapter = 16_384
    assert stage.parameters == adapter
    c = stage.components
    assert (c.weights, c.gradients, c.optimizer_states) == ((2 * adapter + 2 * N) // 2, 2 * adapter // 2,
                                                            12 * adapter // 2)  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "processes", "zero_stage", "reference"),
    [
        ({}, 2, 2, 2 * N),  # 2 processes: by default a frozen bf16 copy, whole at ZeRO-2 (TRL engine)
        ({}, 2, 3, 2 * N // 2),  # sharded at ZeRO-3
        ({"precompute_ref_log_probs": True}, 1, 3, 0),
        ({"lora": {"r": 8}}, 2, 3, 0),  # the policy with its adapters disabled
    ],
)
def test_dpo_reference_and_pairs(
    llama_dir: Path, tmp_path: Path, settings: dict[str, Any], processes: int, zero_stage: int, reference: int
) -> None:
    policy = {**SFT, "algorithm": "dpo", **settings}
    cfg = config(llama_dir, {"policy": policy}, tmp_path, num_processes=processes, zero_stage=zero_stage)
    stage = one(cfg)
    assert stage.kind == "dpo" and stage.components.frozen_models == reference
    assert stage.components.activations == 2 * LAYER_BYTES * (2 * 4 * 32)  # chosen + rejected per pair


def test_precomputing_the_reference_on_several_processes_is_refused_and_never_suggested(
    llama_dir: Path, tmp_path: Path
) -> None:
    """TRL writes the precomputed values into rank 0's data cache alone: an explicit true on 2 processes is one
    line naming the key, and the planner's fixes for an over-budget DPO stage on 2 processes never include it."""
    policy = {**SFT, "algorithm": "dpo", "precompute_ref_log_probs": True}
    with pytest.raises(
        ConfigError, match=r"stages\.policy\.precompute_ref_log_probs: true works on one process"
    ):
        config(llama_dir, {"policy": policy}, tmp_path, num_processes=2, zero_stage=3)
    per_step = {**SFT, "algorithm": "dpo", "precompute_ref_log_probs": False}
    suggested = {}
    for processes in (1, 2):
        cfg = config(llama_dir, {"policy": per_step}, tmp_path, num_processes=processes, zero_stage=3)
        planned = plan(cfg, Hardware(processes, 1, 80 * GiB), device="gpu").stages[0]
        changes = [
            override
            for group in candidate_changes(cfg, planned)
            for change, _ in group
            for override in change
        ]
        suggested[processes] = "stages.policy.precompute_ref_log_probs=true" in changes
    assert suggested == {1: True, 2: False}


def test_ppo_holds_reference_reward_model_and_value_head(llama_dir: Path, tmp_path: Path) -> None:
    ppo = {"precision": "bf16", "algorithm": "ppo", "max_length": 32, "per_device_train_batch_size": 4,
           "evaluation": None, "ppo": {"reward_model": "registry:rm:v1", "value_model": "policy_head",
                                       "prompts_per_update": 4, "rollout": {"max_new_tokens": 8, "batch_size": 4}}}  # fmt: skip
    shapes = {"registry:rm:v1": str(llama_dir)}
    for offload, frozen in ((False, (2 * N + 2 * CLASSIFIER) // 2), (True, 0)):
        cfg = config(llama_dir, {"policy": ppo}, tmp_path, num_processes=2, zero_stage=3,
                     offload_frozen_models=offload)  # fmt: skip
        stage = one(cfg, shapes=shapes)
        c = stage.components
        assert stage.parameters == N + 64 + 1  # the policy and its value head
        assert c.frozen_models == frozen
        assert c.activations == 2 * LAYER_BYTES * 4 * (32 + 8)  # micro-batch x (prompt + response)
        assert c.logits == 4 * (8 + 1) * 100 * 4 * 3  # at the response's positions only (logits_kept)
        assert c.kv_cache == KV_PER_TOKEN * 4 * (32 + 8)  # rollout.batch_size sequences
        assert c.gathered_weights == 2 * (N + 65)  # ZeRO-3 gathers policy and value head to sample
        assert stage.generation_phase == c.weights + c.gradients + c.optimizer_states + frozen + (
            c.gathered_weights + c.kv_cache
        )


def test_every_reward_model_of_a_rewards_list_is_held_and_a_function_holds_nothing(
    llama_dir: Path, tmp_path: Path
) -> None:
    """`rewards:` with two reward models and a function: both models are frozen beside the reference; with the
    function alone, the reference is all."""

    def frozen(rewards: list[dict[str, Any]]) -> int:
        grpo = {"precision": "bf16", "algorithm": "grpo", "max_length": 32, "per_device_train_batch_size": 4,
                "evaluation": None, "rewards": rewards,
                "ppo": {"prompts_per_update": 2, "rollout": {"max_new_tokens": 8, "samples_per_prompt": 2}}}  # fmt: skip
        cfg = config(llama_dir, {"policy": grpo}, tmp_path, num_processes=2, zero_stage=3)
        return one(
            cfg, shapes={"registry:rm:v1": str(llama_dir), "registry:rm2:v1": str(llama_dir)}
        ).components.frozen_models

    function = {"function": "rlhf.rewards:gold", "weight": 0.5}
    both = [{"model": "registry:rm:v1"}, {"model": "registry:rm2:v1"}, function]
    assert frozen(both) == (2 * N + 4 * CLASSIFIER) // 2  # bf16, sharded over 2 processes
    assert frozen([{"model": "registry:rm:v1"}, function]) == (2 * N + 2 * CLASSIFIER) // 2
    assert frozen([function]) == (2 * N) // 2


def test_a_vllm_rollout_engine_in_the_plan(llama_dir: Path, tmp_path: Path) -> None:
    """On a GPU the engine holds its share of the GPU, in the training phase too unless it sleeps; in a
    process on GPUs of its own nothing here; on a CPU its fp32 copy of the policy and its KV cache. The
    rollouts then need no KV cache of the trainer's."""

    def stage(vllm: dict[str, Any], device: str = "gpu") -> StagePlan:
        ppo = {"algorithm": "ppo", "max_length": 32, "per_device_train_batch_size": 4, "evaluation": None,
               "ppo": {"reward_model": "registry:rm:v1", "value_model": "policy_head", "prompts_per_update": 4,
                       "rollout": {"max_new_tokens": 8, "batch_size": 4, "engine": "vllm", "vllm": vllm}}}  # fmt: skip
        return one(config(llama_dir, {"policy": ppo}, tmp_path), device=device,
                   shapes={"registry:rm:v1": str(llama_dir)})  # fmt: skip

    asleep = stage({"gpu_memory_utilization": 0.25})
    assert asleep.components.rollout_engine == 20 * GiB and asleep.components.kv_cache == 0
    assert asleep.generation_phase == asleep.model_states + 20 * GiB
    awake = stage({"gpu_memory_utilization": 0.25, "sleep": False})
    assert awake.training_phase == asleep.training_phase + 20 * GiB
    assert stage({"placement": "process", "devices": "1"}).components.rollout_engine == 0
    cpu = stage({"kv_cache_gib": 2}, device="cpu")
    assert cpu.components.rollout_engine == 4 * N + 2 * GiB  # the causal LM's weights in fp32
    assert cpu.training_phase > cpu.model_states + cpu.components.rollout_engine  # no sleep on a CPU


def test_a_missing_registry_version_names_the_key_and_the_flag(llama_dir: Path, tmp_path: Path) -> None:
    cfg = config(llama_dir, {"policy": {"algorithm": "ppo"}}, tmp_path)
    with pytest.raises(ConfigError) as caught:
        one(cfg)
    assert str(caught.value).startswith(
        "stages.policy.ppo.reward_model: registry:reward-model:latest is not in the registry at "
        f"{tmp_path / 'registry'}; pass --model-shape registry:reward-model:latest=SPEC"
    )


def test_zero_on_one_process_is_a_note_not_an_error(llama_dir: Path, tmp_path: Path) -> None:
    cfg = config(llama_dir, {"sft": SFT}, tmp_path, num_processes=1, zero_stage=2)
    stage = plan(cfg, Hardware(1, 1, 80 * GiB)).stages[0]
    assert stage.notes == ("ZeRO-2 on 1 process: nothing to shard",) and stage.fits


# --------------------------------------------------------------------------------------------------
# Hardware sizes, shapes, and what does not fit


@pytest.mark.parametrize(
    ("text", "expected"),
    [("80GB", 80 * 10**9), ("80GiB", 80 * 2**30), ("141G", 141 * 10**9), ("24000MB", 24 * 10**9),
     ("79.6 GiB", int(79.6 * 2**30)), ("512B", 512), ("1tib", 2**40)],
)  # fmt: skip
def test_gpu_memory_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["80", "GB", "80 GiBs", "-1GB", "eighty GB"])
def test_gpu_memory_without_a_size_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--gpu-memory: expected a size such as 80GB"):
        parse_size(text)


def test_model_shapes_are_ref_equals_spec() -> None:
    assert parse_shapes(["registry:a:v1=llama-3.1-8b-shape"]) == {"registry:a:v1": "llama-3.1-8b-shape"}
    with pytest.raises(ConfigError, match=r"expected REF=SPEC"):
        parse_shapes(["registry:a:v1"])


def test_a_stage_that_does_not_fit_says_so_and_its_fixes_fit() -> None:
    hardware = Hardware(8, 1, parse_size("16GB"))
    planned = plan(load_config(QWEN_EXAMPLE), hardware)
    failing = [s for s in planned.stages if not s.fits]
    assert [s.stage for s in failing] == ["sft", "reward", "policy"] and not planned.fits
    lines = reasons(planned)
    assert lines[0].startswith(f"stage sft: needs {failing[0].total / GiB:.1f} GiB per GPU, 14.9 GiB available; "
                               "would fit with: stages.sft.")  # fmt: skip
    assert summary(planned) == (
        "plan: sft, reward, policy do not fit on 8 x 14.9 GiB; planned: 3 stages and the closing evaluation"
    )
    for stage in failing:
        assert stage.fixes
        for fix in stage.fixes:
            fixed = plan(load_config(QWEN_EXAMPLE, list(fix)), hardware)
            assert next(s for s in fixed.stages if s.stage == stage.stage).fits, fix


def test_when_no_single_change_fits_the_cheapest_combination_does() -> None:
    hardware = Hardware(8, 1, parse_size("8GB"))
    sft = plan(load_config(QWEN_EXAMPLE), hardware).stages[0]
    (combination,) = sft.fixes
    assert len(combination) > 1 and "stages.sft.gradient_checkpointing=true" in combination
    replanned = plan(load_config(QWEN_EXAMPLE, list(combination)), hardware).stages[0]
    assert replanned.fits
    alone = plan(load_config(QWEN_EXAMPLE, ["stages.sft.gradient_checkpointing=true"]), hardware).stages[0]
    assert not alone.fits


def test_the_table_shows_every_component_of_every_stage() -> None:
    planned = plan(load_config(QWEN_EXAMPLE), Hardware(8, 1, parse_size("80GB")))
    lines = format_plan(planned)
    assert lines[0].split() == ["sft", "reward", "policy", "evaluate"]
    for label in ("weights", "gradients", "optimizer states", "frozen models", "activations",
                  "act. (checkpointing)", "logits", "gathered weights", "KV cache", "runtime", "peak per GPU"):  # fmt: skip
        assert any(line.startswith(label) for line in lines), label
    assert lines[-1] == summary(planned) and planned.fits


# --------------------------------------------------------------------------------------------------
# The command


def test_plan_json_of_the_quickstart() -> None:
    done = run_cli("plan", "configs/quickstart.yaml", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["format"] == 1 and result["fits"] is True and result["summary"].startswith("plan: 5 stages")
    assert [s["stage"] for s in result["stages"]] == [
        "sft", "reward", "policy-dpo", "policy-ppo", "policy-kto", "evaluate"
    ]  # fmt: skip
    for stage in result["stages"]:
        sizes = stage["bytes"]
        assert sizes["total"] == sizes["runtime"] + max(sizes["training_phase"], sizes["generation_phase"])
        assert stage["fits"] and sizes["total"] <= stage["available_bytes"]
    if result["device"] == "cpu":  # no GPU here: host memory per process, fp32 for `auto`
        assert {s["precision"] for s in result["stages"]} == {"fp32"}
        assert "no GPU: host memory available / 1 process" in result["summary"]


def test_plan_exits_1_with_the_reason_when_a_stage_does_not_fit() -> None:
    done = run_cli("plan", str(QWEN_EXAMPLE), "--gpus-per-node", "8", "--gpu-memory", "4GB")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("stage sft: needs ") and "3.7 GiB available; " in line for line in lines)
    assert lines[-1].startswith("plan: sft, reward, policy do not fit on 8 x 3.7 GiB")


def test_plan_and_help_import_no_heavy_library() -> None:
    script = (
        "import contextlib, io, sys\n"
        "from rlhf.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    assert main(['plan', 'configs/quickstart.yaml', '--gpu-memory', '80GB']) == 0\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'deepspeed', 'trl', 'peft',\n"
        "                                                  'datasets', 'wandb', 'accelerate'}\n"
        "assert not heavy, sorted(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_run_refuses_a_plan_that_cannot_fit_before_anything_starts(tmp_path: Path) -> None:
    """An 8B shape trained in full in fp32 on this machine's memory: `rlhf run` stops with the reason."""
    done = run_cli("run", "configs/quickstart.yaml", "model=llama-3.1-8b-shape", "tracking=none",
                   f"runs_dir={tmp_path / 'runs'}", f"registry={tmp_path / 'registry'}")  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage sft: needs ") and last.endswith(
        "(rlhf run --force-plan to run anyway)"
    )
    assert "plan: " in done.stdout and not (tmp_path / "runs").exists()


def test_the_gpu_checks_real_size_pipeline_is_valid_and_fits_one_h200() -> None:
    """scripts/gpu_check.sh runs only where a GPU is lent: its overrides are checked here, on the plan it
    will compare against (bf16 in every trained stage, ZeRO-3, one 141 GB GPU)."""
    script = (REPO / "scripts" / "gpu_check.sh").read_text(encoding="utf-8").replace("\\\n", " ")
    overrides = re.search(r"bench/shape_stages\.py (.+?) 2>&1", script).group(1).split()
    done = run_cli("plan", "configs/shapes/qwen2.5-0.5b-cpu.yaml", *overrides, "--gpus-per-node", "1",
                   "--gpu-memory", "141GB", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["device"] == "gpu" and result["fits"] is True
    trained = [s for s in result["stages"] if s["kind"] != "evaluation"]
    assert [s["stage"] for s in trained] == ["sft", "reward", "policy-dpo", "policy-ppo"]
    assert {(s["precision"], s["zero_stage"]) for s in trained} == {("bf16", 3)}
