"""What PPO's forward and backward pass holds when the policy computes logits at the response's positions only
(`rlhf.ppo_models.logits_kept`) against at every position, at a real shape (default: the Qwen2.5-0.5B shape,
vocabulary 151,936) in fp32 on one CPU process.

Each variant runs in a fresh process: the model loads, then one micro-batch of left-padded prompts and
responses goes through `rlhf.policy_forward.response_forward` (log-probs, entropy, values) and a backward pass of their
sum; the peak resident memory (VmHWM, glibc told to hand freed tensors back) above the loaded model is the pass's.
"All positions" is the same call with `keep` turned off, as the code was before.

    python bench/ppo_logit_memory.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASS = """
import re, sys
from pathlib import Path
import torch
import rlhf.ppo_models
from rlhf.models import load_causal_lm
from rlhf.policy_forward import response_forward
from rlhf.ppo_models import PolicyAndValue
from rlhf.settings import ModelSpec

def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024

directory, variant, batch, prompt, response = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
if variant == "all positions":
    rlhf.ppo_models.logits_kept = lambda model, keep: {}
torch.manual_seed(0)
model, tokenizer = load_causal_lm(ModelSpec(name=directory))
policy = PolicyAndValue(model, None)
ids = torch.randint(0, len(tokenizer) - 1, (batch, prompt + response))
attention = torch.ones_like(ids)
attention[::2, : prompt // 4] = 0  # left padding on every other row
loaded = hwm()
logp, entropy, values = response_forward(policy, ids, attention, prompt, 1.0)
(logp.sum() + values.sum()).backward()
print(loaded, hwm() - loaded)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-0.5b-shape")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=192)
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from rlhf.builtin_models import materialize
    from rlhf.settings import ModelSpec

    env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}
    with tempfile.TemporaryDirectory() as tmp:
        directory = materialize(ModelSpec(name=args.model), Path(tmp) / "model")
        passes: dict[str, list[float]] = {"response positions": [], "all positions": []}
        for _ in range(args.repeats):
            for variant, values in passes.items():
                command = [sys.executable, "-c", PASS, str(directory), variant,
                           str(args.batch), str(args.prompt), str(args.response)]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                values.append(float(done.stdout.split()[-1]))
    print(f"{args.model}, micro-batch {args.batch} x ({args.prompt} prompt + {args.response} response tokens), "
          f"fp32, medians of {args.repeats} (MiB):\n")  # fmt: skip
    print("| logits computed at | forward + backward peak above the loaded model | vs all positions |")
    print("|---|---:|---:|")
    baseline = statistics.median(passes["all positions"])
    for variant, values in passes.items():
        print(
            f"| {variant} | {statistics.median(values):,.0f} | {statistics.median(values) / baseline:.2f}x |"
        )


if __name__ == "__main__":
    main()
