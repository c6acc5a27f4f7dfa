"""The run report, from run directories built by hand the way the pipeline leaves them (nothing trains here):
its figures are real PNGs, its Markdown links them, a partial run still gets one, and wandb gets it too."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf.config import TrackingConfig
from rlhf.distributed import RankInfo
from rlhf.run_report import log_report, write_report
from rlhf.stage import HISTORY_FILE
from rlhf.tracking import read_offline_run
from rlhf.training import save_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SFT = {"steps": 40, "resumed_from_step": 0, "train_loss_first": 4.1, "train_loss_last": 1.2, "eval_loss": 1.3,
       "eos_share": 0.9, "response_tokens": 6.2, "gold_reward": 0.41}  # fmt: skip
REWARD = {"steps": 30, "resumed_from_step": 0, "train_loss_first": 0.69, "train_loss_last": 0.41,
          "eval_loss": 0.5, "pairs_train": 180, "pairs_test": 20, "pairs_truncated": 0, "pairs_quarantined": 0,
          "ties_skipped": 3, "reward_mean": 0.1, "reward_std": 1.2, "train_accuracy": 0.86, "accuracy": 0.8,
          "accuracy_gold": 0.9, "pairs_gold": 18}  # fmt: skip
DPO = {"pairs_train": 180, "pairs_eval": 20, "ties_dropped": 3, "steps": 20, "resumed_from_step": 0,
       "train_loss_first": 0.693, "train_loss_last": 0.52, "reward_margin_first": 0.0, "reward_margin_last": 0.6,
       "reward_accuracy_first": 0.5, "reward_accuracy_last": 0.8, "eval_loss": 0.55, "eos_share": 0.95,
       "response_tokens": 5.8, "gold_reward": 0.55}  # fmt: skip
PPO = {"prompts": 150, "steps": 4, "resumed_from_step": 0, "ppo_score_raw_mean_first": -0.2,
       "ppo_score_raw_mean_last": 0.9, "ppo_kl_first": 0.0, "ppo_kl_last": 2.1, "eos_share": 0.97,
       "response_tokens": 5.1, "gold_reward": 0.6}  # fmt: skip


def evaluation(kl: float, gold: float, rm: float) -> dict[str, float]:
    """What `evaluate_policy` reports with a gold task and a judge, against the same SFT reference."""
    return {"policy_eos_share": 0.95, "policy_response_tokens": 5.5, "policy_gold_reward": gold,
            "reference_eos_share": 0.9, "reference_response_tokens": 6.2, "reference_gold_reward": 0.41,
            "kl": kl, "gold_win_rate": 0.62, "policy_rm_score": rm, "reference_rm_score": 0.1,
            "rm_win_rate": 0.66}  # fmt: skip


def stage_result(stage: str, metrics: dict, ref: str, parents: list[str] | None = None) -> dict:
    """A StageResult as the pipeline's summary (and the stage's result.json) records it."""
    return {"stage": stage, "output_dir": f"/registry/models/{ref.replace(':', '/')}", "metrics": metrics,
            "publish_as": ref.split(":")[0], "parents": parents or [], "ref": ref, "seconds": 31.6,
            "cached": False}  # fmt: skip


def trainer_log(
    steps: int, eval_every: int, train: dict[str, float], evaluated: dict[str, float]
) -> list[dict]:
    """A TRL trainer's `state.log_history`: training rows, eval rows, and the closing summary row."""
    rows: list[dict] = []
    for step in range(1, steps + 1):
        rows.append({**{k: v / step for k, v in train.items()}, "grad_norm": 1.0, "learning_rate": 1e-3,
                     "epoch": step / steps, "step": step})  # fmt: skip
        if step % eval_every == 0:
            rows.append({**{k: v / step for k, v in evaluated.items()}, "eval_runtime": 0.1, "step": step})
    rows.append({"train_runtime": 3.0, "train_loss": 1.0, "total_flos": 0.0, "epoch": 1.0, "step": steps})
    return rows


