"""The `--json` documents of the CLI's listings, format 1: one builder per listing, its shape in its docstring.

Scripts parse these, so a shape only grows: a key is never renamed or dropped without a new `format`. Each
document is a dict with `"format": 1`; paths are strings, absent values null. (`rlhf plan --json` is built
in `rlhf.plan_command.plan_json`; `rlhf registry show` prints the version's manifest.json as it is.)
No torch here: the types below are imported for the checker only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf.data.preferences import ImportReport
    from rlhf.eval import PolicyEvaluation
    from rlhf.registry import ModelEntry
    from rlhf.runs import RunRecord

FORMAT = 1


def registry_listing(root: Path, models: dict[str, ModelEntry]) -> dict[str, Any]:
    """`rlhf registry ls --json`: {format, registry, models: [{name, aliases: {alias: version}, versions:
    [{ref, version, aliases, stage, base_model, lora_base, parents, metrics, created_at}]}]}; models by name,
    versions oldest first, every metric of each version."""
    return {
        "format": FORMAT,
        "registry": str(root),
        "models": [
            {
                "name": name,
                "aliases": dict(entry.aliases),
                "versions": [
                    {
                        "ref": manifest.ref,
                        "version": manifest.version,
                        "aliases": [a for a, v in entry.aliases.items() if v == manifest.version],
                        "stage": manifest.stage,
                        "base_model": manifest.base_model,
                        "lora_base": manifest.lora_base,
                        "parents": list(manifest.parents),
                        "metrics": dict(manifest.metrics),
                        "created_at": manifest.created_at,
                    }
                    for manifest in entry.versions
                ],
            }
            for name, entry in models.items()
        ],
    }


def lineage(tree: dict[str, Any]) -> dict[str, Any]:
    """`rlhf registry lineage --json`: {format, lineage}, where lineage is `Registry.lineage`'s tree: each node
    {ref, stage, base_model, lora_base, datasets: [{name, fingerprint, path}], config_hash, parents: [node]};
    a parent removed with force is {ref, missing: true, parents: []}."""
    return {"format": FORMAT, "lineage": tree}


def verification(problems: list[str]) -> dict[str, Any]:
    """`rlhf registry verify --json`: {format, problems: [one line each], ok: no problem found}."""
    return {"format": FORMAT, "problems": list(problems), "ok": not problems}


def run(record: RunRecord) -> dict[str, Any]:
    """One run in `rlhf status --json`: {name, run_dir, pipeline, started, finished, state, seconds, error,
    report, stages: {stage: {status, ref, fingerprint, started, seconds, log, error}}}; `state` is the status as
    it stands ("interrupted" for a running record whose process is gone), times ISO 8601, seconds null until
    known, `error` null unless it failed."""
    return {
        "name": Path(record.run_dir).name,
        "run_dir": record.run_dir,
        "pipeline": record.pipeline,
        "started": record.started_at,
        "finished": record.finished_at,
        "state": record.state,
        "seconds": record.seconds,
        "error": record.error,
        "report": record.report,
        "stages": {
            name: {"status": entry.status, "ref": entry.ref, "fingerprint": entry.fingerprint,
                   "started": entry.started_at, "seconds": entry.seconds, "log": entry.log, "error": entry.error}
            for name, entry in record.stages.items()
        },
    }  # fmt: skip


def runs(runs_dir: Path, records: list[RunRecord]) -> dict[str, Any]:
    """`rlhf status --json`: {format, runs_dir, runs: [run]}, oldest first; each run as in `run`."""
    return {"format": FORMAT, "runs_dir": str(runs_dir), "runs": [run(record) for record in records]}


def one_run(record: RunRecord) -> dict[str, Any]:
    """`rlhf status RUN --json`: {format, run}, the run as in `run`."""
    return {"format": FORMAT, "run": run(record)}


def data_import(report: ImportReport, kind: str) -> dict[str, Any]:
    """`rlhf data import --json`: {format, kind: preferences|unpaired, out_dir, fingerprint, counts: {read, kept,
    quarantined, duplicates, train, test, ties_kept, merged, conflicts, by_reason: {reason: rows}},
    excluded_annotators, paths: {report, manifest, quarantine, duplicates}}; read = kept + quarantined +
    duplicates."""
    counts = (
        "read",
        "kept",
        "quarantined",
        "duplicates",
        "train",
        "test",
        "ties_kept",
        "merged",
        "conflicts",
    )
    return {
        "format": FORMAT,
        "kind": kind,
        "out_dir": str(report.out_dir),
        "fingerprint": report.fingerprint,
        "counts": {**{key: getattr(report, key) for key in counts}, "by_reason": dict(report.by_reason)},
        "excluded_annotators": list(report.excluded_annotators),
        "paths": {"report": str(report.report_path), "manifest": str(report.manifest_path),
                  "quarantine": str(report.quarantine_path), "duplicates": str(report.duplicates_path)},
    }  # fmt: skip


def evaluation(result: PolicyEvaluation) -> dict[str, Any]:
    """`rlhf eval --json`: {format, metrics: {name: value}, columns, samples: [{column: cell}]}; every sample row
    the evaluation kept (the table shows the first 8), keyed by `columns` (prompt, policy, reference, then
    each score of both)."""
    return {
        "format": FORMAT,
        "metrics": dict(result.metrics),
        "columns": list(result.columns),
        "samples": [dict(zip(result.columns, row, strict=True)) for row in result.rows],
    }
