#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the quickstart pipeline on the built-in tiny model and task.
# Extra arguments are dotted config overrides, e.g.: bash scripts/quickstart.sh stages.sft.max_steps=50
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "${RLHF_VENV:-$root/.venv}/bin/rlhf" run configs/quickstart.yaml "$@"
