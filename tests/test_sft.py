"""Stage 1, SFT: learns the built-in task, LoRA, packing, messages data, completion-only loss, resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.errors import StageError
from rlhf.eval import evaluate_model
from rlhf.launch import run_standalone
from rlhf.models import load_causal_lm
from rlhf.settings import ModelSpec
from rlhf.training import LossWatch
from rlhf.workspace import standalone_context
from stages import sft
from tests.conftest import REPO, pipeline_config

CONFIG = """
name: sft-test
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 2400, num_sft_eval: 64, num_preference_tasks: 50}
stages:
  sft:
    learning_rate: 3.0e-3
    num_train_epochs: 3
    per_device_train_batch_size: 32
    max_length: 64
    logging_steps: 5
    save_steps: 1000
    num_threads: 1
    evaluation: {max_new_tokens: 12}
tracking: none
"""


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    return pipeline_config(tmp_path, CONFIG)


@pytest.mark.slow
def test_sft_learns_the_task(config_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_standalone("sft", sft.run, str(config_file), [], str(run_dir))
    m = result.metrics
    assert m["train_loss_last"] < 0.8 * m["train_loss_first"]
    assert "eval_loss" in m

    cfg = load_config(config_file)
    base = evaluate_model(ModelSpec(name=str(run_dir / "base-model" / "tiny-llama")),
                          str(run_dir / "data" / "synthetic" / "eval_prompts.jsonl"),
                          cfg.stages.sft.evaluation, "synthetic", cfg.seed)  # fmt: skip
    assert m["gold_reward"] > base["gold_reward"] + 0.15, (m, base)
    assert m["eos_share"] > 0.9  # learned to stop
    # the product is an ordinary HF directory with safetensors and the resolved config is kept
    assert any(result.output_dir.glob("*.safetensors"))
    load_causal_lm(ModelSpec(name=str(result.output_dir)))
    assert (run_dir / "config.yaml").is_file()
    saved = json.loads((run_dir / "sft" / "result.json").read_text())
    assert saved["metrics"]["gold_reward"] == pytest.approx(m["gold_reward"])


@pytest.mark.slow
def test_sft_with_lora_saves_an_adapter(config_file: Path, tmp_path: Path) -> None:
    overrides = ["stages.sft.lora.r=8", "stages.sft.lora.alpha=16", "stages.sft.learning_rate=1e-2",
                 "stages.sft.max_steps=40"]  # fmt: skip
    result = run_standalone("sft", sft.run, str(config_file), overrides, str(tmp_path / "run"))
    assert (result.output_dir / "adapter_config.json").is_file()
    assert not (result.output_dir / "model.safetensors").exists()  # adapter only, base untouched
    assert result.metrics["train_loss_last"] < result.metrics["train_loss_first"]
    model, _ = load_causal_lm(ModelSpec(name=str(result.output_dir)))
    assert any("lora_" in name for name, _ in model.named_parameters())


def _context(config_file: Path, run_dir: Path, overrides: list[str]):
    return standalone_context(load_config(config_file, overrides), "sft", run_dir)


def test_loss_is_on_the_completion_only(config_file: Path, tmp_path: Path) -> None:
    stage_cfg, ctx = _context(config_file, tmp_path / "run", [])
    trainer = sft.build_trainer(stage_cfg, ctx)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    tokenizer = trainer.processing_class
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    prompt_text = json.loads(Path(ctx.inputs["sft_train"]).read_text().splitlines()[0])["prompt"][0][
        "content"
    ]
    assert prompt_text.split()[0] not in trained.split()  # no prompt word is a training target
    assert trained.split()[-1] == "<|end|>"  # the policy learns to stop


def test_messages_data_with_packing_trains_assistant_turns(config_file: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (Path(_context(config_file, tmp_path / "r0", [])[1].inputs["sft_train"])
                                          .read_text().splitlines()[:256])]  # fmt: skip
    data = tmp_path / "messages.jsonl"
    data.write_text("".join(json.dumps({"messages": r["prompt"] + r["completion"]}) + "\n" for r in rows))
    overrides = [f"stages.sft.dataset={data}", "stages.sft.packing=true", "stages.sft.max_steps=6",
                 "stages.sft.evaluation=null", "stages.sft.logging_steps=1"]  # fmt: skip
    stage_cfg, ctx = _context(config_file, tmp_path / "run", overrides)
    trainer = sft.build_trainer(stage_cfg, ctx)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["input_ids"].shape[0] == 1  # packed: several conversations in one row
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = trainer.processing_class.convert_ids_to_tokens(
        [t for t, lab in zip(ids, labels, strict=True) if lab != -100]
    )
    # only assistant turns are targets: their words and their end marker, never a user turn or role marker
    turns = trainer.processing_class.convert_ids_to_tokens(ids).count("<|assistant|>")
    assert turns >= 2 and trained.count("<|end|>") == turns
    assert not {"<|user|>", "<|assistant|>", "name", "list", "give", "tell", "me", "please"} & set(trained)
    result = run_standalone("sft", sft.run, str(config_file), overrides, str(tmp_path / "run2"))
    assert result.metrics["steps"] == 6


@pytest.mark.slow
def test_sft_resumes_from_its_last_checkpoint(config_file: Path, tmp_path: Path) -> None:
    overrides = ["stages.sft.max_steps=20", "stages.sft.save_steps=10", "stages.sft.save_total_limit=null",
                 "stages.sft.evaluation=null"]  # fmt: skip
    run_dir = tmp_path / "run"
    first = run_standalone("sft", sft.run, str(config_file), overrides, str(run_dir))
    assert first.metrics["resumed_from_step"] == 0
    # Simulate a crash after step 10: only the first checkpoint survived.
    shutil.rmtree(run_dir / "sft" / "checkpoints" / "checkpoint-20")
    again = run_standalone("sft", sft.run, str(config_file), overrides, str(run_dir))
    assert again.metrics["resumed_from_step"] == 10
    assert again.metrics["steps"] == 20
    assert (first.ref, again.ref) == ("sft-policy:v1", "sft-policy:v2")


def test_nan_loss_stops_the_stage_with_a_clear_error() -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    watch = LossWatch()
    state = TrainerState(global_step=7)
    args = TrainingArguments(output_dir="ckpts", use_cpu=True, report_to="none")
    watch.on_log(args, state, TrainerControl(), logs={"loss": 2.5})
    with pytest.raises(StageError, match="loss became nan at step 7; last good checkpoint kept in ckpts"):
        watch.on_log(args, state, TrainerControl(), logs={"loss": float("nan")})


@pytest.mark.slow
def test_stage_runs_as_a_module(config_file: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "stages.sft", "--config", str(config_file), "--run-dir", str(tmp_path / "run"),
           "stages.sft.max_steps=3", "stages.sft.evaluation=null"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        f"published sft-policy:v1 ({tmp_path / 'registry' / 'models' / 'sft-policy' / 'v1'})" in done.stdout
    )
    assert (tmp_path / "registry" / "models" / "sft-policy" / "v1" / "model.safetensors").is_file()


def test_stage_module_reports_bad_data_in_one_line(config_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completion": "y"}\n{oops\n')
    cmd = [sys.executable, "-m", "stages.sft", "--config", str(config_file), f"stages.sft.dataset={bad}",
           "--run-dir", str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1]
        == f"error: [rank 0] {bad}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    )
    assert "Traceback" not in done.stderr
