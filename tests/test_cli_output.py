"""What the CLI prints through a pipe: tables never cut, and `--json` documents (format 1) that parse and say
what the library says, with nothing else on stdout. A real registry, real run records, a real import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.registry import Registry
from rlhf.runs import RunRecord
from tests.conftest import run_cli
from tests.test_registry import model_dir

# Longer than an 80-column table leaves a cell: rich's default width when stdout is not a terminal.
SFT = "sft-policy-with-a-long-name-that-no-narrow-table-cell-holds"
REWARD = "reward-model-with-an-even-longer-name-for-the-table-test"
POLICY = "policy-trained-with-direct-preference-optimization-long"
METRICS = {
    "evaluation_gold_reward_mean_over_held_out_prompts": 0.75,
    "evaluation_response_tokens_mean_over_held_out_prompts": 11.0,
    "train_loss_last_logged_value_before_the_end": 1.25,
    "reward_model_accuracy_on_majority_labels": 2.0,
    "gold_win_rate_against_the_reference_policy": 3.0,
}
PIPELINE = "pipeline-whose-run-names-an-eighty-column-table-would-cut"
DATASET = {
    "name": "preferences-imported",
    "fingerprint": "f" * 64,
    "path": "/data/a/long/path/to/preferences",
}


def cli_json(*args: str) -> dict:
    """A `--json` answer: stdout must be exactly one JSON document."""
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Three long-named models: SFT (two versions), a reward model from SFT v1, a policy from both."""
    folder = tmp_path_factory.mktemp("cli-output")
    reg = Registry(folder / "registry")
    reg.publish(SFT, model_dir(folder / "sft1"), stage="sft", base_model="tiny-llama", metrics=METRICS)
    reg.publish(
        SFT, model_dir(folder / "sft2", seed=1), stage="sft", base_model="tiny-llama", metrics={"loss": 1}
    )
    reg.publish(REWARD, model_dir(folder / "rm", seed=2), stage="reward", parents=[f"{SFT}:v1"])
    reg.publish(POLICY, model_dir(folder / "policy", seed=3), stage="policy", parents=[f"{SFT}:v2", f"{REWARD}:v1"],
                datasets=[DATASET], metrics={"kl": 0.5})  # fmt: skip
    reg.set_alias(f"{POLICY}:v1", "production-candidate")
    return reg


def test_registry_ls_through_a_pipe_keeps_every_name_and_version_whole(registry: Registry) -> None:
    done = run_cli("registry", "ls", "--registry", str(registry.root))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for name, entry in registry.list().items():
        for manifest in entry.versions:  # name and version on one row: neither cut nor wrapped
            assert any(f" {name} " in line and f" {manifest.version} " in line for line in lines), name
    assert "production-candidate" in done.stdout
    stored = list(registry.manifest(f"{SFT}:v1").metrics)  # in the registry's order
    shown, hidden = stored[:3], stored[3:]
    assert all(f"{metric}=" in done.stdout for metric in shown)
    assert not any(metric in done.stdout for metric in hidden)
    assert "(+2 more)" in done.stdout and "rlhf registry ls --json" in done.stdout  # the caption says where


def test_registry_ls_json_lists_every_version_with_all_its_metrics(registry: Registry) -> None:
    document = cli_json("registry", "ls", "--registry", str(registry.root))
    assert document["format"] == 1 and document["registry"] == str(registry.root)
    listing = registry.list()
    assert [model["name"] for model in document["models"]] == list(listing)
    for model in document["models"]:
        entry = listing[model["name"]]
        assert model["aliases"] == entry.aliases
        assert [v["ref"] for v in model["versions"]] == [m.ref for m in entry.versions]
        for version, manifest in zip(model["versions"], entry.versions, strict=True):
            assert version["metrics"] == manifest.metrics  # all of them, not the table's first 3
            assert (version["version"], version["stage"], version["parents"], version["created_at"]) == (
                manifest.version, manifest.stage, manifest.parents, manifest.created_at,
            )  # fmt: skip
            assert version["aliases"] == [a for a, v in entry.aliases.items() if v == manifest.version]
    policy = next(m for m in document["models"] if m["name"] == POLICY)["versions"][0]
    assert policy["aliases"] == ["latest", "production-candidate"]


def test_registry_show_accepts_json_and_prints_the_manifest(registry: Registry) -> None:
    document = cli_json("registry", "show", f"{SFT}:v1", "--registry", str(registry.root))
    assert document == registry.manifest(f"{SFT}:v1").to_dict()
    assert document["metrics"] == METRICS


def test_registry_lineage_json_is_the_registrys_tree_and_the_tree_is_whole(registry: Registry) -> None:
    ref = f"{POLICY}:v1"
    document = cli_json("registry", "lineage", ref, "--registry", str(registry.root))
    assert document == {"format": 1, "lineage": registry.lineage(ref)}
    parents = [parent["ref"] for parent in document["lineage"]["parents"]]
    assert parents == [f"{SFT}:v2", f"{REWARD}:v1"]
    assert document["lineage"]["datasets"] == [DATASET]
    done = run_cli("registry", "lineage", ref, "--registry", str(registry.root))
    assert done.returncode == 0, done.stderr[-2000:]
    for text in (ref, f"{SFT}:v2", f"{SFT}:v1", f"{REWARD}:v1", DATASET["path"], "base model tiny-llama"):
        assert text in done.stdout


