"""ZeRO-3 loading that reads only a rank's partition: the flat ranges DeepSpeed gives each rank, read as bytes
from real safetensors files. (That a whole model loads this way the same as transformers loads it is checked by
the 2-process ZeRO-2 against ZeRO-3 tests in test_distributed.py and test_ppo.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rlhf.errors import ModelError
from rlhf.partitioned_loading import (
    READ_BLOCK,
    checkpoint_tensors,
    copy_flat,
    partition_range,
    read_header,
    reads_from_log,
)

TENSORS = {
    "embedding": torch.randn(37, 6),  # 222 elements: padded at 4 ranks
    "norm": torch.randn(7),
    "conv": torch.randn(3, 2, 5),
    "scalar": torch.tensor(2.5),
}


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
@pytest.mark.parametrize("block_bytes", [1, 6, READ_BLOCK])
def test_every_rank_reads_exactly_its_partition(tmp_path: Path, ranks: int, block_bytes: int) -> None:
    """Over the ranks the partitions tile each flattened tensor, in whatever blocks they are read, converted
    from the stored bf16 to the partition's fp32; each rank reads its share's bytes and no more."""
    file = tmp_path / "model.safetensors"
    tensors = {name: tensor.to(torch.bfloat16) for name, tensor in TENSORS.items()}
    save_file(tensors, file, metadata={"format": "pt"})
    stored = read_header(file)
    for name, tensor in tensors.items():
        assert stored[name].shape == tuple(tensor.shape) and stored[name].dtype == "bfloat16"
        per_rank = -(-tensor.numel() // ranks)  # DeepSpeed pads the last partition
        parts = []
        for rank in range(ranks):
            start, end = partition_range(tensor.numel(), per_rank, rank)
            if end <= start:
                continue
            partition = torch.full((end - start,), float("nan"))  # fp32, as a trained model's partition
            assert copy_flat(stored[name], start, partition, block_bytes) == (end - start) * 2
            parts.append(partition)
        assert torch.equal(torch.cat(parts), tensor.flatten().float()), name


def test_partition_ranges_pad_the_last_rank() -> None:
    assert partition_range(5, 3, 0) == (0, 3)
    assert partition_range(5, 3, 1) == (3, 5)  # the last rank's partition is padded
    assert partition_range(2, 1, 3) == (3, 2)  # all padding: nothing to read


def test_a_sharded_checkpoint_reads_the_files_its_index_names(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(3, 2)}, tmp_path / "model-00002-of-00002.safetensors")
    found = checkpoint_tensors(tmp_path)
    assert {name: (t.file.name, t.shape) for name, t in found.items()} == {
        "a": ("model-00001-of-00002.safetensors", (2,)),
        "b": ("model-00002-of-00002.safetensors", (3, 2)),
    }
    (tmp_path / "model.safetensors.index.json").write_text(
        '{"weight_map": {"b": "model-00002-of-00002.safetensors"}}', encoding="utf-8"
    )
    assert set(checkpoint_tensors(tmp_path)) == {"b"}


def test_a_broken_checkpoint_file_is_one_line_naming_it(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.randn(64, 64)}, good)
    (tmp_path / "noise.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match=r"noise\.safetensors: not a safetensors file"):
        read_header(tmp_path / "noise.safetensors")
    (tmp_path / "json.safetensors").write_bytes((9).to_bytes(8, "little") + b"{not json")
    with pytest.raises(ModelError, match=r"json\.safetensors: unreadable safetensors header"):
        read_header(tmp_path / "json.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"cut\.safetensors: ends inside a tensor"):
        copy_flat(read_header(cut)["w"], 0, torch.empty(64 * 64))


WORKER = """
import os, sys
import deepspeed, torch
from transformers.integrations import HfDeepSpeedConfig
from rlhf.distributed import configure_logging, rank_info
from rlhf.models import load_causal_lm, load_reward_model
from rlhf.settings import ModelSpec
deepspeed.init_distributed("gloo")
configure_logging(rank_info())
alive = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
for load, name, out in ((load_causal_lm, sys.argv[1], sys.argv[2]), (load_reward_model, sys.argv[3], sys.argv[4])):
    model, _ = load(ModelSpec(name=name))
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        if deepspeed.comm.get_rank() == 0:
            torch.save({key: param.detach().clone() for key, param in model.named_parameters()}, out)
torch.distributed.barrier()  # rank 0's files are written
torch.distributed.destroy_process_group()
sys.stdout.flush(), sys.stderr.flush()
os._exit(0)  # skip interpreter teardown: it aborted 2 exits in ~25 ("terminate called without an active exception")
"""


@pytest.mark.distributed
def test_models_load_partitioned_equal_to_a_whole_load(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """On 2 ZeRO-3 processes: a causal LM with tied embeddings (GPT-2: another prefix and layout) and a reward
    model from a causal LM's checkpoint load, once gathered, the same weights as a plain load; the reward
    model's new head is initialized on rank 0 as transformers initializes it, not left as empty memory."""
    import subprocess
    import sys

    from rlhf.builtin_models import materialize
    from rlhf.distributed import free_port
    from rlhf.models import load_causal_lm, load_reward_model
    from rlhf.settings import ModelSpec
    from tests.conftest import REPO

    gpt2 = materialize(ModelSpec(name="tiny-gpt2"), tmp_path / "tiny-gpt2", seed=0)
    (tmp_path / "worker.py").write_text(WORKER, encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(tmp_path / "worker.py"), str(gpt2), str(tmp_path / "gpt2.pt"),
               str(tiny_llama_dir), str(tmp_path / "reward.pt")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reads = reads_from_log(done.stderr + done.stdout)
    assert {rank: len(shares) for rank, shares in reads.items()} == {"0": 2, "1": 2}, reads
    assert "newly initialized (not in the checkpoint): score.weight" in done.stderr + done.stdout

    causal = torch.load(tmp_path / "gpt2.pt")
    for name, param in load_causal_lm(ModelSpec(name=str(gpt2)))[0].named_parameters():
        torch.testing.assert_close(causal[name], param, rtol=0, atol=0, msg=name)
    reward = torch.load(tmp_path / "reward.pt")
    plain, _ = load_reward_model(ModelSpec(name=str(tiny_llama_dir)))
    for name, param in plain.named_parameters():
        if name != "score.weight":
            torch.testing.assert_close(reward[name], param, rtol=0, atol=0, msg=name)
    head = reward["score.weight"]
    assert head.isfinite().all() and 0.5 < float(head.std()) / plain.config.initializer_range < 1.5
