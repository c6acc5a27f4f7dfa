"""A Label Studio project's labeling config (`--label-config FILE`): where a task's judgement and texts are.

Exports name the control each result came from, not the fields it was shown beside. The config says both:
object tags (`<Text name="answer1" value="$answer1"/>`, `<List name="answers" value="$items"/>`) map names
to task data fields, and the judging control's `toName` points at them. So the config settles what the
importer would otherwise guess from field names: which field is the prompt, which the responses (in display
order), and which control holds the preference when a project has several Choices.

The config is XML the user wrote; it is read from a local file with the standard library's parser, which
expands no external entities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from xml.etree import ElementTree

from rlhf.data.importers.judgements import CHAT_KEYS, PROMPT_KEYS, choice_of, numbered_groups
from rlhf.errors import DataError

TEXT_TAGS = ("Text", "HyperText", "Paragraphs")
CONTROLS = {"Pairwise": "pairwise", "Ranker": "ranker", "Choices": "choices"}  # tag -> result type


@dataclass(frozen=True)
class LabelConfig:
    """What the importer takes from a labeling config."""

    control: str  # name of the control that holds the preference
    kind: str  # its result type as exports write it: pairwise | ranker | choices
    responses: tuple[str, ...]  # data fields: the two responses (left first), or the ranked List's one field
    prompt: str | None  # data field shown as the prompt, where the config tells
    buckets: tuple[str, ...]  # a Ranker's Bucket names, as written (an order only the user can confirm)


def load_label_config(path: str) -> LabelConfig:
    """The config in `path`, parsed once per file version (every record of an import asks for it)."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the labeling config ({exc.strerror})") from None
    return _load(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> LabelConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the labeling config ({exc})") from None
    return parse_label_config(text, path)


def parse_label_config(text: str, where: str) -> LabelConfig:
    """The judging control, the responses it compares and the prompt; a config without a usable control
    is one line naming the file."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise DataError(f"{where}:{exc.position[0]}: not a labeling config (invalid XML: {exc})") from None
    objects = {  # object tag name -> (tag, data field)
        element.get("name", ""): (element.tag, value[1:])
        for element in root.iter()
        if element.tag in (*TEXT_TAGS, "List") and (value := element.get("value", "")).startswith("$")
    }
    control = _judging_control(root, where)
    kind, name = CONTROLS[control.tag], control.get("name", "")
    if kind == "choices":
        responses = _numbered_pair([field for tag, field in objects.values() if tag in TEXT_TAGS])
    else:
        responses = _targets(control, objects, where)
    shown = [field for tag, field in objects.values() if tag in TEXT_TAGS and field not in responses]
    usual = [key for key in CHAT_KEYS + PROMPT_KEYS if key in shown]
    prompt = shown[0] if len(shown) == 1 else (usual[0] if usual else None)
    buckets = tuple(bucket.get("name", "") for bucket in control.iter("Bucket"))
    return LabelConfig(name, kind, responses, prompt, buckets)


def _judging_control(root: ElementTree.Element, where: str) -> ElementTree.Element:
    """The one Pairwise or Ranker, else the one Choices whose values name a side ('Response A'); Choices
    about other things (safety, flags) are not the preference."""
    direct = [element for element in root.iter() if element.tag in ("Pairwise", "Ranker")]
    sided = [
        element
        for element in root.iter("Choices")
        if any(choice_of(_choice_value(choice)) in ("a", "b") for choice in element.iter("Choice"))
    ]
    for candidates in (direct, sided):
        if len(candidates) > 1:
            names = ", ".join(f"{element.tag} '{element.get('name')}'" for element in candidates)
            raise DataError(f"{where}: several controls could hold the preference ({names}); expected one")
        if candidates:
            return candidates[0]
    raise DataError(
        f"{where}: no Pairwise, Ranker, or Choices naming a side ('Response A', 'answer2') in the labeling config"
    )


def _targets(
    control: ElementTree.Element, objects: dict[str, tuple[str, str]], where: str
) -> tuple[str, ...]:
    """The data fields a Pairwise (two Text tags, left first) or a Ranker (one List) points at."""
    tags, count, expected = (
        (TEXT_TAGS, 2, "two Text tags") if control.tag == "Pairwise" else (("List",), 1, "a List tag")
    )
    targets = [target.strip() for target in control.get("toName", "").split(",") if target.strip()]
    if len(targets) != count or any(objects.get(target, ("", ""))[0] not in tags for target in targets):
        raise DataError(
            f"{where}: {control.tag} '{control.get('name')}' has toName={control.get('toName')!r}; expected {expected}"
        )
    return tuple(objects[target][1] for target in targets)


def _choice_value(choice: ElementTree.Element) -> str:
    """What an export writes for a Choice: its alias where it has one, else its value."""
    return choice.get("alias") or choice.get("value") or ""


def _numbered_pair(fields: list[str]) -> tuple[str, ...]:
    """The two fields numbered alike (answer1/answer2), the responses of a Choices project; () if unclear."""
    pairs = [group for group in numbered_groups(fields) if len(group) == 2]
    return tuple(pairs[0]) if len(pairs) == 1 else ()
