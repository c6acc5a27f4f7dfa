"""`rlhf registry ls | show | lineage | verify | add | alias | promote | rm | gc | export`.

Kept out of `rlhf.cli` (which only registers it) so the command group has a room of its own. The listings
take `--json` (shapes in `rlhf.cli_json`); their tables are never cut when piped (`rlhf.console`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf import cli_json
from rlhf.console import output_console, print_json
from rlhf.errors import RlhfError

if TYPE_CHECKING:
    from rlhf.registry import Registry

LS_METRICS = 3  # metrics a version shows in the `ls` table; `show` and `--json` have them all


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `rlhf registry` and its verbs to the `rlhf` parser."""
    registry = argparse.ArgumentParser(add_help=False, parents=[common])
    registry.add_argument("--registry", help="registry directory (default: $RLHF_REGISTRY, else ./registry)")
    sub = commands.add_parser("registry", help="model registry: versions, aliases, lineage, integrity")
    verbs = sub.add_subparsers(dest="registry_command", required=True)

    def verb(name: str, handler: object, help: str, json_help: str | None = None) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help, parents=[registry])
        parser.set_defaults(handler=handler)
        if json_help:
            parser.add_argument("--json", action="store_true", help=json_help)
        return parser

    verb("ls", _ls, "list models, versions and aliases", "the listing as JSON (format 1), every metric")
    verb("show", _show, "a version's manifest and metrics",
         "accepted for uniformity: show always prints the manifest as JSON").add_argument(
        "ref", help="NAME[:VERSION|ALIAS]"
    )  # fmt: skip
    verb("lineage", _lineage, "the tree back to the base model and datasets",
         "the tree as JSON (format 1)").add_argument("ref")  # fmt: skip
    verify = verb("verify", _verify, "re-hash files; report corrupt or missing ones",
                  "the problems as JSON (format 1); exit 2 still when there are any")  # fmt: skip
    verify.add_argument("ref", nargs="?", help="one version (default: all)")
    add = verb("add", _add, "register an existing HF model directory as a new version")
    add.add_argument("name")
    add.add_argument("dir")
    add.add_argument("--base-model", help="what it was trained from, for lineage")
    alias = verb("alias", _alias, "point an alias at a version")
    alias.add_argument("ref", help="NAME:VERSION")
    alias.add_argument("alias")
    promote = verb("promote", _promote, "give the best version by a metric an alias (default: best)")
    promote.add_argument(
        "ref", help="NAME (best of all versions) or NAME:VERSION (this one, if at least as good)"
    )
    promote.add_argument("--metric", required=True)
    promote.add_argument("--lower-is-better", action="store_true")
    promote.add_argument("--alias", default="best")
    promote.add_argument("--force", action="store_true", help="promote NAME:VERSION even if it is worse")
    remove = verb("rm", _rm, "remove a version (refused while others descend from it)")
    remove.add_argument("ref")
    remove.add_argument("--force", action="store_true")
    verb("gc", _gc, "delete leftovers of interrupted publishes")
    export = verb("export", _export, "write a version as a standalone HF model directory")
    export.add_argument("ref")
    export.add_argument("--to", required=True, help="output directory (must not exist or be empty)")
    export.add_argument("--merge-lora", action="store_true", help="merge an adapter into its base model")


def open_registry(args: argparse.Namespace) -> Registry:
    """The registry `--registry` names, else $RLHF_REGISTRY, else ./registry."""
    from rlhf.registry import Registry, default_registry_path

    return Registry(default_registry_path(args.registry))


def _ls(args: argparse.Namespace) -> None:
    from rich.table import Table

    registry = open_registry(args)
    models = registry.list()
    if args.json:
        print_json(cli_json.registry_listing(registry.root, models))
        return
    caption = (f"metrics: the first {LS_METRICS} of each version; all of them in `rlhf registry show "
               "NAME:VERSION` or `rlhf registry ls --json`")  # fmt: skip
    table = Table(title=f"registry {registry.root}", caption=caption)
    for column in ("model", "version", "aliases", "stage", "parents", "metrics", "created"):
        table.add_column(column, overflow="fold")  # a narrow terminal folds a long name, never cuts it
    for name, entry in models.items():
        for manifest in entry.versions:
            aliases = ", ".join(a for a, v in entry.aliases.items() if v == manifest.version)
            shown = list(manifest.metrics.items())[:LS_METRICS]
            metrics = " ".join(f"{k}={v:.3g}" for k, v in shown)
            if len(manifest.metrics) > LS_METRICS:
                metrics += f" (+{len(manifest.metrics) - LS_METRICS} more)"
            table.add_row(name, manifest.version, aliases, manifest.stage or "", ", ".join(manifest.parents),
                          metrics, manifest.created_at[:19])  # fmt: skip
    output_console().print(table)


def _show(args: argparse.Namespace) -> None:
    print(open_registry(args).manifest(args.ref).to_json())


def _lineage(args: argparse.Namespace) -> None:
    from rich.tree import Tree

    def grow(tree: Tree, node: dict) -> None:
        for dataset in node.get("datasets", []):
            tree.add(f"dataset {dataset['name']} {dataset['fingerprint'][:12]} ({dataset.get('path', '')})")
        for parent in node.get("parents", []):
            grow(tree.add(f"{parent['ref']} [{parent.get('stage') or ''}]"), parent)
        if not node.get("parents") and node.get("base_model"):
            tree.add(f"base model {node['base_model']}")

    lineage = open_registry(args).lineage(args.ref)
    if args.json:
        print_json(cli_json.lineage(lineage))
        return
    root = Tree(f"{lineage['ref']} [{lineage.get('stage') or ''}]")
    grow(root, lineage)
    output_console().print(root)


def _verify(args: argparse.Namespace) -> None:
    problems = open_registry(args).verify(args.ref)
    if args.json:
        print_json(cli_json.verification(problems))
    else:
        for problem in problems:
            print(problem)
    if problems:
        raise RlhfError(f"registry: {len(problems)} problem(s) found")
    if not args.json:
        print("registry: all files intact")


def _add(args: argparse.Namespace) -> None:
    manifest = open_registry(args).add(args.name, args.dir, stage="external", base_model=args.base_model)
    print(f"added {manifest.ref}")


def _alias(args: argparse.Namespace) -> None:
    open_registry(args).set_alias(args.ref, args.alias)
    print(f"{args.alias} -> {args.ref}")


def _promote(args: argparse.Namespace) -> None:
    name, _, version = args.ref.partition(":")
    chosen = open_registry(args).promote(
        name, args.metric, version=version or None, higher_is_better=not args.lower_is_better,
        alias=args.alias, force=args.force,
    )  # fmt: skip
    print(f"{args.alias} -> {name}:{chosen}")


def _rm(args: argparse.Namespace) -> None:
    open_registry(args).remove(args.ref, force=args.force)
    print(f"removed {args.ref}")


def _gc(args: argparse.Namespace) -> None:
    removed = open_registry(args).gc()
    print(f"registry: removed {len(removed)} leftover(s)")


def _export(args: argparse.Namespace) -> None:
    from rlhf.models import export_model, registry_model
    from rlhf.settings import ModelSpec

    spec, manifest = registry_model(open_registry(args), ModelSpec(name=args.ref))
    out = export_model(spec, Path(args.to), merge_lora=args.merge_lora)
    print(f"exported {manifest.ref} to {out}")
