"""A policy stage's gain over the SFT policy: mean gold reward on held-out prompts, over seeds, mean ± std.

For each seed the quickstart pipeline runs SFT, the reward model (for PPO), and one of its named policy
stages (`dpo` or `ppo`), the policy starting from the SFT version, in its own registry and run directory
under a temporary folder; the pipeline's closing evaluation samples both policies on the task's held-out
prompts with the same seed. The baseline (the SFT policy) is measured in the same run as the policy it is
compared with.

    python bench/policy_gain.py --policy dpo                 # seeds 0 1 2, the quickstart config
    python bench/policy_gain.py --policy ppo --seeds 0 1 2 3 4 --samples-per-prompt 32 --json ppo_gain.json

The config is configs/quickstart.yaml with only the stages the policy needs (its tuned settings); the seed
sets both `seed` and `data.synthetic.seed`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from rlhf.config import PipelineConfig, apply_override, validate_config
from rlhf.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
NEEDS_REWARD_MODEL = {"ppo"}


def bench_config(config: Path, policy: str, seed: int, root: Path, samples_per_prompt: int) -> PipelineConfig:
    """The pipeline config of one seed: sft (+ reward) + the one policy stage, own registry and runs under `root`."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    stages = raw["stages"]
    raw["stages"] = {"sft": stages["sft"], "policy": {policy: stages["policy"][policy]}}
    if stages["policy"][policy]["algorithm"] in NEEDS_REWARD_MODEL:
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


def run_seed(config: Path, policy: str, seed: int, root: Path, samples_per_prompt: int) -> dict[str, float]:
    """The pipeline for one seed; the gold rewards of the SFT policy and the trained one on the same prompts."""
    stage = f"policy-{policy}"
    run = run_pipeline(bench_config(config, policy, seed, root, samples_per_prompt), root / "run")
    result = next(r for r in run.results if r.stage == stage)
    m = run.evaluations[stage].metrics
    return {
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
    }


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="dpo", help="which named policy stage of the config (dpo, ppo)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples-per-prompt", type=int, default=16, help="evaluation samples per prompt")
    parser.add_argument("--json", type=Path, help="also write the rows and the summary here")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix=f"{args.policy}-gain-") as tmp:
        for seed in args.seeds:
            rows.append(
                run_seed(args.config, args.policy, seed, Path(tmp) / f"seed{seed}", args.samples_per_prompt)
            )
            print(f"seed {seed}: gain {rows[-1]['gain']:+.3f}", file=sys.stderr)
    print(table(args.policy, rows))
    if args.json:
        mean, std = summary(rows)
        args.json.write_text(json.dumps({"rows": rows, "gain_mean": mean, "gain_std": std}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
