"""Label Studio exports: a task per record (JSON), or a row per annotation (JSON_MIN, CSV); a vote per
submitted annotation.

A project holds a preference in one of three controls: the Pairwise tag (`selected: left | right`), a
Choices tag whose values name a side ("Response A", "answer2", "Tie", ...), or the Ranker tag (an ordered
list, or buckets), whose k-wise order becomes every pair. Cancelled (skipped) annotations cast no vote. A
submitted annotation without a result is an annotator who saw no winner (in Pairwise, choosing neither side
deletes the result), so it counts as a tie. Predictions are model pre-annotations, never votes.

Ranker buckets are ranked only in the order the user gives (`--bucket-order`): the stock "LLM Ranker"
template's buckets (relevant / biased results) are categories, not a quality order. A JSON_MIN or CSV row is
read as a task with its one annotation (`labelstudio_min`); the project's labeling config (`--label-config`,
`labelstudio_config`) names the prompt, the responses and the judging control where field names do not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers.judgements import (
    Ranks,
    choice_of,
    keys_of,
    numbered_groups,
    pair_votes,
    prompt_key,
    prompt_messages,
    ranks_for,
)
from rlhf.data.importers.labelstudio_config import LabelConfig, load_label_config
from rlhf.data.importers.labelstudio_min import is_row, row_task, unexplained
from rlhf.data.records import Choice, Comparison, Source, excerpt

Control = tuple[str, str, str]  # (result type, from_name, to_name) of the control that holds the preference


class LabelStudioImporter:
    """Tasks of a Label Studio JSON export, or rows of its JSON_MIN and CSV exports."""

    name = "labelstudio"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        """A task (a `data` object with an `annotations` or `predictions` list) or an annotation row."""
        return is_row(record) or (
            isinstance(record, Mapping)
            and isinstance(record.get("data"), Mapping)
            and (isinstance(record.get("annotations"), list) or isinstance(record.get("predictions"), list))
        )

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        """One comparison per pair of responses, with a vote from every submitted annotation (of a row: one)."""
        config = load_label_config(options.label_config) if options.label_config else None
        row = is_row(record)
        task = row_task(record, config, options) if row else record
        data = task.get("data")
        if not isinstance(data, Mapping):
            raise BadRow("task has no 'data' object")
        submitted = _submitted(task.get("annotations"))
        control = _control(submitted, config)
        texts = (
            _ranked_items(data, submitted, control, options.bucket_order)
            if control and control[0] == "ranker"
            else _pair(data, control)
        )
        shown = config.prompt if config else None
        if row and control is None and config is None:
            _no_hidden_judgement(data, {prompt_key(data, shown) or "", options.prompt_field or "", *texts})
        judgements = [
            (_annotator(annotation), _ranks(annotation, control, texts, options.bucket_order))
            for annotation in submitted
        ]
        prompt = prompt_messages(data, shown, options.prompt_field)
        for first, second, votes in pair_votes(list(texts), judgements):
            yield Comparison(prompt, texts[first], texts[second], votes, source)


def _no_hidden_judgement(data: Mapping[str, Any], used: set[str]) -> None:
    """A row in which no result was recognized is a no-preference tie only if nothing else is in it."""
    if others := unexplained(data, used):
        raise BadRow(
            f"no Pairwise, Ranker or Choices result recognized in the row (other columns: {', '.join(others)}); "
            "pass --label-config with the project's labeling config, or import the JSON export"
        )


def _submitted(annotations: Any) -> list[Mapping[str, Any]]:
    """The annotations that count: cancelled ones are skips, and a task left with none is unusable."""
    annotations = [] if annotations is None else annotations
    if not isinstance(annotations, list) or not all(isinstance(a, Mapping) for a in annotations):
        raise BadRow(f"'annotations' is not a list of objects: {excerpt(annotations, 80)}")
    submitted = [annotation for annotation in annotations if not annotation.get("was_cancelled")]
    if not submitted:
        count = len(annotations)
        state = f"{count} annotation{'s' if count != 1 else ''}, all cancelled" if count else "no annotations"
        raise BadRow(f"no submitted judgement: {state}")
    return submitted


def _results(annotation: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    results = annotation.get("result") or []
    if not isinstance(results, list) or not all(isinstance(item, Mapping) for item in results):
        raise BadRow(f"annotation {annotation.get('id')}: 'result' is not a list of objects")
    return results


def _control(submitted: list[Mapping[str, Any]], config: LabelConfig | None) -> Control | None:
    """The control whose results are the preference (the labeling config's, where given); None when no
    annotator left any result (all no-preference)."""
    seen = {
        (str(item.get("type")), str(item.get("from_name")), str(item.get("to_name")))
        for annotation in submitted
        for item in _results(annotation)
    }
    direct = sorted(control for control in seen if control[0] in ("pairwise", "ranker"))
    if config is not None:
        if others := sorted({tag for _, tag, _ in direct} - {config.control}):
            raise BadRow(
                f"results of {', '.join(others)}, which is not the labeling config's {config.kind} "
                f"'{config.control}': is it the config of another project?"
            )
        return (config.kind, config.control, ",".join(config.responses))
    if len({tag for _, tag, _ in direct}) > 1:
        raise BadRow(
            f"several comparison controls in one task: {', '.join(sorted({tag for _, tag, _ in direct}))}"
        )
    if direct:
        return direct[0]
    choices = _choices_control(submitted, sorted({tag for kind, tag, _ in seen if kind == "choices"}))
    if choices is None and seen:
        kinds = ", ".join(sorted({kind for kind, _, _ in seen}))
        raise BadRow(
            f"no comparison in the annotations: results of type {kinds} (expected pairwise, choices or ranker)"
        )
    return choices


def _choices_control(submitted: list[Mapping[str, Any]], names: list[str]) -> Control | None:
    """The one Choices control whose values name a side or a tie; other Choices (quality, safety) are ignored."""
    values = {
        name: [value for annotation in submitted for value in _choices(annotation, name)] for name in names
    }
    candidates = [name for name in names if any(choice_of(value) for value in values[name])]
    if len(candidates) > 1:
        raise BadRow(f"several Choices controls could hold the comparison: {', '.join(candidates)}")
    if candidates:
        return ("choices", candidates[0], "")
    if names:
        seen = "; ".join(f"{name}: {', '.join(map(repr, values[name]))}" for name in names)
        raise BadRow(
            f"no Choices value names a side or a tie ({seen}); expected e.g. 'Response A', 'Response B', 'Tie'"
        )
    return None


def _choices(annotation: Mapping[str, Any], name: str) -> list[str]:
    values = [_value(item).get("choices") for item in _results(annotation) if item.get("from_name") == name]
    return [str(value) for chosen in values if isinstance(chosen, list) for value in chosen]


def _pair(data: Mapping[str, Any], control: Control | None) -> dict[str, str]:
    """The two responses, left first: the Pairwise toName when it names two data keys, else the one pair of
    keys numbered alike (answer1/answer2, response_a/response_b) or left/right."""
    named = [name.strip() for name in (control[2] if control else "").split(",")]
    if len(named) == 2 and all(name in data for name in named):
        return _texts(data, named)
    pairs = [group for group in numbered_groups(map(str, data)) if len(group) == 2]
    pairs += [["left", "right"]] if "left" in data and "right" in data else []
    if len(pairs) == 1:
        return _texts(data, pairs[0])
    if pairs:
        found = ", ".join("/".join(pair) for pair in pairs)
        raise BadRow(f"ambiguous responses in the task data: {found} (keys: {keys_of(data)})")
    raise BadRow(
        f"cannot find the two responses in the task data (keys: {keys_of(data)}); expected e.g. answer1/answer2"
    )


def _texts(data: Mapping[str, Any], keys: list[str]) -> dict[str, str]:
    for key in keys:
        if not isinstance(data[key], str):
            raise BadRow(f"response '{key}' is not text: {excerpt(data[key], 80)}")
    return {key: data[key] for key in keys}


def _ranked_items(
    data: Mapping[str, Any], submitted: list[Mapping[str, Any]], control: Control, order: tuple[str, ...]
) -> dict[str, str]:
    """The texts of the List the Ranker ordered: the labeling config's List field, else the list in the task
    data whose item ids cover every ranked id."""
    ranked = {item for annotation in submitted for item in _ranker_ranks(annotation, control[1], order) or {}}
    named = [data[control[2]]] if control[2] in data else []
    for value in [*named, *data.values()]:
        if (
            isinstance(value, list)
            and value
            and all(isinstance(item, Mapping) and "id" in item for item in value)
        ):
            items = {str(item["id"]): item for item in value}
            if ranked <= items.keys():
                return {item_id: _item_text(item_id, item) for item_id, item in items.items()}
    raise BadRow(
        f"ranked items {', '.join(sorted(ranked))} are not the ids of a list in the task data (keys: {keys_of(data)})"
    )


def _item_text(item_id: str, item: Mapping[str, Any]) -> str:
    """A List item shows its `body` (the `title` is a caption such as the model's name)."""
    for key in ("body", "text", "content"):
        if isinstance(item.get(key), str):
            return item[key]
    raise BadRow(f"list item '{item_id}' has no text body: {excerpt(item, 80)}")


def _ranker_ranks(annotation: Mapping[str, Any], tag: str, order: tuple[str, ...]) -> Ranks | None:
    """Item ranks from a Ranker result: `{tag: [ids]}` (or a bare list) is an order; otherwise the keys are
    buckets, whose items tie and which rank only in the user's `order` (best first); the '_' column holds
    items left unsorted, so they get no rank."""
    values = [_value(item) for item in _results(annotation) if item.get("from_name") == tag]
    if not values:
        return None
    ranker = values[0].get("ranker")
    if isinstance(ranker, Mapping) and set(ranker) == {tag}:
        ranker = ranker[tag]
    if isinstance(ranker, list):
        return {str(item): rank for rank, item in enumerate(ranker, 1)}
    if isinstance(ranker, Mapping) and all(isinstance(ids, list) for ids in ranker.values()):
        buckets = {name: ids for name, ids in ranker.items() if name != "_" and ids}
        if unordered := [name for name in buckets if name not in order]:
            raise BadRow(_unordered_buckets(tag, unordered, order))
        return {str(item): order.index(name) + 1 for name, ids in buckets.items() for item in ids}
    raise BadRow(f"annotation {annotation.get('id')}: unreadable Ranker value {excerpt(values[0], 80)}")


def _unordered_buckets(tag: str, buckets: list[str], order: tuple[str, ...]) -> str:
    if order:
        return f"Ranker '{tag}' bucket {', '.join(buckets)} is not in --bucket-order ({', '.join(order)})"
    return (
        f"Ranker '{tag}' sorted items into buckets ({', '.join(buckets)}), which may be categories rather "
        "than a quality order; pass --bucket-order BEST,...,WORST to rank them"
    )


def _ranks(
    annotation: Mapping[str, Any], control: Control | None, texts: dict[str, str], order: tuple[str, ...]
) -> Ranks:
    """One annotator's judgement as ranks over the responses; no result for the control means no preference."""
    if control is None:
        return dict.fromkeys(texts, 1)
    kind, tag, _ = control
    if kind == "ranker":
        ranks = _ranker_ranks(annotation, tag, order)
        return dict.fromkeys(texts, 1) if ranks is None else ranks
    first, second = texts
    choice = _pairwise_choice(annotation, tag) if kind == "pairwise" else _choices_choice(annotation, tag)
    return ranks_for(choice or "tie", first, second)


def _pairwise_choice(annotation: Mapping[str, Any], tag: str) -> Choice | None:
    selected = [_value(item).get("selected") for item in _results(annotation) if item.get("from_name") == tag]
    if not selected:
        return None
    if selected[0] not in ("left", "right"):
        raise BadRow(f"annotation {annotation.get('id')}: unknown Pairwise selection {selected[0]!r}")
    return "a" if selected[0] == "left" else "b"


def _choices_choice(annotation: Mapping[str, Any], tag: str) -> Choice | None:
    values = _choices(annotation, tag)
    if len(values) > 1:
        raise BadRow(
            f"annotation {annotation.get('id')}: several choices in '{tag}': {', '.join(map(repr, values))}"
        )
    if not values:
        return None
    choice = choice_of(values[0])
    if choice is None:
        raise BadRow(f"annotation {annotation.get('id')}: unknown choice {values[0]!r} in '{tag}'")
    return choice


def _value(item: Mapping[str, Any]) -> Mapping[str, Any]:
    value = item.get("value")
    return value if isinstance(value, Mapping) else {}


def _annotator(annotation: Mapping[str, Any]) -> str | None:
    """`completed_by` is a user id, or a user object where the export expanded users; Label Studio's JSON_MIN
    and CSV exports name that user by email, so the same annotator keeps one name in every export type."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("email") if who.get("email") is not None else who.get("id")
    return None if who is None else str(who)


IMPORTER = LabelStudioImporter()
