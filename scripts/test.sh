#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the fast tests only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "${RLHF_VENV:-$root/.venv}/bin/python" -m pytest "$@"
