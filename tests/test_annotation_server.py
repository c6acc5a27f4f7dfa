"""Push and pull against a real Label Studio server: idempotence, the votes as the UI stores them, waiting,
tasks deleted on the server, one-line errors, and the API key never leaving memory.

One server serves the whole session (`label_studio` in conftest, about a minute to start); each test uses a
project of its own. Annotations are posted through the API in the shapes the UI writes (verified against
Label Studio 1.23.2): Pairwise `{"selected": "left"}`, Ranker `{"ranker": {"rank": [ids]}}`, `[]` for no
preference, `was_cancelled` for a skip.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from rlhf.annotation.server import AnnotationServerError, Credentials, LabelStudio
from rlhf.annotation.sync import PullResult, pull, push
from rlhf.annotation.tasks import PAIRWISE_CONFIG, RANKING_CONFIG, build_tasks
from rlhf.data.preferences import ImportSettings
from rlhf.errors import ConfigError, RlhfError

pytestmark = pytest.mark.labelstudio

SETTINGS = ImportSettings(test_fraction=0.0)  # every row in train, so a test reads one file
NOT_A_COMPARISON = """<View>
  <Text name="text" value="$text"/>
  <Choices name="label" toName="text"><Choice value="yes"/><Choice value="no"/></Choices>
</View>
"""
QUALITY = ("good", "fair", "poor")  # response i of every prompt starts with QUALITY[i]: best first


@pytest.fixture(scope="module")
def client(label_studio) -> LabelStudio:
    with LabelStudio(Credentials(label_studio.url, label_studio.token)) as client:
        yield client


@pytest.fixture(scope="module")
def annotators(client: LabelStudio) -> list[int]:
    return [client.ensure_user(f"annotator{i}@rlhf.invalid") for i in range(3)]


def make_tasks(tag: str, prompts: int, responses: int = 2) -> list[dict[str, Any]]:
    messages = [[{"role": "user", "content": f"{tag} question {i}"}] for i in range(prompts)]
    texts = [[f"{QUALITY[r]} answer {r} to {tag} {i}" for r in range(responses)] for i in range(prompts)]
    tasks, skipped = build_tasks(messages, texts, {"test": tag}, seed=0)
    assert skipped == 0
    return tasks


def on_server(client: LabelStudio, project_id: int) -> list[dict[str, Any]]:
    """The project's tasks, in prompt order."""
    return sorted(client.tasks(project_id), key=lambda task: task["data"]["prompt"])


def pairwise(side: str | None) -> list[dict[str, Any]]:
    """A Pairwise result as the UI stores it; None: the annotator chose neither (an empty result)."""
    if side is None:
        return []
    value = {"selected": side}
    return [{"from_name": "comparison", "to_name": "answer1,answer2", "type": "pairwise", "value": value}]


def side(task: dict[str, Any], best: bool = True) -> str:
    """Where the better (or, best=False, the worse) response of a pairwise task is shown."""
    good_left = task["data"]["answer1"].startswith("good")
    return "left" if good_left == best else "right"


def rows(result: PullResult) -> list[dict[str, Any]]:
    return pq.read_table(result.dataset_dir / "train" / "data.parquet").to_pylist()


def manifest(result: PullResult) -> dict[str, Any]:
    return json.loads((result.dataset_dir / "manifest.json").read_text(encoding="utf-8"))


