"""Annotation rounds against a real Label Studio server: a round waiting for people is killed and picked up
by the next run without a task sent twice; the simulated annotators vote the same through the server as
through files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.annotation.channels import FileChannel, ServerChannel
from rlhf.annotation.server import Credentials, LabelStudio
from rlhf.annotation.simulated import annotate_on_server
from rlhf.annotation.tasks import build_tasks, label_config
from rlhf.config import RoundsConfig, load_config
from rlhf.data.importers import ImportOptions
from rlhf.data.preference_dataset import load_preferences
from rlhf.data.preferences import ImportSettings, import_preferences
from rlhf.data.synthetic import SynthConfig, all_prompts, parse_prompt, sample_response
from rlhf.registry import Registry
from rlhf.rounds import rounds_folder
from tests.conftest import REPO, pipeline_config

pytestmark = pytest.mark.labelstudio

# A pipeline small enough that its stages take seconds: the test is about the round, not the training.
ROUNDS = """
name: ls-rounds
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 600, num_sft_eval: 32, num_preference_tasks: 0}
rounds:
  count: 1
  pairs_per_round: 12
  annotators: label_studio
  generation: {max_new_tokens: 8}
  label_studio: {url: URL, overlap: 3, poll_seconds: 1}
stages:
  sft: {learning_rate: 3.0e-3, max_steps: 10, per_device_train_batch_size: 32, max_length: 64, save_steps: 1000,
        num_threads: 2, evaluation: null}
  reward: {model: tiny-llama, max_steps: 5, per_device_train_batch_size: 8, max_length: 64, save_steps: 1000,
           num_threads: 2}
  policy:
    dpo: {algorithm: dpo, max_steps: 5, per_device_train_batch_size: 8, max_length: 64, save_steps: 1000,
          num_threads: 2, evaluation: null}
evaluation: {max_new_tokens: 8, samples_per_prompt: 1}
tracking: none
"""


def _rlhf_run(config: Path, key: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LABEL_STUDIO_API_KEY": key}
    return subprocess.Popen([sys.executable, "-m", "rlhf.cli", "run", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _phase(state: Path) -> str | None:
    try:
        return json.loads(state.read_text())["phase"]
    except (FileNotFoundError, ValueError):
        return None


@pytest.mark.slow
def test_a_round_waiting_for_people_is_killed_and_resumed_without_a_task_sent_twice(
    label_studio, tmp_path: Path
) -> None:
    config = pipeline_config(tmp_path, ROUNDS.replace("URL", label_studio.url))
    folder = rounds_folder(load_config(config))
    state = folder / "round-1" / "state.json"

    # 1. The run trains SFT, samples, pushes, and waits for people; it dies while waiting (kill -9)
    first = _rlhf_run(config, label_studio.token)
    deadline = time.monotonic() + 300
    while _phase(state) != "pushed":
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the round never pushed"
        time.sleep(0.5)
    time.sleep(3)  # well inside its waiting loop
    assert first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait()
    pushed = json.loads(state.read_text())
    project = pushed["project"]
    assert project["title"] == "ls-rounds round 1" and pushed["pushed"]["uploaded"] == pushed["tasks"] > 0

    # 2. People answer in the meantime (here the simulated annotators, never skipping, through the API)
    with LabelStudio(Credentials(label_studio.url, label_studio.token)) as client:
        assert len(client.tasks(project["id"])) == pushed["tasks"]
        posted = annotate_on_server(client, project["id"], SynthConfig(skip_prob=0.0), seed=0)
        assert posted == 3 * pushed["tasks"]

    # 3. The next run picks the round up where it was: no second push of its tasks, a pull, training
    second = _rlhf_run(config, label_studio.token)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    done = json.loads(state.read_text())
    assert done["phase"] == "trained" and done["project"] == project
    with LabelStudio(Credentials(label_studio.url, label_studio.token)) as client:
        on_server = client.tasks(project["id"])
    assert len(on_server) == pushed["tasks"]  # not one task twice
    assert sorted(done["snapshot"]["task_ids"]) == sorted(task["id"] for task in on_server)
    registry = Registry(tmp_path / "registry")
    assert registry.manifest("policy:round-1").ref == done["refs"]["policy-dpo"]
    manifest = json.loads((Path(done["snapshot"]["dataset"]) / "manifest.json").read_text())
    assert manifest["labelstudio"]["project"]["id"] == project["id"]

    # The key is in no file the runs wrote and in no line they printed
    assert label_studio.token not in output
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert label_studio.token.encode() not in path.read_bytes(), path


def test_simulated_annotators_vote_the_same_through_the_server_as_through_files(
    label_studio, tmp_path: Path
) -> None:
    import random

    rng = random.Random(1)
    prompts = [[{"role": "user", "content": p}] for p in rng.choices(all_prompts(), k=16)]
    responses = [[sample_response(rng, parse_prompt(p[0]["content"]), rng.random(), 0.6) for _ in range(2)]
                 for p in prompts]  # fmt: skip
    tasks, _ = build_tasks(prompts, responses, {"round": 1, "run": "equivalence"}, seed=0)
    rounds = RoundsConfig(count=1, pairs_per_round=16, label_studio={"overlap": 3, "poll_seconds": 1})
    annotators = SynthConfig(skip_prob=0.0)
    os.environ["LABEL_STUDIO_API_KEY"] = label_studio.token
    try:
        server = ServerChannel(rounds, label_studio.url, annotators, seed=0)
        server.check()
        server.push("equivalence round 1", tasks)
        server_export, snapshot = server.pull(tmp_path / "server", "equivalence round 1", tasks, len(tasks))
    finally:
        del os.environ["LABEL_STUDIO_API_KEY"]
    file_export, _ = FileChannel(annotators, seed=0).pull(tmp_path / "files", "equivalence round 1", tasks, 0)
    assert len(snapshot["task_ids"]) == len(tasks)

    (tmp_path / "pairwise.xml").write_text(label_config(2))
    settings = ImportSettings(
        options=ImportOptions(label_config=str(tmp_path / "pairwise.xml")), test_fraction=0
    )
    rows = {}
    for name, export in (("server", server_export), ("files", file_export)):
        import_preferences([Path(export)], tmp_path / f"{name}-dataset", settings)
        rows[name] = sorted(
            (
                r["prompt"][-1]["content"],
                r["chosen"][-1]["content"],
                r["rejected"][-1]["content"],
                sorted(r["votes"]),
                r["margin"],
            )
            for r in load_preferences(tmp_path / f"{name}-dataset")["train"].to_list()
        )
    assert rows["server"] == rows["files"] and rows["files"]
