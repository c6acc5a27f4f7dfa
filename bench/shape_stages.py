"""Every stage at a real model shape: the pipeline of a config (default: the Qwen2.5-0.5B shape, a few steps
per stage) run once as a user runs it, then each stage's wall time and peak memory (rank 0's: allocated GPU
memory on CUDA, resident memory on a CPU), beside what `rlhf plan` predicted for it when it can plan it.

Too long for the test suite on 2 CPU cores (about 3 minutes), so it is measured here:

    python bench/shape_stages.py                                     # CPU, fp32
    python bench/shape_stages.py distributed.zero_stage=3 ...         # as scripts/gpu_check.sh runs it
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "shapes" / "qwen2.5-0.5b-cpu.yaml"


def planned(config: Path, overrides: list[str]) -> dict[str, float]:
    """`rlhf plan --json`'s total per stage (GiB), or nothing when the plan cannot be made."""
    done = subprocess.run([sys.executable, "-m", "rlhf.cli", "plan", str(config), "--json", *overrides],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    try:
        plan = json.loads(done.stdout)
    except ValueError:
        print(f"(no plan: {done.stderr.strip().splitlines()[-1:] or done.stdout[:200]})")
        return {}
    return {row["stage"]: row["bytes"]["total"] / 2**30 for row in plan.get("stages", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT)
    parser.add_argument("overrides", nargs="*", help="config overrides, a.b=c")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shape-stages-") as tmp:
        overrides = [*args.overrides, f"runs_dir={tmp}/runs", f"registry={tmp}/registry"]
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "rlhf.cli", "run", str(args.config), *overrides],
                              cwd=REPO, capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"the pipeline failed:\n{done.stderr[-3000:]}")
        run_dir = next(path for path in Path(tmp, "runs").iterdir() if (path / "run.json").is_file())
        finished = sorted(
            run_dir.glob("*/result.json"), key=lambda path: path.stat().st_mtime
        )  # in run order
        results = {path.parent.name: json.loads(path.read_text(encoding="utf-8")) for path in finished}
    plan = planned(args.config, args.overrides)
    print(
        f"\n{args.config.name}: the whole run {wall:.0f} s (set-up, data and the closing evaluation included)"
    )
    print("| stage | steps | seconds | peak memory (GiB) | rlhf plan (GiB) |")
    print("|---|---:|---:|---:|---:|")
    for stage, result in results.items():
        metrics = result["metrics"]
        predicted = f"{plan[stage]:.1f}" if stage in plan else "-"
        print(f"| {stage} | {metrics.get('steps', 0):.0f} | {result['seconds']:.0f} | "
              f"{metrics.get('peak_memory_gib', float('nan')):.1f} | {predicted} |")  # fmt: skip


if __name__ == "__main__":
    main()