def quarantine(result: PullResult) -> list[dict[str, Any]]:
    lines = (result.dataset_dir / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def assert_no_secret(folder: Path, *secrets: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), path


def one_line_error(excinfo: pytest.ExceptionInfo[RlhfError], *secrets: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and not any(secret in message for secret in secrets)
    return message


def test_push_twice_uploads_once(label_studio, client: LabelStudio) -> None:
    """The second push (here through a personal access token) finds every key and uploads nothing; a
    project whose title merely contains the asked one is not it."""
    client.create_project("rlhf push twice, an older copy", PAIRWISE_CONFIG, 1)
    tasks = make_tasks("push", 3)
    first = push(client, "rlhf push twice", tasks, PAIRWISE_CONFIG, overlap=2)
    assert (first.uploaded, first.already_there) == (3, 0)
    with LabelStudio(Credentials(label_studio.url, label_studio.personal_access_token())) as jwt_client:
        second = push(jwt_client, "rlhf push twice", tasks + make_tasks("push more", 1), PAIRWISE_CONFIG, 2)
        jwt_client._access = "revoked"  # the server refuses the access token: the client exchanges it again
        assert len(jwt_client.tasks(second.project_id)) == 4
    assert (second.project_id, second.uploaded, second.already_there) == (first.project_id, 1, 3)
    assert client.project(first.project_id)["maximum_annotations"] == 2


@pytest.fixture(scope="module")
def voted(client: LabelStudio, annotators: list[int]) -> dict[str, Any]:
    """A pairwise project (2 annotators per task) voted as annotators do: agreement, a skip beside two
    votes, opposite votes, no preference from both, and a task only skipped."""
    title = "rlhf pull votes"
    project_id = push(client, title, make_tasks("votes", 5), PAIRWISE_CONFIG, overlap=2).project_id
    agree, skipped_once, opposite, neither, only_skipped = on_server(client, project_id)
    a, b, c = annotators
    for user in (a, b):
        client.annotate(agree["id"], pairwise(side(agree)), user)
        client.annotate(skipped_once["id"], pairwise(side(skipped_once)), user)
        client.annotate(neither["id"], pairwise(None), user)
    client.annotate(skipped_once["id"], [], c, cancelled=True)
    client.annotate(opposite["id"], pairwise(side(opposite)), a)
    client.annotate(opposite["id"], pairwise(side(opposite, best=False)), b)
    client.annotate(only_skipped["id"], [], c, cancelled=True)
    tasks = {"agree": agree, "skipped once": skipped_once, "opposite": opposite, "neither": neither,
             "only skipped": only_skipped}  # fmt: skip
    return {"title": title, "project_id": project_id, "tasks": tasks}


def test_pull_imports_what_was_voted(
    label_studio, client: LabelStudio, annotators: list[int], voted, tmp_path: Path
) -> None:
    result = pull(client, voted["title"], tmp_path, SETTINGS, progress=False)
    tasks, (a, b, _) = voted["tasks"], annotators
    finished = sorted(tasks[name]["id"] for name in ("agree", "skipped once", "opposite", "neither"))
    assert result.task_ids == tuple(finished)  # a task only skipped never finishes
    assert result.dataset_dir == tmp_path / "rlhf-pull-votes" / f"snap-{result.sha256[:12]}"
    assert not result.reused

    kept = rows(result)
    assert len(kept) == 2
    for row in kept:
        assert row["chosen"][-1]["content"].startswith("good")
        assert row["rejected"][-1]["content"].startswith("fair")
        assert sorted(row["annotators"]) == sorted([str(a), str(b)])  # the skip cast no vote
    assert result.report.identity == "rows read = kept + quarantined + duplicates: 4 = 2 + 2 + 0"
    reasons = quarantine(result)
    assert [entry["reason"] for entry in reasons] == ["tie dropped (ties=drop)"] * 2
    quarantined = {i for i in range(5) for entry in reasons if f"votes question {i}" in entry["raw"]}
    assert quarantined == {2, 3}  # the opposite votes and the no-preference task

    written = manifest(result)
    assert set(written["annotators"]) == {str(a), str(b)}
    for stats in written["annotators"].values():  # agree, agree, opposite, both no preference
        assert (stats["votes"], stats["compared"], stats["agreement"]) == (4, 4, 0.75)
    assert written["agreement"]["units"] == 4 and written["agreement"]["krippendorff_alpha"] < 1
    block = written["labelstudio"]
    assert block["project"] == {"id": voted["project_id"], "title": voted["title"]}
    assert (block["snapshot_id"], block["sha256"], block["task_ids"]) == (
        result.snapshot_id, result.sha256, finished,
    )  # fmt: skip
    export_dir = tmp_path / "rlhf-pull-votes" / "exports" / result.dataset_dir.name
    assert (export_dir / "label_config.xml").read_text(encoding="utf-8") == PAIRWISE_CONFIG.strip()
    assert written["sources"][0]["file"] == str(export_dir / "export.json") == str(result.export_path)
    assert_no_secret(tmp_path, label_studio.token)


def test_pull_twice_reuses_the_dataset(label_studio, client: LabelStudio, voted, tmp_path: Path) -> None:
    first = pull(client, voted["title"], tmp_path, SETTINGS, progress=False)
    second = pull(client, voted["title"], tmp_path, SETTINGS, progress=False)
    assert second.reused and not first.reused
    assert (second.dataset_dir, second.sha256, second.snapshot_id) == (
        first.dataset_dir, first.sha256, first.snapshot_id,
    )  # fmt: skip
    assert second.report.fingerprint == first.report.fingerprint
    headers = {"Authorization": f"Token {label_studio.token}"}
    listed = httpx.get(f"{label_studio.url}/api/projects/{first.project_id}/exports/", headers=headers).json()
    assert max(snapshot["id"] for snapshot in listed) == first.snapshot_id  # the second one was deleted
    # other settings import the same snapshot again, into the same folder
    kept_ties = pull(
        client, voted["title"], tmp_path, ImportSettings(test_fraction=0, ties="keep"), progress=False
    )
    assert kept_ties.dataset_dir == first.dataset_dir and not kept_ties.reused
    assert kept_ties.report.kept == 4
    assert sorted(p.name for p in first.dataset_dir.parent.iterdir()) == ["exports", first.dataset_dir.name]


def test_ranking_pull(client: LabelStudio, annotators: list[int], tmp_path: Path) -> None:
    """A Ranker over three responses, ranked by one annotator, gives every pair in its order."""
    title = "rlhf pull ranking"
    project_id = push(client, title, make_tasks("ranking", 1, responses=3), RANKING_CONFIG, 1).project_id
    (task,) = client.tasks(project_id)
    by_quality = sorted(task["data"]["items"], key=lambda item: QUALITY.index(item["body"].split()[0]))
    order = [item["id"] for item in by_quality]
    result = [
        {"from_name": "rank", "to_name": "answers", "type": "ranker", "value": {"ranker": {"rank": order}}}
    ]
    client.annotate(task["id"], result, annotators[0])
    pulled = pull(client, title, tmp_path, SETTINGS, progress=False)
    pairs = {
        (row["chosen"][-1]["content"].split()[0], row["rejected"][-1]["content"].split()[0])
        for row in rows(pulled)
    }
    assert pairs == {("good", "fair"), ("good", "poor"), ("fair", "poor")}
    assert pulled.task_ids == (task["id"],)


def test_wait_for(label_studio, client: LabelStudio, annotators: list[int], tmp_path: Path) -> None:
    """Returns at once when enough tasks are finished, waits for more while annotators work, and refuses to
    wait for more tasks than the project has."""
    title = "rlhf pull wait"
    project_id = push(client, title, make_tasks("wait", 2), PAIRWISE_CONFIG, 1).project_id
    first, second = on_server(client, project_id)
    client.annotate(first["id"], pairwise(side(first)), annotators[0])
    assert pull(client, title, tmp_path / "one", SETTINGS, wait_for=1, progress=False).task_ids == (
        first["id"],
    )

    waited: list[PullResult | Exception] = []

    def wait() -> None:
        try:
            waited.append(pull(client, title, tmp_path / "two", SETTINGS, 2, 0.2, progress=False))
        except Exception as exc:
            waited.append(exc)

    thread = threading.Thread(target=wait)
    with LabelStudio(Credentials(label_studio.url, label_studio.token)) as other:  # as an annotator's browser
        thread.start()
        thread.join(timeout=1.5)
        assert thread.is_alive()  # still waiting for the second task
        other.annotate(second["id"], pairwise(side(second)), annotators[1])
        thread.join(timeout=60)
    assert len(waited) == 1 and not isinstance(waited[0], Exception), waited
    assert waited[0].task_ids == (first["id"], second["id"])

    with pytest.raises(AnnotationServerError) as excinfo:
        pull(client, title, tmp_path / "three", SETTINGS, wait_for=3, progress=False)
    assert "--wait-for 3" in one_line_error(excinfo) and "only 2 tasks" in str(excinfo.value)
    assert not (tmp_path / "three").exists()


def test_task_deleted_between_push_and_pull(
    client: LabelStudio, annotators: list[int], tmp_path: Path
) -> None:
    title = "rlhf pull deleted"
    project_id = push(client, title, make_tasks("deleted", 3), PAIRWISE_CONFIG, 1).project_id
    tasks = on_server(client, project_id)
    for task in tasks:
        client.annotate(task["id"], pairwise(side(task)), annotators[0])
    client.delete_task(tasks[1]["id"])
    result = pull(client, title, tmp_path, SETTINGS, progress=False)
    assert result.task_ids == (tasks[0]["id"], tasks[2]["id"])
    assert manifest(result)["labelstudio"]["task_ids"] == [tasks[0]["id"], tasks[2]["id"]]
    assert result.report.kept == 2


def test_bad_input_is_one_line_and_writes_nothing(label_studio, client: LabelStudio, tmp_path: Path) -> None:
    token = label_studio.token
    port = closed_port()
    gone = LabelStudio(Credentials(f"http://127.0.0.1:{port}", token), timeout=5)
    with gone, pytest.raises(AnnotationServerError) as excinfo:
        pull(gone, "rlhf anything", tmp_path, SETTINGS, progress=False)
    message = one_line_error(excinfo, token)
    assert message.startswith(f"Label Studio at http://127.0.0.1:{port}: unreachable (")

    wrong = "0" * 40
    with (
        LabelStudio(Credentials(label_studio.url, wrong)) as refused,
        pytest.raises(AnnotationServerError) as excinfo,
    ):
        refused.version()
    assert one_line_error(excinfo, wrong) == (
        f"Label Studio at {label_studio.url}: the API key was refused (401) — check LABEL_STUDIO_API_KEY"
    )
    forged = forged_personal_access_token()
    with (
        LabelStudio(Credentials(label_studio.url, forged)) as refused,
        pytest.raises(AnnotationServerError) as excinfo,
    ):
        push(refused, "rlhf anything", make_tasks("forged", 1), PAIRWISE_CONFIG, 1)
    assert "the API key was refused" in one_line_error(excinfo, forged)

    project = client.create_project("rlhf not a comparison", NOT_A_COMPARISON, 1)
    for attempt in (
        lambda: push(client, "rlhf not a comparison", make_tasks("choices", 1), PAIRWISE_CONFIG, 1),
        lambda: pull(client, "rlhf not a comparison", tmp_path, SETTINGS, progress=False),
    ):
        with pytest.raises(AnnotationServerError) as excinfo:
            attempt()
        message = one_line_error(excinfo, token)
        assert f"project 'rlhf not a comparison' (id {project['id']}) is not a comparison project" in message
    assert client.tasks(project["id"]) == []

    push(client, "rlhf pull nothing finished", make_tasks("unfinished", 2), PAIRWISE_CONFIG, 1)
    with pytest.raises(AnnotationServerError) as excinfo:
        pull(client, "rlhf pull nothing finished", tmp_path, SETTINGS, progress=False)
    assert "no tasks to pull yet" in one_line_error(excinfo, token)
    with pytest.raises(AnnotationServerError) as excinfo:
        pull(client, "rlhf no such project", tmp_path, SETTINGS, progress=False)
    assert "no project titled 'rlhf no such project'" in one_line_error(excinfo, token)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_credentials_from_flags_or_environment() -> None:
    environ = {"LABEL_STUDIO_URL": "http://env:8080/", "LABEL_STUDIO_API_KEY": "env-key"}
    assert Credentials.resolve(None, None, environ) == Credentials("http://env:8080", "env-key")
    assert Credentials.resolve("https://flag/ls", "flag-key", environ) == Credentials(
        "https://flag/ls", "flag-key"
    )
    assert "flag-key" not in repr(Credentials.resolve("https://flag/ls", "flag-key", environ))
    with pytest.raises(ConfigError, match=r"pass --url or set LABEL_STUDIO_URL"):
        Credentials.resolve(None, "key", {})
    with pytest.raises(ConfigError, match=r"set LABEL_STUDIO_API_KEY \(or pass --api-key\)"):
        Credentials.resolve("http://host", None, {})
    with pytest.raises(ConfigError) as excinfo:
        Credentials.resolve("http://me:hunter2@host", "key", {})
    assert "hunter2" not in str(excinfo.value)


def test_cli_push_and_pull_with_the_key_from_the_environment(
    label_studio, client: LabelStudio, annotators: list[int], tmp_path: Path, monkeypatch, capsys
) -> None:
    from rlhf.cli import main

    pat = label_studio.personal_access_token()
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps(make_tasks("cli", 2)), encoding="utf-8")
    tasks_file.with_suffix(".label_config.xml").write_text(PAIRWISE_CONFIG, encoding="utf-8")
    title = "rlhf cli"

    assert main(["annotate", "push", str(tasks_file), "--project", title, "--overlap", "1"]) == 0
    pushed = capsys.readouterr().out
    project_id = client.find_project(title)["id"]
    assert pushed.strip() == (
        f"Label Studio project '{title}' (id {project_id}) at {label_studio.url}: 2 tasks uploaded, 0 already there"
    )
    for task in client.tasks(project_id):
        for user in annotators[:2]:
            client.annotate(task["id"], pairwise(side(task)), user)
    out = tmp_path / "datasets"
    assert main(["annotate", "pull", "--project", title, "--out", str(out), "--test-fraction", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"pulled 2 tasks of project {project_id} (snapshot ")
    assert lines[1] == "preferences: rows read = kept + quarantined + duplicates: 2 = 2 + 0 + 0"
    assert lines[2].startswith("agreement: Krippendorff's alpha ") and "over 2 comparisons" in lines[2]
    assert lines[3].startswith(f"dataset {out / 'rlhf-cli'}/snap-")

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-the-key")
    assert main(["annotate", "pull", "--project", title, "--out", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err
    assert error.strip() == (
        f"error: Label Studio at {label_studio.url}: the API key was refused (401) — check LABEL_STUDIO_API_KEY"
    )
    assert pat not in pushed + "\n".join(lines) + error and "not-the-key" not in error
    assert_no_secret(tmp_path, pat, label_studio.token)
    assert not (tmp_path / "refused").exists()


def forged_personal_access_token() -> str:
    """A well-formed JWT refresh token the server never issued."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'token_type': 'refresh', 'exp': 4102444800})}.c2ln"


def closed_port() -> int:
    """A local port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
