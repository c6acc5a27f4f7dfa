"""The model registry on a real disk, with real processes: versions, aliases, lineage, integrity,
concurrent publishers, and publishers killed at random points."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.errors import IntegrityError, RegistryError
from rlhf.registry import (
    Manifest,
    Reference,
    Registry,
    config_hash,
    default_registry_path,
    is_reference,
)

BAD_NAMES = ["../x", "a/b", "", "x" * 100, ".hidden", "..", "Upper", "a b", "a:b"]


def model_dir(path: Path, seed: int = 0, size: int = 4096) -> Path:
    """A fake HF model directory: config, random weights, tokenizer."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
    (path / "model.safetensors").write_bytes(rng.randbytes(size))
    (path / "tokenizer.json").write_text(json.dumps({"version": "1.0", "seed": seed}))
    return path


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def one_line_error(excinfo: pytest.ExceptionInfo[RegistryError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def publish_n(reg: Registry, tmp_path: Path, name: str, n: int, **options: object) -> list[Manifest]:
    return [reg.publish(name, model_dir(tmp_path / f"{name}-src{i}", seed=i), **options) for i in range(n)]


# -------------------------------------------------------------------------------------------------
# Publishing


def test_publish_numbers_versions_moves_files_and_records_the_manifest(reg: Registry, tmp_path: Path) -> None:
    config = {"lr": 1e-5, "hf_token": "hf_SECRET", "tokenizer": {"pad_token": "<pad>", "apiKey": "k-SECRET"}}
    source = model_dir(tmp_path / "src1")
    first = reg.publish(
        "sft-policy", source, stage="sft", base_model="tiny-llama", config=config, metrics={"loss": 1}
    )
    second = reg.publish(
        "sft-policy", model_dir(tmp_path / "src2", seed=1), config=dict(reversed(config.items()))
    )

    assert (first.version, second.version) == ("v1", "v2")
    assert reg.resolve("registry:sft-policy:latest") == reg.root / "models" / "sft-policy" / "v2"
    assert reg.resolve("sft-policy:v1") == reg.root / "models" / "sft-policy" / "v1"
    assert not source.exists()  # mode move: the source is gone, the files live in the registry
    folder = reg.resolve("sft-policy:v1")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert (folder / "model.safetensors").stat().st_nlink == 1
    for entry in first.files:
        data = (folder / entry.path).read_bytes()
        assert (entry.size, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())

    assert first.config == {"lr": 1e-5, "tokenizer": {"pad_token": "<pad>"}}  # secrets dropped
    assert first.config_hash == second.config_hash == config_hash(first.config)
    assert first.metrics == {"loss": 1.0} and first.stage == "sft" and first.base_model == "tiny-llama"
    assert first.created_at.endswith("Z") and first.host
    assert first.code_version is None or isinstance(first.code_version, str)
    on_disk = (folder / "manifest.json").read_text()
    assert "SECRET" not in on_disk and "SECRET" not in (reg.root / "index.json").read_text()
    assert Manifest.from_json(on_disk) == reg.manifest("sft-policy:v1") == first
    assert reg.list()["sft-policy"].aliases == {"latest": "v2"}
    assert [m.version for m in reg.list()["sft-policy"].versions] == ["v1", "v2"]


def test_code_version_is_the_git_commit_and_marks_a_dirty_tree(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text("print(1)\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    monkeypatch.chdir(repo)

    assert reg.publish("m", model_dir(tmp_path / "a")).code_version == head
    (repo / "train.py").write_text("print(2)\n")
    assert reg.publish("m", model_dir(tmp_path / "b")).code_version == head + "+dirty"


def test_add_copies_so_overwriting_the_source_leaves_the_version_intact(
    reg: Registry, tmp_path: Path
) -> None:
    base = model_dir(tmp_path / "base")
    original = (base / "model.safetensors").read_bytes()
    added = reg.add("tiny-base", base, stage="import")
    copied = reg.publish("copied", model_dir(tmp_path / "c"), mode="copy")
    assert added.version == copied.version == "v1" and added.stage == "import"
    stored = reg.resolve("tiny-base") / "model.safetensors"
    assert (base / "model.safetensors").stat().st_nlink == 1 and stored.stat().st_nlink == 1
    assert (reg.resolve("copied") / "model.safetensors").stat().st_nlink == 1

    # `cp other.safetensors src/model.safetensors` writes into the source's inode, in place
    other = model_dir(tmp_path / "other", seed=9)
    shutil.copyfile(other / "model.safetensors", base / "model.safetensors")
    assert (base / "model.safetensors").read_bytes() != original
    assert reg.verify("tiny-base:v1") == [] and stored.read_bytes() == original


def test_move_hard_links_only_files_whose_only_name_it_takes(reg: Registry, tmp_path: Path) -> None:
    source = model_dir(tmp_path / "out")
    outside = tmp_path / "kept-elsewhere.safetensors"
    os.link(source / "model.safetensors", outside)  # a second name the registry would not own
    inode = (source / "config.json").stat().st_ino
    reg.publish("m", source)
    folder = reg.resolve("m:v1")
    assert (folder / "config.json").stat().st_ino == inode  # taken over by hard link: no data copied
    assert not os.path.samestat((folder / "model.safetensors").stat(), outside.stat())  # copied
    outside.write_bytes(b"changed through the other name")
    assert reg.verify("m:v1") == []


def test_add_rejects_what_is_not_a_hf_model(reg: Registry, tmp_path: Path) -> None:
    no_config = model_dir(tmp_path / "nc")
    (no_config / "config.json").unlink()
    no_weights = model_dir(tmp_path / "nw")
    (no_weights / "model.safetensors").rename(no_weights / "pytorch_model.bin")

    with pytest.raises(RegistryError, match=r"no config.json or adapter_config.json"):
        reg.add("m", no_config)
    with pytest.raises(RegistryError, match=r"no \*\.safetensors"):
        reg.add("m", no_weights)
    with pytest.raises(RegistryError, match="not a directory"):
        reg.add("m", tmp_path / "missing")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    assert reg.add("adapter", adapter, lora_base="tiny-llama").lora_base == "tiny-llama"


def test_publish_refuses_bad_input_and_leaves_nothing_behind(reg: Registry, tmp_path: Path) -> None:
    source = model_dir(tmp_path / "src")
    empty = tmp_path / "empty"
    empty.mkdir()
    reserved = model_dir(tmp_path / "reserved")
    (reserved / "manifest.json").write_text("{}")
    reg.publish("m", model_dir(tmp_path / "first"))

    cases = [
        (dict(name="m", source_dir=tmp_path / "missing"), "not a directory"),
        (dict(name="m", source_dir=empty), "has no files"),
        (dict(name="m", source_dir=reserved), "reserves"),
        (dict(name="m", source_dir=reg.resolve("m")), "overlaps the registry"),
        (dict(name="m", source_dir=tmp_path), "overlaps the registry"),
        (dict(name="m", source_dir=source, mode="rename"), "bad mode"),
        (dict(name="../m", source_dir=source), "bad model name"),
        (dict(name="m", source_dir=source, parents=["ghost"]), "no model 'ghost'"),
        (dict(name="m", source_dir=source, parents=["m:v7"]), "no version or alias 'v7'"),
        (dict(name="m", source_dir=source, datasets=[{"name": "d"}]), "bad dataset"),
        (dict(name="m", source_dir=source, metrics={"loss": "low"}), "metrics must be numbers"),
    ]
    for kwargs, message in cases:
        with pytest.raises(RegistryError, match=message) as excinfo:
            reg.publish(**kwargs)  # type: ignore[arg-type]
        one_line_error(excinfo)
    assert sorted(p.name for p in source.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert list((reg.root / ".staging").iterdir()) == []
    assert [m.version for m in reg.list()["m"].versions] == ["v1"]
    assert reg.gc() == []


# -------------------------------------------------------------------------------------------------
# References


def test_reference_forms() -> None:
    assert Reference.parse("registry:sft-policy:v3") == Reference("sft-policy", "v3")
    assert Reference.parse("registry:sft-policy") == Reference("sft-policy", "latest")
    assert Reference.parse("sft-policy:best") == Reference("sft-policy", "best")
    assert Reference.parse("sft-policy") == Reference("sft-policy", "latest")
    assert str(Reference.parse("registry:reward-model:v12")) == "reward-model:v12"
    assert Reference("policy", "v2").is_version and not Reference("policy", "best").is_version
    assert is_reference("registry:policy") and not is_reference("Qwen/Qwen2.5-0.5B")


@pytest.mark.parametrize(
    "bad", [*(n for n in BAD_NAMES if n != "a:b"), "registry:", "a:b:c", "a:", "m:v01", "m:v0", "m:../x"]
)
def test_reference_rejects_names_that_could_escape(bad: str) -> None:
    with pytest.raises(RegistryError, match="registry: bad") as excinfo:
        Reference.parse(bad)
    one_line_error(excinfo)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_and_aliases_are_validated_everywhere(reg: Registry, tmp_path: Path, bad: str) -> None:
    publish_n(reg, tmp_path, "m", 1)
    with pytest.raises(RegistryError, match="bad model name"):
        reg.publish(bad, model_dir(tmp_path / "src"))
    with pytest.raises(RegistryError, match="bad"):
        reg.set_alias("m:v1", bad)
    with pytest.raises(RegistryError):
        Reference(bad, "latest")
    assert sorted(p.name for p in reg.root.iterdir()) == [
        ".hashes.json",
        ".lock",
        ".staging",
        "index.json",
        "models",
    ]
    assert sorted(p.name for p in (reg.root / "models").iterdir()) == ["m"]


def test_resolve_by_version_alias_and_errors_that_list_what_exists(reg: Registry, tmp_path: Path) -> None:
    publish_n(reg, tmp_path, "sft-policy", 2)
    publish_n(reg, tmp_path, "reward-model", 1)
    reg.set_alias("sft-policy:v1", "candidate")

    assert reg.resolve("registry:sft-policy:v1").name == "v1"
    assert reg.resolve("sft-policy").name == "v2"
    assert reg.resolve(Reference("sft-policy", "candidate")).name == "v1"
    assert reg.manifest("registry:sft-policy:candidate").version == "v1"

    with pytest.raises(RegistryError) as excinfo:
        reg.resolve("registry:sft-polcy:latest")
    message = one_line_error(excinfo)
    assert "no model 'sft-polcy'" in message and message.endswith("models: reward-model, sft-policy")
    with pytest.raises(RegistryError) as excinfo:
        reg.resolve("sft-policy:v9")
    assert one_line_error(excinfo).endswith(
        "sft-policy has no version or alias 'v9'; versions: v1, v2; aliases: candidate, latest"
    )
    with pytest.raises(RegistryError, match="no version or alias 'best'"):
        reg.resolve("sft-policy:best")
    with pytest.raises(RegistryError, match="models: \\(none\\)"):
        Registry(tmp_path / "empty").resolve("anything")


def test_aliases_move_and_reserved_ones_are_refused(reg: Registry, tmp_path: Path) -> None:
    publish_n(reg, tmp_path, "m", 2)
    reg.set_alias("m:v1", "prod")
    reg.set_alias("m:v2", "prod")
    assert reg.resolve("m:prod").name == "v2"
    with pytest.raises(RegistryError, match="'latest' always points at the newest"):
        reg.set_alias("m:v1", "latest")
    with pytest.raises(RegistryError, match="looks like a version"):
        reg.set_alias("m:v1", "v7")
    assert reg.list()["m"].aliases == {"latest": "v2", "prod": "v2"}


def test_default_registry_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLHF_REGISTRY", raising=False)
    assert default_registry_path() == Path("registry")
    monkeypatch.setenv("RLHF_REGISTRY", str(tmp_path / "env"))
    assert default_registry_path() == tmp_path / "env"
    assert default_registry_path(tmp_path / "explicit") == tmp_path / "explicit"


def test_a_corrupt_index_is_one_line_naming_the_file(reg: Registry, tmp_path: Path) -> None:
    publish_n(reg, tmp_path, "m", 1)
    (reg.root / "index.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"index.json") as excinfo:
        reg.resolve("m")
    one_line_error(excinfo)


# -------------------------------------------------------------------------------------------------
# Integrity


def test_corruption_is_caught_naming_the_file(reg: Registry, tmp_path: Path) -> None:
    publish_n(reg, tmp_path, "m", 3)
    weights = reg.resolve("m:v1") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match=r"m:v1: model.safetensors: sha256 mismatch") as excinfo:
        reg.resolve("m:v1")
    one_line_error(excinfo)
    assert reg.verify("m:v1") == reg.verify() == ["m:v1: model.safetensors: sha256 mismatch"]

    tokenizer = reg.resolve("m:v2") / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:5])
    with pytest.raises(RegistryError, match=r"m:v2: tokenizer.json: size 5, expected"):
        reg.resolve("m:v2")
    (reg.resolve("m:v3") / "config.json").unlink()
    with pytest.raises(RegistryError, match=r"m:v3: config.json: missing"):
        reg.resolve("m:latest")
    (reg.root / "models" / "m" / "v3" / "extra.bin").write_bytes(b"pickle")
    assert reg.verify("m:v3") == ["m:v3: config.json: missing", "m:v3: extra.bin: not in the manifest"]
    assert len(reg.verify()) == 4


# -------------------------------------------------------------------------------------------------
# Lineage, promotion, removal


def test_lineage_across_three_stages(reg: Registry, tmp_path: Path) -> None:
    reg.add("tiny-base", model_dir(tmp_path / "base"))
    sft_data = {"name": "sft-data", "fingerprint": "f1", "path": "data/sft.jsonl"}
    prefs = {"name": "prefs", "fingerprint": "f2", "path": "data/prefs.jsonl"}
    sft = reg.publish(
        "sft-policy",
        model_dir(tmp_path / "sft"),
        stage="sft",
        base_model="tiny-llama",
        parents=["registry:tiny-base:latest"],
        datasets=[sft_data],
    )
    reward = reg.publish(
        "reward-model", model_dir(tmp_path / "rm"), stage="reward", parents=["sft-policy"], datasets=[prefs]
    )
    publish_n(reg, tmp_path, "sft-policy", 1)  # a newer sft must not change the resolved lineage
    policy = reg.publish(
        "policy",
        model_dir(tmp_path / "policy"),
        stage="dpo",
        parents=["registry:sft-policy:v1", "registry:reward-model:latest"],
        datasets=[prefs],
        lora_base="registry:sft-policy:v1",
    )

    assert sft.parents == ["tiny-base:v1"] and reward.parents == ["sft-policy:v1"]
    assert policy.parents == ["sft-policy:v1", "reward-model:v1"]
    assert policy.lora_base == "registry:sft-policy:v1"
    tree = reg.lineage("policy")
    assert tree["ref"] == "policy:v1" and tree["stage"] == "dpo"
    assert [p["ref"] for p in tree["parents"]] == ["sft-policy:v1", "reward-model:v1"]

    def walk(node: dict) -> list[dict]:
        return [node, *(n for parent in node["parents"] for n in walk(parent))]

    nodes = walk(tree)
    assert {n["ref"] for n in nodes} == {"policy:v1", "sft-policy:v1", "reward-model:v1", "tiny-base:v1"}
    assert {d["name"] for n in nodes for d in n["datasets"]} == {"sft-data", "prefs"}
    assert all(n["parents"] == [] for n in nodes if n["ref"] == "tiny-base:v1")
    assert next(n for n in nodes if n["ref"] == "sft-policy:v1")["base_model"] == "tiny-llama"


def test_promote_by_metric(reg: Registry, tmp_path: Path) -> None:
    for i, (reward, loss) in enumerate([(0.2, 0.9), (0.7, 0.4), (0.5, 0.6)]):
        reg.publish("policy", model_dir(tmp_path / f"p{i}"), metrics={"reward": reward, "loss": loss})
    reg.publish("policy", model_dir(tmp_path / "nometric"))  # v4: no metrics, skipped

    assert reg.promote("policy", "reward") == "v2"
    assert reg.resolve("policy:best").name == "v2"
    assert reg.promote("policy", "loss", higher_is_better=False, alias="lowest-loss") == "v2"
    with pytest.raises(RegistryError) as excinfo:
        reg.promote("policy", "reward", version="v3")
    message = one_line_error(excinfo)
    assert "reward=0.5" in message and "reward=0.7" in message and "policy:v2" in message
    assert reg.resolve("policy:best").name == "v2"
    assert reg.promote("policy", "reward", version="v3", force=True) == "v3"
    assert reg.promote("policy", "reward", version="v2") == "v2"  # better than the holder: allowed
    with pytest.raises(RegistryError, match="has no metric 'reward'"):
        reg.promote("policy", "reward", version="v4")
    with pytest.raises(RegistryError, match="no version of policy has metric 'kl'"):
        reg.promote("policy", "kl")


def test_remove_guards_parents_cleans_aliases_and_moves_latest(reg: Registry, tmp_path: Path) -> None:
    publish_n(reg, tmp_path, "sft-policy", 3)
    reg.publish("adapter", model_dir(tmp_path / "a"), lora_base="registry:sft-policy:v2")
    reg.publish("policy", model_dir(tmp_path / "p"), parents=["sft-policy:v3"])
    reg.set_alias("sft-policy:v3", "best")

    with pytest.raises(RegistryError, match="sft-policy:v3 is a parent of policy:v1") as excinfo:
        reg.remove("sft-policy:v3")
    one_line_error(excinfo)
    with pytest.raises(RegistryError, match="sft-policy:v2 is a parent of adapter:v1"):
        reg.remove("sft-policy:v2")
    folder = reg.resolve("sft-policy:v3")
    reg.remove("sft-policy:best", force=True)

    assert not folder.exists()
    assert reg.list()["sft-policy"].aliases == {"latest": "v2"}
    with pytest.raises(RegistryError, match="versions: v1, v2; aliases: latest"):
        reg.resolve("sft-policy:v3")
    assert reg.lineage("policy")["parents"] == [{"ref": "sft-policy:v3", "missing": True, "parents": []}]
    assert publish_n(reg, tmp_path / "again", "sft-policy", 1)[0].version == "v4"  # numbers never reused
    reg.remove("adapter:v1")
    assert "adapter" not in reg.list()
    assert reg.verify() == []


# -------------------------------------------------------------------------------------------------
# Crashes, garbage, concurrency


def test_leftovers_of_a_crash_are_invisible_skipped_and_collected(reg: Registry, tmp_path: Path) -> None:
    publish_n(reg, tmp_path, "m", 1)
    committed = reg.resolve("m:v1")
    orphan = committed.parent / "v2"  # renamed into place, index never updated
    shutil.copytree(committed, orphan)
    stale = reg.root / ".staging" / "dead"  # its publisher died: nobody holds its lock
    shutil.copytree(committed, stale)
    live = reg.root / ".staging" / "live"
    live.mkdir()
    temp_index = reg.root / ".index-dead.tmp"
    temp_index.write_text("{")
    temp_hashes = reg.root / ".hashes-dead.tmp"  # a hash cache being written
    temp_hashes.write_text("{")

    with pytest.raises(RegistryError, match="no version or alias 'v2'"):
        reg.resolve("m:v2")
    assert reg.publish("m", model_dir(tmp_path / "next")).version == "v3"
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert sorted(reg.gc()) == sorted([orphan, stale, temp_index, temp_hashes])
        assert live.exists()
    finally:
        os.close(fd)
    assert reg.gc() == [live]
    assert sorted(p.name for p in committed.parent.iterdir()) == ["v1", "v3"]
    assert reg.verify() == []


CHILD = """
import sys, time
from pathlib import Path
from rlhf.registry import Registry
root, name, work, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
while not (work.parent / "go").exists():
    time.sleep(0.001)
reg = Registry(root)
for i in range(count):
    src = work / str(i)
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(f"{work.name}-{i}".encode() * 2000)
    reg.publish(name, src, metrics={"i": i}, mode="copy")
"""


def test_concurrent_publishers_get_distinct_contiguous_versions(reg: Registry, tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(reg.root), "shared", str(tmp_path / f"w{n}"), "3"], cwd=tmp_path
        )
        for n in range(6)
    ]
    try:
        time.sleep(0.3)  # let them import, then release them together
        (tmp_path / "go").touch()
        collected = []
        while any(proc.poll() is None for proc in procs):
            collected += reg.gc()  # gc meanwhile must not take a staging dir from a live publisher
        assert [proc.wait(timeout=60) for proc in procs] == [0] * 6
        assert collected == []
    finally:
        for proc in procs:
            proc.kill()

    index = json.loads((reg.root / "index.json").read_text())
    model = index["models"]["shared"]
    expected = [f"v{n}" for n in range(1, 19)]
    assert sorted(model["versions"], key=lambda v: int(v[1:])) == expected
    assert model["aliases"] == {"latest": "v18"}
    assert sorted((reg.root / "models" / "shared").iterdir()) == sorted(
        reg.root / "models" / "shared" / v for v in expected
    )
    contents = {(reg.resolve(f"shared:{v}") / "model.safetensors").read_bytes()[:8] for v in expected}
    assert len(contents) == 18  # each version holds its own publisher's files
    assert reg.verify() == []
    assert reg.gc() == []


KILLED_CHILD = """
import shutil, sys
from pathlib import Path
from rlhf.registry import Registry
reg, source, work = Registry(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
for i in range(10_000):
    if i % 2:
        reg.publish("victim", source, mode="copy")
    else:
        moved = work / str(i)
        moved.mkdir(parents=True)
        for f in source.iterdir():
            shutil.copyfile(f, moved / f.name)  # each file its content's only name: moved in by hard link
        reg.publish("victim", moved, mode="move")
"""


def check_consistent(reg: Registry) -> list[str]:
    """Every version the index lists is whole; directories it does not list are invisible."""
    entry = reg.list().get("victim")
    versions = [m.version for m in entry.versions] if entry else []
    assert reg.verify() == []
    if entry:
        assert entry.aliases["latest"] == versions[-1]
    for folder in (reg.root / "models" / "victim").glob("v*"):
        if folder.name not in versions:
            with pytest.raises(RegistryError, match="no version or alias"):
                reg.resolve(f"victim:{folder.name}")
    return versions


def committed(reg: Registry) -> int:
    entry = reg.list().get("victim")
    return len(entry.versions) if entry else 0


def kill_after_a_commit(reg: Registry, child: subprocess.Popen[bytes], delay: float) -> None:
    """SIGKILL the child `delay` seconds after its first commit: by then it is inside its publish loop."""
    count, deadline = committed(reg), time.monotonic() + 30
    try:
        while committed(reg) == count:
            assert child.poll() is None and time.monotonic() < deadline, (
                "the publishing child never committed"
            )
            time.sleep(0.002)
        time.sleep(delay)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def test_publishers_killed_at_random_points_never_leave_a_half_version(reg: Registry, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text("{}")
    for n in range(8):  # several files, so that a kill can land between any two
        (source / f"model-{n:02d}.safetensors").write_bytes(random.Random(n).randbytes(32 * 1024))
    rng = random.Random(1234)
    kills_with_leftovers = 0
    for attempt in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_CHILD, str(reg.root), str(source), str(tmp_path / f"w{attempt}")],
            cwd=tmp_path,  # no git repo: its time goes to the protocol, not to `git status`
        )
        kill_after_a_commit(reg, child, rng.uniform(0, 0.05))

        before = check_consistent(reg)
        retry = reg.publish("victim", source, mode="copy")  # a retry after the crash succeeds
        assert int(retry.version[1:]) > int(before[-1][1:])
        assert check_consistent(reg) == [*before, retry.version]
        removed = reg.gc()
        kills_with_leftovers += bool(removed)
        assert {p.name for p in (reg.root / "models" / "victim").iterdir()} == {*before, retry.version}
        assert list((reg.root / ".staging").iterdir()) == []
        assert list(reg.root.glob(".index-*.tmp")) == []
    assert kills_with_leftovers > 0  # the kills did land inside publishes
    assert reg.verify() == []
