"""A virtual environment with trl 1.12.0, the last TRL release with a PPOTrainer, for the PPO baseline.

    python bench/trl_venv.py            # create (or reuse) it and print its python

The venv lives at `bench/.venvs/trl-1.12.0` (git-ignored). torch is installed first, alone, from the same
spec as `scripts/setup.sh` uses (`RLHF_TORCH`, default `torch==2.13.0`, optionally from `RLHF_TORCH_INDEX`), so
no later resolve can pull a multi-GB CUDA build; then trl is installed under a constraints file that holds
torch and pins transformers, accelerate, tokenizers, safetensors, datasets and huggingface-hub to the versions
the interpreter running this module has, so both sides of the benchmark run the same model code. A stamp file
records what the venv was built with; a venv whose stamp matches is reused, any other is rebuilt.

Standard library only: the bench imports this before anything heavy.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TRL_VERSION = "1.12.0"
# Packages whose versions the venv takes from the running interpreter: the model code both sides share.
SHARED_PACKAGES = ("transformers", "accelerate", "tokenizers", "safetensors", "datasets", "huggingface-hub")
STAMP = ".bench-stamp.json"


def venv_dir(root: Path) -> Path:
    """Where the venv of the TRL baseline lives, under the repository root `root`."""
    return Path(root) / "bench" / ".venvs" / f"trl-{TRL_VERSION}"


def _public(version: str) -> str:
    """A version without its local label (`2.13.0+cpu` -> `2.13.0`), as `==` pins want it."""
    return version.split("+", 1)[0]


def shared_pins() -> dict[str, str]:
    """The versions of SHARED_PACKAGES installed in this interpreter (those that are installed at all)."""
    pins = {}
    for name in SHARED_PACKAGES:
        try:
            pins[name] = _public(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def _wanted(torch_spec: str, torch_index: str | None) -> dict[str, object]:
    """What a venv must have been built with to be reused; written as its stamp."""
    return {
        "trl": TRL_VERSION,
        "python": ".".join(map(str, sys.version_info[:3])),
        "torch_spec": torch_spec,
        "torch_index": torch_index,
        "pins": shared_pins(),
    }


def _pip(python: Path, *args: str) -> None:
    """Run pip of the venv; its output goes to stderr so a caller's stdout stays clean."""
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args]
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def _installed(python: Path, names: list[str]) -> dict[str, str]:
    """Versions of `names` installed in the venv of `python`."""
    code = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    out = subprocess.run([str(python), "-c", code, *names], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def _build(venv: Path, want: dict[str, object]) -> None:
    """Create the venv from scratch: torch alone first, then trl under the constraints."""
    if venv.exists():
        shutil.rmtree(venv)
    print(f"trl_venv: creating {venv}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"

    torch_spec = str(want["torch_spec"])
    index = ["--index-url", str(want["torch_index"])] if want["torch_index"] else []
    print(f"trl_venv: installing {torch_spec}", file=sys.stderr)
    _pip(python, "install", torch_spec, *index)
    torch_version = _public(_installed(python, ["torch"])["torch"])

    pins: dict[str, str] = dict(want["pins"])  # type: ignore[arg-type]
    constraints = venv / "constraints.txt"
    lines = [f"torch=={torch_version}", *(f"{name}=={version}" for name, version in pins.items())]
    constraints.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"trl_venv: installing trl=={TRL_VERSION} with {', '.join(lines)}", file=sys.stderr)
    _pip(python, "install", "-c", str(constraints), f"trl=={TRL_VERSION}")

    got = _installed(python, ["trl", "torch", *pins])
    wrong = {
        name: (got[name], version)
        for name, version in {"trl": TRL_VERSION, "torch": torch_version, **pins}.items()
        if _public(got[name]) != version
    }
    if wrong:
        raise RuntimeError(f"trl venv {venv}: installed versions differ from the pins: {wrong}")
    (venv / STAMP).write_text(json.dumps({**want, "torch": torch_version}, indent=2) + "\n", encoding="utf-8")


def ensure_trl_venv(root: Path) -> Path:
    """The python executable of the trl 1.12.0 venv under `root`, creating or rebuilding the venv if needed.

    Reused while its stamp says it was built with the same trl, python, torch spec and shared pins. A lock file
    next to it keeps two bench processes from building it at once.
    """
    venv = venv_dir(root)
    want = _wanted(os.environ.get("RLHF_TORCH", "torch==2.13.0"), os.environ.get("RLHF_TORCH_INDEX") or None)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = venv / STAMP
        try:
            have = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = None
        python = venv / "bin" / "python"
        if not (have and {key: have.get(key) for key in want} == want and python.exists()):
            _build(venv, want)
    return python


if __name__ == "__main__":
    print(ensure_trl_venv(Path(__file__).resolve().parents[1]))
