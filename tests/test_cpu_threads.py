"""Every process `rlhf` starts waits at OpenMP barriers passively unless the user chose a policy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PRINT_POLICY = "import os; print(os.environ.get('OMP_WAIT_POLICY'))"
ENTRY_POINTS = {
    "stages": f"import stages; {PRINT_POLICY}",
    "cli": "from rlhf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    + PRINT_POLICY,
}


def policy_in_child(code: str, user_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_policy:
        env["OMP_WAIT_POLICY"] = user_policy
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_points_set_a_passive_wait_before_torch_loads(entry: str) -> None:
    assert policy_in_child(ENTRY_POINTS[entry], None) == "PASSIVE"


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_policy_the_user_chose_is_kept(entry: str) -> None:
    assert policy_in_child(ENTRY_POINTS[entry], "ACTIVE") == "ACTIVE"


def test_stages_set_it_before_torch_is_imported() -> None:
    code = "import sys, stages; print('torch' in sys.modules)"
    assert policy_in_child(code, None) == "False"