def test_registry_verify_json_reports_a_tampered_file_and_exits_2(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.publish(SFT, model_dir(tmp_path / "sft1"))
    reg.publish(SFT, model_dir(tmp_path / "sft2", seed=1))
    assert cli_json("registry", "verify", "--registry", str(reg.root)) == {
        "format": 1,
        "problems": [],
        "ok": True,
    }

    weights = reg.root / "models" / SFT / "v1" / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size, other bytes
    done = run_cli("registry", "verify", "--registry", str(reg.root), "--json")
    assert done.returncode == 2
    document = json.loads(done.stdout)  # nothing but the document on stdout; the error line on stderr
    assert document["format"] == 1 and document["ok"] is False
    assert len(document["problems"]) == 1 and "model.safetensors" in document["problems"][0]
    assert document["problems"] == reg.verify()
    assert "1 problem(s)" in done.stderr
    one = run_cli("registry", "verify", f"{SFT}:v2", "--registry", str(reg.root), "--json")
    assert one.returncode == 0 and json.loads(one.stdout)["ok"] is True


def _runs(runs_dir: Path) -> tuple[RunRecord, RunRecord]:
    """A failed run and one whose process died while it was running; nothing trained."""
    names = [f"{PIPELINE}-20261208-00000{i}-000{i}" for i in (1, 2)]  # wider than an 80-column table
    for name in names:
        (runs_dir / name).mkdir(parents=True)
    failed = RunRecord.start(runs_dir / names[0], PIPELINE, "c" * 64, ["sft", "reward", "policy"])
    failed.stage("sft", "running")
    failed.stage("sft", "done", ref=f"{SFT}:v1", fingerprint="a" * 64, seconds=12.5, log="sft/stage.log")
    failed.stage("reward", "failed", error="reward: out of memory", log="reward/stage.log")
    failed.finish(30.0, error="reward failed")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    interrupted = RunRecord.start(runs_dir / names[1], PIPELINE, "d" * 64, ["sft"])
    interrupted.started_at = "2099-01-01T00:00:00+0000"  # listed after the failed one
    interrupted.pid = int(dead.stdout)  # gone: the record still says running
    interrupted.save()
    return failed, interrupted


def test_status_json_and_piped_tables(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    failed, interrupted = _runs(runs_dir)

    document = cli_json("status", "--runs-dir", str(runs_dir))
    assert document["format"] == 1 and document["runs_dir"] == str(runs_dir)
    assert [run["name"] for run in document["runs"]] == [
        Path(failed.run_dir).name,
        Path(interrupted.run_dir).name,
    ]
    first, second = document["runs"]
    assert (first["state"], first["seconds"], first["error"]) == ("failed", 30.0, "reward failed")
    assert second["state"] == "interrupted" and second["seconds"] is None
    assert first["stages"]["sft"] == {
        "status": "done", "ref": f"{SFT}:v1", "fingerprint": "a" * 64, "started": failed.stages["sft"].started_at,
        "seconds": 12.5, "log": "sft/stage.log", "error": None,
    }  # fmt: skip
    assert first["stages"]["reward"]["error"] == "reward: out of memory"
    assert first["stages"]["policy"]["status"] == "skipped"

    one = cli_json("status", failed.run_dir)
    assert one == {"format": 1, "run": first}

    table = run_cli("status", "--runs-dir", str(runs_dir))
    assert table.returncode == 0, table.stderr[-2000:]
    assert Path(failed.run_dir).name in table.stdout and Path(interrupted.run_dir).name in table.stdout
    assert "interrupted" in table.stdout
    stages = run_cli("status", failed.run_dir)
    assert failed.run_dir in stages.stdout and "a" * 64 in stages.stdout and f"{SFT}:v1" in stages.stdout


def test_data_import_json_has_the_identity_and_the_paths(tmp_path: Path) -> None:
    rows = [{"prompt": f"name animal {i}", "chosen": f"cat {i}", "rejected": f"red {i}"} for i in range(4)]
    rows.append({"prompt": "name a fruit", "chosen": "apple", "rejected": "apple"})  # identical: quarantined
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "prefs"

    document = cli_json("data", "import", str(source), "--out", str(out), "--test-fraction", "0")
    manifest = json.loads((out / "manifest.json").read_text())
    assert document["format"] == 1 and document["kind"] == "preferences"
    assert document["out_dir"] == str(out) and document["fingerprint"] == manifest["fingerprint"]
    counts = document["counts"]
    assert (counts["read"], counts["kept"], counts["quarantined"], counts["duplicates"]) == (5, 4, 1, 0)
    assert (counts["train"], counts["test"], counts["merged"], counts["conflicts"]) == (4, 0, 0, 0)
    assert sum(counts["by_reason"].values()) == 1 and counts["by_reason"] == manifest["counts"]["by_reason"]
    paths = document["paths"]
    assert set(paths) == {"report", "manifest", "quarantine", "duplicates"}
    assert all(Path(path).parent == out for path in paths.values())
    assert Path(paths["report"]).is_file() and len(Path(paths["quarantine"]).read_text().splitlines()) == 1


def test_eval_json_has_the_metrics_and_every_sample_row(tiny_llama_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "name two animals"}\n{"prompt": "count to three"}\n')
    document = cli_json("eval", str(tiny_llama_dir), "--reference", str(tiny_llama_dir), "--prompts", str(prompts),
                        "--samples-per-prompt", "2", "--max-new-tokens", "4", "--tracking", "none",
                        "--run-dir", str(tmp_path / "eval"), "--registry", str(tmp_path / "registry"))  # fmt: skip
    assert document["format"] == 1
    assert document["metrics"]["kl"] == pytest.approx(0.0, abs=1e-6)  # a model against itself
    assert {"policy_eos_share", "reference_response_tokens"} <= set(document["metrics"])
    assert document["columns"] == ["prompt", "policy", "reference"]
    samples = document["samples"]
    assert len(samples) == 4 and all(set(row) == {"prompt", "policy", "reference"} for row in samples)
    assert {row["prompt"] for row in samples} == {"name two animals", "count to three"}
    assert all(row["policy"] == row["reference"] for row in samples)  # same model, same seed
