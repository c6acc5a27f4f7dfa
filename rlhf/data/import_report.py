"""report.md: an import's manifest for a person (preference or unpaired data)."""

from __future__ import annotations

import json
from typing import Any

from rlhf.data.preference_dataset import DUPLICATES, QUARANTINE

MERGING = (
    "Same prompt and the same two responses, in either order and in any file of the import, are one "
    "comparison, and each record of it is a vote on it: the votes of all its records are merged, turned to the "
    "first record's order, and decide the majority, the ties, `min_votes` and the agreement figures below. "
    "The comparison's row stands where its first record was read; each later record is a **merged vote** "
    "(the same pair again in the same order counts as a vote too, so a row repeated verbatim is two agreeing "
    "votes). A named annotator counts once per comparison (their first vote). A **normalized** duplicate "
    "matches a comparison only after casefolding and collapsing whitespace: its texts differ, so its vote is "
    "not counted. Each duplicate is listed with the row of the comparison it belongs to (or where that "
    "comparison was quarantined)."
)
UNPAIRED_MERGING = (
    "Same prompt and the same completion, in any file of the import, are one judged completion, and each "
    "record of it is a vote on it: the votes of all its records are merged and decide the label by strict "
    "majority (a tie, or a neutral majority from middle ratings, is quarantined: KTO needs a label). The row "
    "stands where its first record was read; each later record is a **merged vote**. A named annotator counts "
    "once per completion (their first vote). A **normalized** duplicate matches only after casefolding and "
    "collapsing whitespace: its texts differ, so its vote is not counted."
)
# per dataset format: title, what a row is, how records merge
_KINDS = {
    "rlhf-preferences": (
        "Preference data import",
        "Rows are comparisons: each pair an importer read, plus each record it could not read.",
        MERGING,
    ),
    "rlhf-unpaired": (
        "Unpaired data import",
        "Rows are judged completions: each completion an importer read with its thumbs or ratings, plus each "
        "record it could not read. Votes: desirable, undesirable, or neutral (a middle rating).",
        UNPAIRED_MERGING,
    ),
}


def render_report(manifest: dict[str, Any]) -> str:
    """report.md: the manifest for a person."""
    counts, agreement = manifest["counts"], manifest["agreement"]
    title, rows, merging = _KINDS[manifest["format"]]
    units = "judgements" if "desirable" in counts else "comparisons"
    if "desirable" in counts:
        of_which = f"{counts['desirable']} desirable, {counts['undesirable']} undesirable"
    else:
        of_which = f"{counts['ties_kept']} ties"
    lines = [
        f"# {title}",
        "",
        f"**rows read = kept + quarantined + duplicates: {counts['read']} = {counts['kept']} + "
        f"{counts['quarantined']} + {counts['duplicates']}**",
        "",
        f"- kept: {counts['train']} train + {counts['test']} test "
        f"(test fraction {manifest['settings']['test_fraction']}, split seed {manifest['settings']['split_seed']}), "
        f"of which {of_which}",
        f"- fingerprint: `{manifest['fingerprint']}`",
        "",
        rows,
        "",
        "## Sources",
        "",
        f"| file | format | records | {units} | sha256 |",
        "|---|---|---:|---:|---|",
        *(
            f"| {s['file']} | {s['format'] or '-'} | {s['records']} | {s[units]} | `{s['sha256'][:16]}` |"
            for s in manifest["sources"]
        ),
        "",
        f"## Quarantined ({counts['quarantined']}, in {QUARANTINE})",
        "",
        *_table(["reason", "rows"], counts["by_reason"].items()),
        "",
        f"## Duplicates ({counts['duplicates']}, in {DUPLICATES})",
        "",
        *_table(["kind", "rows"], counts["duplicates_by_kind"].items()),
        "",
        merging,
        "",
        f"- {units} seen in more than one record (votes merged): {counts['merged']}",
        f"- **conflicts** among them: {counts['conflicts']} (their merged votes, those that count, are not "
        "unanimous: one record chose a, another b or a tie)",
        "",
        "## Annotators",
        "",
        "Agreement: how often an annotator chose what the majority of the *other* annotators of the same "
        "comparison chose (comparisons without such a majority do not count). Lowest first.",
        "",
        *_table(
            ["annotator", "votes", "compared", "agreement", "excluded"],
            (
                (name, a["votes"], a["compared"], _number(a["agreement"]), "yes" if a["excluded"] else "")
                for name, a in sorted(manifest["annotators"].items(), key=_by_agreement)
            ),
        ),
        "",
        "## Inter-annotator agreement",
        "",
        *_agreement_lines(agreement),
    ]
    if "before_exclusion" in agreement:
        threshold = manifest["settings"]["min_annotator_agreement"]
        lines += [
            "",
            f"Before excluding annotators below {threshold} agreement:",
            "",
            *_agreement_lines(agreement["before_exclusion"]),
        ]
    lines += ["", "## Settings", "", "```json", json.dumps(manifest["settings"], indent=2), "```", ""]
    return "\n".join(lines)


def _by_agreement(item: tuple[str, dict[str, Any]]) -> tuple[bool, float, str]:
    """Lowest agreement first; annotators never compared last."""
    name, stats = item
    return stats["agreement"] is None, stats["agreement"] or 0.0, name


def _agreement_lines(agreement: dict[str, Any]) -> list[str]:
    if not agreement["units"]:
        return ["No comparison has two or more named annotators."]
    return [
        f"- Krippendorff's alpha (nominal): {_number(agreement['krippendorff_alpha'])} "
        f"over {agreement['units']} comparisons with two or more annotators",
        f"- Fleiss' kappa: {_number(agreement['fleiss_kappa'])} over {agreement['fleiss_units']} comparisons "
        f"with {agreement['fleiss_raters']} annotators each (the most common number)",
    ]


def _table(header: list[str], rows: Any) -> list[str]:
    body = [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows]
    if not body:
        return ["none"]
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *body]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
