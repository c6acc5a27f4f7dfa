"""DPO's gain over the SFT policy: mean gold reward on held-out prompts, over seeds, as mean ± std.

For each seed the quickstart pipeline runs SFT then DPO (the policy starting from the SFT version, in its
own registry and run directory under a temporary folder), and the pipeline's closing evaluation samples
both policies on the task's held-out prompts with the same seed. The baseline (the SFT policy) is measured
in the same run as the policy it is compared with.

    python bench/dpo_gain.py                       # seeds 0 1 2, the quickstart config
    python bench/dpo_gain.py --seeds 0 1 2 3 4 --samples-per-prompt 32 --json dpo_gain.json

The config is configs/quickstart.yaml with only its `sft` and `policy` stages (its tuned DPO settings); the
seed sets both `seed` and `data.synthetic.seed`.
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


def bench_config(config: Path, seed: int, root: Path, samples_per_prompt: int) -> PipelineConfig:
    """The pipeline config of one seed: sft + policy only, its own registry and runs under `root`."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    stages = raw["stages"]
    raw["stages"] = {"sft": stages["sft"], "policy": stages["policy"]}
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


def run_seed(config: Path, seed: int, root: Path, samples_per_prompt: int) -> dict[str, float]:
    """SFT then DPO for one seed; the gold rewards of both policies on the same held-out prompts."""
    run = run_pipeline(bench_config(config, seed, root, samples_per_prompt), root / "run")
    seconds = {result.stage: result.seconds for result in run.results}
    steps = {result.stage: result.metrics["steps"] for result in run.results}
    m = run.evaluations["policy"].metrics
    return {
        "seed": seed,
        "sft_gold": m["reference_gold_reward"],
        "dpo_gold": m["policy_gold_reward"],
        "gain": m["policy_gold_reward"] - m["reference_gold_reward"],
        "sft_eos": m["reference_eos_share"],
        "dpo_eos": m["policy_eos_share"],
        "kl": m["kl"],
        "gold_win_rate": m["gold_win_rate"],
        "sft_s": seconds["sft"],
        "dpo_s": seconds["policy"],
        "dpo_steps": steps["policy"],
    }


def table(rows: list[dict[str, float]]) -> str:
    """Per-seed rows and the mean ± std of the gain, as markdown."""
    lines = [
        "| seed | SFT gold | DPO gold | gain | SFT EOS | DPO EOS | KL | gold win rate | DPO time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['seed']} | {r['sft_gold']:.3f} | {r['dpo_gold']:.3f} | {r['gain']:+.3f} | {r['sft_eos']:.3f} "
        f"| {r['dpo_eos']:.3f} | {r['kl']:.2f} | {r['gold_win_rate']:.3f} | {r['dpo_s']:.0f} s |"
        for r in rows
    ]
    mean, std = summary(rows)
    lines.append(f"\ngain over {len(rows)} seeds: {mean:+.3f} ± {std:.3f} (mean ± sample std)")
    return "\n".join(lines)


def summary(rows: list[dict[str, float]]) -> tuple[float, float]:
    gains = [r["gain"] for r in rows]
    return statistics.fmean(gains), statistics.stdev(gains) if len(gains) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples-per-prompt", type=int, default=16, help="evaluation samples per prompt")
    parser.add_argument("--json", type=Path, help="also write the rows and the summary here")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="dpo-gain-") as tmp:
        for seed in args.seeds:
            rows.append(run_seed(args.config, seed, Path(tmp) / f"seed{seed}", args.samples_per_prompt))
            print(f"seed {seed}: gain {rows[-1]['gain']:+.3f}", file=sys.stderr)
    print(table(rows))
    if args.json:
        mean, std = summary(rows)
        args.json.write_text(json.dumps({"rows": rows, "gain_mean": mean, "gain_std": std}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
