"""`rlhf annotate push | pull`: tasks to a Label Studio project, its annotations back as a preference dataset.

Kept out of `rlhf.cli` (which only registers it) so the command group has a room of its own. The server is
`--url` or `LABEL_STUDIO_URL`; the key is `LABEL_STUDIO_API_KEY` (or `--api-key`, which shell history and
`ps` show), and it is never printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlhf.errors import DataError


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `rlhf annotate` and its verbs to the `rlhf` parser."""
    server = argparse.ArgumentParser(add_help=False, parents=[common])
    server.add_argument("--url", help="Label Studio URL (default: $LABEL_STUDIO_URL)")
    server.add_argument(
        "--api-key",
        help="Label Studio API key: a legacy token or a personal access token. It lands in shell history and "
        "`ps`: prefer setting LABEL_STUDIO_API_KEY",
    )
    server.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one server answer")
    server.add_argument("--project", required=True, metavar="TITLE", help="the project's exact title")
    group = commands.add_parser("annotate", help="Label Studio: push tasks to a project, pull annotations")
    verbs = group.add_subparsers(dest="annotate_command", required=True)

    push = verbs.add_parser(
        "push",
        help="upload the tasks the project does not hold yet (creating it if needed)",
        parents=[server],
    )
    push.add_argument("tasks", metavar="TASKS.json", help="tasks from `rlhf data export-for-annotation`")
    push.add_argument(
        "--label-config",
        metavar="FILE",
        help="labeling config for a new project (default: the .label_config.xml beside TASKS.json)",
    )
    push.add_argument("--overlap", type=int, default=1, help="annotators per task, for a new project")
    push.set_defaults(handler=_push)

    pull = verbs.add_parser(
        "pull",
        help="snapshot the project's annotations and import them as a preference dataset",
        parents=[server],
    )
    pull.add_argument("--out", required=True, help="datasets root: OUT/<project>/snap-<sha256>")
    pull.add_argument("--wait-for", type=int, metavar="N", help="first wait until N tasks are finished")
    pull.add_argument("--poll-seconds", type=float, default=10.0, help="how often to check while waiting")
    pull.add_argument(
        "--partial",
        action="store_true",
        help="take every task with a submitted annotation, not only finished ones",
    )
    pull.add_argument(
        "--ties", choices=["drop", "keep"], default="drop", help="majority ties: drop, or keep as ties"
    )
    pull.add_argument("--min-votes", type=int, default=1, help="minimum annotator votes a pair needs")
    pull.add_argument(
        "--min-agreement", type=float, help="exclude annotators whose agreement with the majority is lower"
    )
    pull.add_argument("--test-fraction", type=float, default=0.1)
    pull.add_argument("--split-seed", type=int, default=0)
    pull.set_defaults(handler=_pull)


def _client(args: argparse.Namespace):
    from rlhf.annotation.server import Credentials, LabelStudio

    return LabelStudio(Credentials.resolve(args.url, args.api_key), timeout=args.timeout)


def _push(args: argparse.Namespace) -> None:
    from rlhf.annotation.sync import check_title, load_tasks, push

    check_title(args.project)
    tasks_path = Path(args.tasks)
    config_path = (
        Path(args.label_config) if args.label_config else tasks_path.with_suffix(".label_config.xml")
    )
    tasks = load_tasks(tasks_path)
    try:
        label_config = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        hint = "" if args.label_config else "; pass --label-config FILE"
        raise DataError(f"{config_path}: cannot read the labeling config ({exc}){hint}") from None
    with _client(args) as client:
        report = push(client, args.project, tasks, label_config, args.overlap)
        print(
            f"Label Studio project '{args.project}' (id {report.project_id}) at {client.url}: "
            f"{report.uploaded} tasks uploaded, {report.already_there} already there"
        )


def _pull(args: argparse.Namespace) -> None:
    from rlhf.annotation.sync import pull
    from rlhf.data.preferences import ImportSettings

    settings = ImportSettings(
        ties=args.ties, min_votes=args.min_votes, min_annotator_agreement=args.min_agreement,
        test_fraction=args.test_fraction, split_seed=args.split_seed,
    )  # fmt: skip
    with _client(args) as client:
        result = pull(client, args.project, Path(args.out), settings, args.wait_for, args.poll_seconds,
                      args.partial)  # fmt: skip
    report = result.report
    if (nothing := report.nothing_kept()) is not None:
        raise DataError(nothing)  # the outputs stay for inspection
    again = "; already imported" if result.reused else ""
    print(f"pulled {len(result.task_ids)} tasks of project {result.project_id} (snapshot {result.snapshot_id}, "
          f"sha256 {result.sha256[:12]}{again})")  # fmt: skip
    print(f"preferences: {report.identity}")
    print(f"agreement: {_agreement(report.manifest_path)}")
    print(
        f"dataset {result.dataset_dir} (fingerprint {report.fingerprint[:12]}); report: {report.report_path}"
    )


def _agreement(manifest_path: Path) -> str:
    """Krippendorff's alpha and Fleiss' kappa from the manifest, or why there is none."""
    import json

    agreement = json.loads(manifest_path.read_text(encoding="utf-8"))["agreement"]
    if not agreement.get("units"):
        return "not measured (no comparison has two annotators)"
    if agreement.get("krippendorff_alpha") is None:
        return f"Krippendorff's alpha undefined over {agreement['units']} comparisons (every vote alike)"
    kappa = agreement.get("fleiss_kappa")
    line = f"Krippendorff's alpha {agreement['krippendorff_alpha']:.3f} over {agreement['units']} comparisons"
    if kappa is not None:
        line += f", Fleiss' kappa {kappa:.3f} ({agreement['fleiss_raters']} raters, {agreement['fleiss_units']} comparisons)"
    return line
