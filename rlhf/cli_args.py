"""Dotted overrides anywhere on a command line: `rlhf run cfg.yaml --only sft stages.sft.max_steps=5`.

argparse gives a `nargs="*"` positional only the tokens next to it, so an override typed after an option is
left over; `parse_intermixed_args` would fix that but refuses subparsers. Instead the leftovers that look like
overrides join the parsed ones, in the order typed (a later one wins), and anything else is refused as
argparse refuses it. Used by the `rlhf` command and by every stage program (`python -m stages.X`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def is_override(token: str) -> bool:
    """`key.path=value`: an `=`, and not an option (`--name=value` is argparse's to read)."""
    return "=" in token and not token.startswith("-")


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """`parser.parse_args(argv)`, except that overrides after options join `args.overrides`; a token that is
    not an override, or any leftover of a command that takes none, exits 2 as argparse's "unrecognized
    arguments" (the positional would otherwise take a stray word for an override)."""
    args, leftover = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *leftover]
        leftover = [token for token in args.overrides if not is_override(token)]
    if leftover:
        parser.error(f"unrecognized arguments: {' '.join(leftover)}")
    return args