def ppo_updates(updates: int) -> list[dict[str, float]]:
    """`PPOOutcome.history`: one row per update, numbered by `update`."""
    return [{"update": u, "score_raw_mean": -0.2 + 0.3 * u, "kl": 0.5 * u, "loss": 1.0 / u, "policy_loss": -0.1 / u,
             "value_loss": 0.5 / u, "entropy": 2.0, "clipfrac": 0.1, "approx_kl": 0.01, "kl_coef": 0.05}
            for u in range(1, updates + 1)]  # fmt: skip


def context(work_dir: Path, rank: int = 0) -> SimpleNamespace:
    """The two things `save_history` takes from a StageContext."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(work_dir=work_dir, rank=RankInfo(rank=rank, world_size=2))


HISTORIES = {
    "sft": (trainer_log(8, 4, {"loss": 4.0, "mean_token_accuracy": 0.1}, {"eval_loss": 3.0, "eval_mean_token_accuracy": 0.2}), "step"),
    "reward": (trainer_log(6, 3, {"loss": 0.7, "accuracy": 0.5, "margin": 0.1}, {"eval_loss": 0.7, "eval_accuracy": 0.6, "eval_margin": 0.2}), "step"),
    "policy-dpo": (trainer_log(6, 3, {"loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.1}, {"eval_loss": 0.6, "eval_rewards/accuracies": 0.6}), "step"),
    "policy-ppo": (ppo_updates(4), "update"),
}  # fmt: skip


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    """A run of sft, reward, and two policies (DPO, PPO), with evaluations, as `run_pipeline` leaves it."""
    run_dir = tmp_path / "runs" / "quickstart-20260101-120000"
    results = [stage_result("sft", SFT, "sft-policy:v1"), stage_result("reward", REWARD, "reward-model:v1"),
               stage_result("policy-dpo", DPO, "policy:v1"),
               stage_result("policy-ppo", PPO, "policy:v2", ["reward-model:v1"])]  # fmt: skip
    for result in results:
        (run_dir / result["stage"]).mkdir(parents=True)
        (run_dir / result["stage"] / "result.json").write_text(json.dumps(result), encoding="utf-8")
        history, step_key = HISTORIES[result["stage"]]
        save_history(context(run_dir / result["stage"]), history, step_key)
    summary = {"base_model": "tiny-llama", "base_metrics": {"eos_share": 0.0, "response_tokens": 24.0,
               "gold_reward": 0.02}, "stages": results,
               "evaluations": {"policy-dpo": evaluation(1.4, 0.55, 0.7), "policy-ppo": evaluation(2.3, 0.6, 1.1)}}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run_dir


@pytest.fixture(autouse=True)
def wandb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wandb's caches and staging (artifact files are copied there offline) stay in tmp_path."""
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path}: {len(data)} bytes, too small to hold a plot"


def test_finished_run_report_has_every_figure_linked_and_the_stages_metrics(finished_run: Path) -> None:
    report = write_report(finished_run)

    assert report == finished_run / "report.md"
    figures = sorted(p.name for p in (finished_run / "report").iterdir())
    assert figures == ["reward-accuracy.png", "reward-vs-kl.png", "training-policy-dpo.png",
                       "training-policy-ppo.png", "training-reward.png", "training-sft.png"]  # fmt: skip
    for name in figures:
        assert_png(finished_run / "report" / name)
    text = report.read_text(encoding="utf-8")
    for name in figures:
        assert f"](report/{name})" in text
    for ref in ("sft-policy:v1", "reward-model:v1", "policy:v1", "policy:v2"):
        assert f"`{ref}`" in text
    assert "| sft | `sft-policy:v1` | 32 s | train loss 4.1 → 1.2, eval loss 1.3," in text
    assert "accuracy vs majority 0.8, accuracy vs gold 0.9" in text
    assert "rollout score -0.2 → 0.9, KL 0 → 2.1" in text
    assert "| policy-ppo | 2.3 | 0.6 | 0.41 | 0.62 | 1.1 | 0.1 | 0.66 |" in text  # KL, gold, RM columns
    assert "Base model: `tiny-llama`" in text and "did not finish" not in text
    assert not list(finished_run.glob("*.tmp"))


