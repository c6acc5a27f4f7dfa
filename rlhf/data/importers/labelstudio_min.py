"""Label Studio's JSON_MIN and CSV exports: one flat row per submitted annotation, read as a one-annotation task.

Label Studio's converter (`label_studio_sdk.converter`, `convert_to_json_min` and `exports/csv2.py`) writes
for every submitted annotation of a task, newest first, the task's data fields, its `id`, each control's
result under the control's name, and `annotator` (the user's id, or email where the export expanded users),
`annotation_id`, `created_at`, `updated_at`, `lead_time`. A result is prettified: a one-value Choices is the
string ("Response A"), several values are `{"choices": [...]}`, a Pairwise is `[{"selected": "left"}]`, a
Ranker `[{"ranker": {...}}]`. A task without annotations is one row without an annotation id; cancelled
annotations are not exported. CSV writes the same columns sorted, lists and objects (task data and results)
as JSON text, absent values as "", and renames a data field that has a control's name to `_data_<name>`.

Such a row becomes the task of the JSON export with its one annotation, so both take one path to votes, and
a task's rows become comparisons of one vote each (the import merges the votes of the same comparison).
Which column holds the judgement is known from the labeling config (`--label-config`); without it, from the
shape of the value, where a one-value Choices is only a string naming a side ("Response A", "Tie").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers.judgements import PROMPT_KEYS, choice_of, numbered_groups
from rlhf.data.importers.labelstudio_config import LabelConfig
from rlhf.data.records import excerpt

ROW_KEYS = frozenset(
    ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement", "history")
)
_SHAPES = {"selected": "pairwise", "ranker": "ranker"}  # key of a prettified result item -> result type


def is_row(record: Any) -> bool:
    """A JSON_MIN or CSV row: the annotation columns every row of those exports has."""
    return (
        isinstance(record, Mapping)
        and {"annotator", "annotation_id", "lead_time"} <= record.keys()
        and "annotations" not in record
    )


def row_task(row: Mapping[str, Any], config: LabelConfig | None, options: ImportOptions) -> dict[str, Any]:
    """The task of the JSON export that this row is one annotation of."""
    fields = {str(key).removeprefix("_data_"): value for key, value in row.items() if key not in ROW_KEYS}
    responses = {key for group in numbered_groups(fields) for key in group}
    responses |= set(config.responses) if config and config.kind != "ranker" else set()
    texts = responses | {*PROMPT_KEYS, options.prompt_field or ""}
    results, data = [], {}
    for key, raw in fields.items():
        value = raw if key in responses else _structure(raw)
        kind = _kind(key, value, config, texts)
        if kind is None:
            data[key] = value if _objects(value) else raw
        elif _present(raw) is not None:
            results.append({"from_name": key, "to_name": "", "type": kind, "value": _value(key, kind, value)})
    annotation_id, annotator = _present(row.get("annotation_id")), _present(row.get("annotator"))
    annotation = {"id": annotation_id, "completed_by": annotator, "result": results}
    return {"id": row.get("id"), "data": data, "annotations": [] if annotation_id is None else [annotation]}


def unexplained(data: Mapping[str, Any], used: set[str]) -> list[str]:
    """The fields of a row without a recognized result, other than the prompt and the responses: one of them
    may hold a judgement the importer cannot read, so such a row is not a no-preference tie."""
    return sorted(key for key, value in data.items() if key not in used and _present(value) is not None)


def _kind(key: str, value: Any, config: LabelConfig | None, texts: set[str]) -> str | None:
    """The result type of a column (pairwise, ranker, choices), or None for a task data field."""
    if config is not None and key == config.control:
        return config.kind
    if key in texts:
        return None
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping) and len(value[0]) == 1:
        return _SHAPES.get(next(iter(value[0])))
    if isinstance(value, Mapping) and value.keys() == {"choices"} and isinstance(value["choices"], list):
        return "choices"
    if config is None and isinstance(value, str) and choice_of(value) is not None:
        return "choices"
    return None


def _value(key: str, kind: str, value: Any) -> Mapping[str, Any]:
    """A prettified result back in the JSON export's `value` form."""
    if kind == "choices" and isinstance(value, str):
        return {"choices": [value]}
    if kind == "choices" and isinstance(value, Mapping) and isinstance(value.get("choices"), list):
        return value
    if kind != "choices" and isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping):
        return value[0]
    raise BadRow(f"column '{key}' is not a {kind} result: {excerpt(value, 80)}")


def _structure(value: Any) -> Any:
    """CSV holds lists and objects (a conversation, a List's items, a result) as JSON text."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, list | dict) else value
    return value


def _objects(value: Any) -> bool:
    """A list of objects: a conversation or a List's items, which CSV writes as JSON text."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _present(value: Any) -> Any:
    """None for what CSV writes for an absent value ("")."""
    return None if value is None or value == "" else value
