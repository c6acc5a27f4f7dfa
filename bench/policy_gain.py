"""Policy stages' gains over the SFT policy: mean gold reward on held-out prompts, over seeds, mean ± std.

For each seed the config's pipeline runs SFT, the reward model (when a named policy stage scores with one),
and the named policy stages, each starting from the same SFT version, in one registry and run directory under
a temporary folder; the pipeline's closing evaluation samples every policy and the SFT policy on the task's
held-out prompts with the same seed. The baseline (the SFT policy) is measured in the same run as the
policies compared with it.

    python bench/policy_gain.py --policy dpo                 # seeds 0 1 2, the quickstart config
    python bench/policy_gain.py --policy ppo --seeds 0 1 2 3 4 --samples-per-prompt 32 --json ppo_gain.json
    python bench/policy_gain.py --config configs/frontier.yaml --policy dpo kto ppo grpo_gold grpo rloo

The config is the given one (default configs/quickstart.yaml) with only the stages the policies need (their
tuned settings); the seed sets both `seed` and `data.synthetic.seed`. Per policy, a table of the seeds; then
one row per policy: gain ± std, KL from SFT, EOS share and the stage's wall time (means over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from rlhf.config import PipelineConfig, apply_override, validate_config
from rlhf.pipeline import run_pipeline
from rlhf.settings import ONLINE_ALGORITHMS

REPO = Path(__file__).resolve().parents[1]


def needs_reward_model(stage: dict[str, Any]) -> bool:
    """An online algorithm scoring with the run's reward model (no `rewards:`) or one it names."""
    if stage.get("algorithm") not in ONLINE_ALGORITHMS:
        return False
    return "rewards" not in stage or any("model" in source for source in stage["rewards"])


def bench_config(
    config: Path, policies: list[str], seed: int, root: Path, samples_per_prompt: int
) -> PipelineConfig:
    """The pipeline config of one seed: sft (+ reward) + the named policy stages, own registry and runs under
    `root`."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    stages = raw["stages"]
    raw["stages"] = {"sft": stages["sft"], "policy": {name: stages["policy"][name] for name in policies}}
    if any(needs_reward_model(stage) for stage in raw["stages"]["policy"].values()):
        raw["stages"]["reward"] = stages["reward"]
    for override in (
        f"seed={seed}",
        f"data.synthetic.seed={seed}",
        "stages.sft.evaluation=null",
        f"evaluation.samples_per_prompt={samples_per_prompt}",
        "tracking=none",
        f"registry={root / 'registry'}",
        f"runs_dir={root / 'runs'}",
    ):
        apply_override(raw, override)
    return validate_config(raw, source=str(config))


def run_seed(
    config: Path, policies: list[str], seed: int, root: Path, samples_per_prompt: int
) -> list[dict[str, Any]]:
    """The pipeline for one seed; per policy, the gold rewards of the SFT policy and the trained one on the
    same prompts."""
    run = run_pipeline(bench_config(config, policies, seed, root, samples_per_prompt), root / "run")
    rows = []
    for policy in policies:
        stage = f"policy-{policy}"
        result = next(r for r in run.results if r.stage == stage)
        m = run.evaluations[stage].metrics
        rows.append({
            "policy": policy,
            "seed": seed,
            "sft_gold": m["reference_gold_reward"],
            "policy_gold": m["policy_gold_reward"],
            "gain": m["policy_gold_reward"] - m["reference_gold_reward"],
            "sft_eos": m["reference_eos_share"],
            "policy_eos": m["policy_eos_share"],
            "kl": m["kl"],
            "gold_win_rate": m["gold_win_rate"],
            "policy_s": result.seconds,
            "policy_steps": result.metrics["steps"],
        })  # fmt: skip
    return rows


def table(policy: str, rows: list[dict[str, float]]) -> str:
    """Per-seed rows and the mean ± std of the gain, as markdown."""
    name = policy.upper()
    lines = [
        f"| seed | SFT gold | {name} gold | gain | SFT EOS | {name} EOS | KL | gold win rate | {name} time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['seed']} | {r['sft_gold']:.3f} | {r['policy_gold']:.3f} | {r['gain']:+.3f} | {r['sft_eos']:.3f} "
        f"| {r['policy_eos']:.3f} | {r['kl']:.2f} | {r['gold_win_rate']:.3f} | {r['policy_s']:.0f} s |"
        for r in rows
    ]
    mean, std = summary(rows)
    lines.append(f"\n{name} gain over {len(rows)} seeds: {mean:+.3f} ± {std:.3f} (mean ± sample std)")
    return "\n".join(lines)


def summary(rows: list[dict[str, float]]) -> tuple[float, float]:
    gains = [r["gain"] for r in rows]
    return statistics.fmean(gains), statistics.stdev(gains) if len(gains) > 1 else 0.0


def frontier(by_policy: dict[str, list[dict[str, Any]]]) -> str:
    """One row per policy: gain ± std, KL, EOS share, time (means over the seeds), as markdown."""
    lines = [
        "| policy | algorithm | gain (mean ± std) | KL from SFT | EOS share | time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for policy, rows in by_policy.items():
        mean, std = summary(rows)
        kl, eos, seconds = (
            statistics.fmean(r[key] for r in rows) for key in ("kl", "policy_eos", "policy_s")
        )
        lines.append(
            f"| {policy} | {rows[0]['algorithm']} | {mean:+.3f} ± {std:.3f} | {kl:.2f} | {eos:.3f} | {seconds:.0f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", nargs="+", default=["dpo"], help="named policy stages of the config")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples-per-prompt", type=int, default=16, help="evaluation samples per prompt")
    parser.add_argument("--json", type=Path, help="also write the rows and the summaries here")
    args = parser.parse_args(argv)

    algorithms = yaml.safe_load(args.config.read_text(encoding="utf-8"))["stages"]["policy"]
    by_policy: dict[str, list[dict[str, Any]]] = {policy: [] for policy in args.policy}
    with tempfile.TemporaryDirectory(prefix="policy-gain-") as tmp:
        for seed in args.seeds:
            for row in run_seed(
                args.config, args.policy, seed, Path(tmp) / f"seed{seed}", args.samples_per_prompt
            ):
                row["algorithm"] = algorithms[row["policy"]]["algorithm"]
                by_policy[row["policy"]].append(row)
                print(f"seed {seed}: {row['policy']} gain {row['gain']:+.3f}", file=sys.stderr)
    for policy, rows in by_policy.items():
        print(table(policy, rows), end="\n\n")
    print(frontier(by_policy))
    if args.json:
        summaries = {policy: dict(zip(("gain_mean", "gain_std"), summary(rows), strict=True))
                     for policy, rows in by_policy.items()}  # fmt: skip
        args.json.write_text(json.dumps({"rows": by_policy, "summaries": summaries}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
