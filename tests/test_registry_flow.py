"""The registry as the stages use it: SFT publishes with lineage, later stages consume references,
wandb sees the artifacts, LoRA versions point at their base, and the `rlhf registry` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.launch import run_standalone
from rlhf.models import load_causal_lm
from rlhf.registry import Registry
from rlhf.settings import ModelSpec
from rlhf.tracking import read_offline_run
from stages import sft
from tests.conftest import pipeline_config
from tests.conftest import run_cli as cli

CONFIG = """
name: registry-flow
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 400, num_sft_eval: 16, num_preference_tasks: 10}
stages:
  sft:
    learning_rate: 3.0e-3
    per_device_train_batch_size: 16
    max_steps: 4
    max_length: 64
    num_threads: 1
    evaluation: null
tracking: {backend: wandb, project: registry-flow}
"""


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    return pipeline_config(tmp_path, CONFIG)


def test_stages_publish_consume_and_record_lineage(config_file: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    first = run_standalone("sft", sft.run, str(config_file), [], str(tmp_path / "run1"))
    assert first.ref == "sft-policy:v1"
    assert not (tmp_path / "run1" / "sft" / "output").exists()  # moved into the registry, not copied
    manifest = registry.manifest("sft-policy:v1")
    assert manifest.base_model == "tiny-llama" and manifest.parents == [] and manifest.stage == "sft"
    assert {d["name"] for d in manifest.datasets} == {"sft_train", "sft_eval"}
    assert all(len(d["fingerprint"]) == 64 for d in manifest.datasets)
    assert manifest.config["learning_rate"] == pytest.approx(3e-3) and manifest.metrics["steps"] == 4

    # the stage's wandb run logged a model artifact that references the version's files
    (run_file,) = (tmp_path / "run1" / "wandb").glob("offline-run-*/run-*.wandb")
    wandb_run = read_offline_run(run_file)
    assert manifest.wandb_run_id == wandb_run["run_id"]
    (artifact,) = wandb_run["artifacts"]
    assert artifact["name"] == "sft-policy" and set(artifact["aliases"]) >= {"v1", "latest"}
    version_uri = registry.resolve("sft-policy:v1").as_uri()
    assert f"{version_uri}/model.safetensors" in artifact["references"]
    assert all(
        ref.startswith(version_uri + "/") for ref in artifact["references"]
    )  # files referenced, not uploaded

    # a later stage starts from a reference, never a path; its parent is the concrete version
    second = run_standalone("sft", sft.run, str(config_file), ["stages.sft.model=registry:sft-policy:latest"],
                            str(tmp_path / "run2"))  # fmt: skip
    assert second.ref == "sft-policy:v2"
    child = registry.manifest("sft-policy:v2")
    assert child.parents == ["sft-policy:v1"] and child.base_model == "tiny-llama"
    lineage = registry.lineage("sft-policy:v2")
    assert lineage["parents"][0]["ref"] == "sft-policy:v1"
    (run_file,) = (tmp_path / "run2" / "wandb").glob("offline-run-*/run-*.wandb")
    assert read_offline_run(run_file)["config"]["inputs"]["models"] == ["sft-policy:v1"]


def test_unknown_reference_is_one_line_listing_what_exists(config_file: Path, tmp_path: Path) -> None:
    run_standalone("sft", sft.run, str(config_file), ["tracking=none"], str(tmp_path / "run"))
    done = cli("stage", "sft", str(config_file), "tracking=none", "stages.sft.model=registry:sft-policy:v9")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert "sft-policy has no version or alias 'v9'" in line and "v1" in line and "latest" in line


def test_a_corrupted_version_fails_loudly_on_load(config_file: Path, tmp_path: Path) -> None:
    result = run_standalone("sft", sft.run, str(config_file), ["tracking=none"], str(tmp_path / "run"))
    weights = result.output_dir / "model.safetensors"
    weights.chmod(0o644)
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size - 10)
    done = cli("stage", "sft", str(config_file), "tracking=none", "stages.sft.model=registry:sft-policy:v1")
    assert done.returncode == 2
    assert "model.safetensors" in done.stderr.strip().splitlines()[-1]
    verify = cli("registry", "verify", "--registry", str(tmp_path / "registry"))
    assert verify.returncode == 2 and "sft-policy:v1: model.safetensors" in verify.stdout


@pytest.mark.slow
def test_lora_version_points_at_its_base_and_exports_merged(config_file: Path, tmp_path: Path) -> None:
    lora = [
        "tracking=none",
        "stages.sft.lora.r=4",
        "stages.sft.lora.alpha=8",
        "stages.sft.learning_rate=1e-2",
    ]
    first = run_standalone("sft", sft.run, str(config_file), lora, str(tmp_path / "run1"))
    again = run_standalone("sft", sft.run, str(config_file), lora, str(tmp_path / "run2"))
    registry = Registry(tmp_path / "registry")
    manifest = registry.manifest(first.ref)
    assert manifest.lora_base == "registry:tiny-llama:v1"
    assert not any(f.path == "model.safetensors" for f in manifest.files)  # adapter only
    assert registry.manifest(again.ref).lora_base == "registry:tiny-llama:v1"  # the same base, stored once
    assert [m.version for m in registry.list()["tiny-llama"].versions] == ["v1"]
    refusal = cli("registry", "rm", "tiny-llama:v1", "--registry", str(tmp_path / "registry"))
    assert refusal.returncode == 2 and "sft-policy" in refusal.stderr

    ids = torch.tensor([[4, 5, 6, 7, 8]])
    model, _ = load_causal_lm(
        ModelSpec(name=str(first.output_dir), base=str(registry.resolve("tiny-llama:v1")))
    )
    before = model.eval()(ids).logits
    for merge in (True, False):
        out = tmp_path / f"export-{merge}"
        args = ["registry", "export", first.ref, "--to", str(out), "--registry", str(tmp_path / "registry")]
        done = cli(*args, *(["--merge-lora"] if merge else []))
        assert done.returncode == 0, done.stderr[-2000:]
        from transformers import AutoModelForCausalLM

        exported = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no registry
        assert (out / "adapter_config.json").exists() != merge
        assert torch.allclose(exported(ids).logits, before, atol=1e-5)


def test_registry_commands(config_file: Path, tmp_path: Path) -> None:
    reg = ["--registry", str(tmp_path / "registry")]
    for lr in ("3e-3", "1e-2"):
        run_standalone("sft", sft.run, str(config_file), ["tracking=none", f"stages.sft.learning_rate={lr}"],
                       str(tmp_path / f"run-{lr}"))  # fmt: skip
    listing = cli("registry", "ls", *reg)
    assert listing.returncode == 0 and "sft-policy" in listing.stdout and "v2" in listing.stdout
    shown = json.loads(cli("registry", "show", "sft-policy:v1", *reg).stdout)
    assert shown["version"] == "v1" and shown["files"]
    losses = [
        json.loads(cli("registry", "show", f"sft-policy:{v}", *reg).stdout)["metrics"]["eval_loss"]
        for v in ("v1", "v2")
    ]
    best = "v1" if losses[0] < losses[1] else "v2"  # ties go to the newest
    promoted = cli("registry", "promote", "sft-policy", "--metric", "eval_loss", "--lower-is-better", *reg)
    assert promoted.returncode == 0 and promoted.stdout.strip() == f"best -> sft-policy:{best}"
    worse = "v2" if best == "v1" else "v1"
    refused = cli(
        "registry", "promote", f"sft-policy:{worse}", "--metric", "eval_loss", "--lower-is-better", *reg
    )
    assert losses[0] == losses[1] or (refused.returncode == 2 and "eval_loss" in refused.stderr)
    assert cli("registry", "alias", "sft-policy:v1", "candidate", *reg).returncode == 0
    assert Registry(tmp_path / "registry").resolve("sft-policy:candidate").name == "v1"
    tree = cli("registry", "lineage", "sft-policy:v2", *reg)
    assert "dataset sft_train" in tree.stdout and "base model tiny-llama" in tree.stdout
    assert cli("registry", "verify", *reg).stdout.strip().endswith("all files intact")
    assert cli("registry", "rm", "sft-policy:v2", *reg).returncode == 0
    assert "v2" not in cli("registry", "ls", *reg).stdout
    assert cli("registry", "gc", *reg).returncode == 0
    bad = cli("registry", "show", "../etc:v1", *reg)
    assert bad.returncode == 2 and "bad model name" in bad.stderr


def test_register_an_external_checkpoint(tiny_llama_dir: Path, tmp_path: Path) -> None:
    done = cli("registry", "add", "external-base", str(tiny_llama_dir), "--registry", str(tmp_path / "reg"))
    assert done.returncode == 0 and "added external-base:v1" in done.stdout
    path = Registry(tmp_path / "reg").resolve("external-base:v1")
    stored, original = path / "model.safetensors", tiny_llama_dir / "model.safetensors"
    assert stored.stat().st_ino != original.stat().st_ino  # copied: the registry owns its files
    assert stored.read_bytes() == original.read_bytes()  # and the user's files stay
