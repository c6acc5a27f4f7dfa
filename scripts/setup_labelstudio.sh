#!/usr/bin/env bash
# Create or reuse the Label Studio server that the `labelstudio` tests start (tests/labelstudio_server.py).
#
# It gets a venv of its own, like .venv-vllm: label-studio pins numpy<2.3, Django and ~120 more packages
# that must not touch the project's .venv (rlhf talks to the server over HTTP only). About 1 GB and a few
# minutes on first install; re-running is a no-op while the stamp names the same version.
#   RLHF_LS_VENV=/path/to/venv bash scripts/setup_labelstudio.sh
# The tests find it through RLHF_LS_VENV (default .venv-labelstudio) or RLHF_LABEL_STUDIO (the binary).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RLHF_LS_VENV:-$root/.venv-labelstudio}"
spec="label-studio==1.23.2"
python="${PYTHON:-python3}"
stamp="$venv/.rlhf-labelstudio-installed"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$spec" ] && [ -x "$venv/bin/label-studio" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "setup_labelstudio: creating $venv" >&2
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >&2
echo "setup_labelstudio: installing $spec into $venv" >&2
"${pip[@]}" install "$spec" >&2
echo "$spec" > "$stamp"