def test_training_curves_come_from_the_saved_histories(finished_run: Path) -> None:
    ppo = json.loads((finished_run / "policy-ppo" / HISTORY_FILE).read_text(encoding="utf-8"))
    assert [row["step"] for row in ppo] == [1, 2, 3, 4] and "update" not in ppo[0]
    sft = json.loads((finished_run / "sft" / HISTORY_FILE).read_text(encoding="utf-8"))
    assert {"eval_loss", "loss", "mean_token_accuracy"} < {key for row in sft for key in row}

    (finished_run / "reward" / HISTORY_FILE).unlink()
    write_report(finished_run)  # again, over the first report's figures

    assert not (finished_run / "report" / "training-reward.png").exists()
    assert "training-reward.png" not in (finished_run / "report.md").read_text(encoding="utf-8")


def test_partial_run_without_summary_or_evaluations_still_gets_a_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "failed-run"
    (run_dir / "sft").mkdir(parents=True)
    (run_dir / "sft" / "result.json").write_text(json.dumps(stage_result("sft", SFT, "sft-policy:v1")))
    save_history(context(run_dir / "sft"), HISTORIES["sft"][0])
    save_history(context(run_dir / "reward"), HISTORIES["reward"][0])  # trained, then failed to publish
    (run_dir / "data").mkdir()
    (run_dir / "summary.json").write_text('{"base_model": "tiny-ll', encoding="utf-8")  # cut short

    text = write_report(run_dir).read_text(encoding="utf-8")

    assert sorted(p.name for p in (run_dir / "report").iterdir()) == [
        "training-reward.png",
        "training-sft.png",
    ]
    assert "did not finish" in text
    assert "| sft | `sft-policy:v1` |" in text
    assert "| reward | - | - | no result recorded (did not finish) |" in text
    assert "Policies against the SFT policy" not in text and "reward-vs-kl" not in text


def test_empty_run_directory_gets_a_report_without_figures(tmp_path: Path) -> None:
    text = write_report(tmp_path).read_text(encoding="utf-8")

    assert text.startswith(f"# Run `{tmp_path.name}`")
    assert list((tmp_path / "report").iterdir()) == []


def test_log_report_writes_a_report_run_with_the_images_and_the_report(finished_run: Path) -> None:
    report = write_report(finished_run)

    log_report(finished_run, report, TrackingConfig(mode="offline"))

    (run_path,) = (finished_run / "wandb").glob("offline-run-*")
    run = read_offline_run(run_path)
    assert (run["job_type"], run["group"], run["exit_code"]) == ("report", finished_run.name, 0)
    (images,) = [row for row in run["history"] if "report/reward-vs-kl" in row]
    figures = sorted((finished_run / "report").glob("*.png"))
    for figure in figures:
        image = images[f"report/{figure.stem}"]
        assert image["_type"] == "image-file" and image["format"] == "png"
        assert_png(run_path / "files" / image["path"])
    (artifact,) = run["artifacts"]
    assert artifact["type"] == "report"
    assert sorted(artifact["files"]) == sorted(["report.md", *(f"report/{f.name}" for f in figures)])


def test_log_report_with_tracking_off_writes_nothing(finished_run: Path) -> None:
    log_report(finished_run, write_report(finished_run), TrackingConfig(backend="none"))

    assert not (finished_run / "wandb").exists()


def test_save_history_renames_into_place_on_rank_0_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work_dir = tmp_path / "sft"
    assert save_history(context(work_dir, rank=1), [{"step": 1, "loss": 2.0}]) is None
    assert not (work_dir / HISTORY_FILE).exists()

    (work_dir / HISTORY_FILE).write_text("[]", encoding="utf-8")  # an earlier try's
    renames: list[tuple[Path, Path]] = []
    replace = Path.replace
    monkeypatch.setattr(
        Path, "replace", lambda src, dst: renames.append((src, Path(dst))) or replace(src, dst)
    )

    path = save_history(
        context(work_dir), [{"step": 1, "loss": 2.0, "note": "text"}, {"step": 2, "loss": 1.0}]
    )

    assert path == work_dir / HISTORY_FILE
    assert [(src.parent, dst) for src, dst in renames] == [(work_dir, path)] and renames[0][0] != path
    assert json.loads(path.read_text(encoding="utf-8")) == [
        {"step": 1, "loss": 2.0},
        {"step": 2, "loss": 1.0},
    ]
    assert sorted(p.name for p in work_dir.iterdir()) == [HISTORY_FILE]
