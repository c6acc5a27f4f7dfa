"""The import's property-based suite (tests/test_import_properties.py) with many more examples than CI runs,
drawn afresh each time rather than CI's fixed ones.

Each example writes one generated export three ways (JSON lines, gzipped, a JSON array) and imports each with
the format given and detected, checking that nothing escapes, every row is accounted for and the heap stays
bounded. The table gives, per run, the examples asked per format, the pytest outcome and the wall time; a
failure prints hypothesis' shrunk example (rerun it with the seed it prints).

    python bench/import_fuzz.py                 # 300 examples per format
    python bench/import_fuzz.py --examples 2000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300, help="examples per format and property")
    args = parser.parse_args()
    env = {**os.environ, "RLHF_FUZZ_EXAMPLES": str(args.examples), "RLHF_FUZZ_RANDOM": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--tb=short", "-p", "no:cacheprovider",
         "tests/test_import_properties.py"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "no output"
    print("| examples per format | outcome | wall time |")
    print("|---:|---|---:|")
    print(f"| {args.examples} | {summary} | {seconds:.0f} s |")
    if done.returncode:
        print(done.stdout[-6000:], done.stderr[-2000:], sep="\n")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
