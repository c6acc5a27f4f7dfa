"""Loading a Hugging Face checkpoint under ZeRO-3 so that each rank reads only the bytes of its own partition.

transformers' ZeRO-3 loading (5.x) builds the model partitioned under `deepspeed.zero.Init`, then rank 0 reads
the whole checkpoint (its pages mapped into rank 0's memory) and, parameter by parameter, every rank gathers the
full tensor so that rank 0 can copy it in: the 0.5B shape's 544 MB embedding whole on every rank. Here the
model is built partitioned the same way, then each rank reads from the safetensors files exactly the bytes of
its flat partition of each tensor, a block at a time, into its `ds_tensor`. Hand-written because no library
does it: DeepSpeed loads its own checkpoints partitioned, not Hugging Face ones; transformers gathers; and
safetensors' slicing reads the whole tensor to return a part of it (measured: a 1,000-row slice of the 272 MB
embedding raised the peak by 263 MB), so the byte ranges are read here from the file's documented layout.

A checkpoint this loader cannot map onto the model without doubt (renamed keys, more missing than a new head)
is left to transformers' own loading, with a log line saying why.
"""

from __future__ import annotations

import json
import logging
import math
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"  # a sharded checkpoint's key -> file map
READ_BLOCK = 64 * 2**20  # bytes of a tensor read at a time: what loading holds beyond the partitions
MAX_HEADER = 100 * 2**20  # safetensors' own limit on a file's JSON header
DTYPES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16", "F8_E4M3": "float8_e4m3fn",
          "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
          "BOOL": "bool"}  # fmt: skip


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes lie in a safetensors file (row-major, little-endian)."""

    file: Path
    dtype: str  # a torch dtype name
    shape: tuple[int, ...]
    offset: int  # of its first byte in the file

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)


def partition_range(numel: int, partition_numel: int, rank: int) -> tuple[int, int]:
    """The flat elements [start, end) of a parameter that ZeRO-3 gives `rank`: consecutive equal parts of the
    flattened tensor, the last padded (DeepSpeed's `_partition_param`); end <= start when all padding."""
    start = partition_numel * rank
    return start, min(start + partition_numel, numel)


def read_header(file: Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file: an 8-byte little-endian header length, then a JSON header of
    {name: {dtype, shape, data_offsets: [begin, end)}} with offsets counted from the header's end."""
    with file.open("rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
        if not 0 < length <= MAX_HEADER:
            raise ModelError(f"{file}: not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(stream.read(length))
            return {name: StoredTensor(file, DTYPES[entry["dtype"]], tuple(entry["shape"]),
                                       8 + length + entry["data_offsets"][0])
                    for name, entry in header.items() if name != "__metadata__"}  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{file}: unreadable safetensors header ({type(exc).__name__}: {exc})") from None


def checkpoint_tensors(directory: Path) -> dict[str, StoredTensor]:
    """Every tensor of a safetensors checkpoint directory: its files are those its index names, else all."""
    index = directory / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted({directory / file for file in weight_map.values()})
    else:
        files = sorted(directory.glob("*.safetensors"))
    return {name: tensor for file in files for name, tensor in read_header(file).items()}


def copy_flat(tensor: StoredTensor, start: int, out: torch.Tensor, block_bytes: int = READ_BLOCK) -> int:
    """Copy elements [start, start + len(out)) of the flattened stored `tensor` into the 1-D `out`, converting
    its dtype; exactly those bytes are read, `block_bytes` at a time. Returns the bytes read."""
    import torch

    dtype = tensor.torch_dtype
    itemsize = dtype.itemsize
    step = max(1, block_bytes // itemsize)
    with tensor.file.open("rb", buffering=0) as stream:
        stream.seek(tensor.offset + start * itemsize)
        for done in range(0, out.numel(), step):
            block = torch.empty(min(step, out.numel() - done) * itemsize, dtype=torch.uint8)
            _read_exactly(stream, memoryview(block.numpy()), tensor.file)
            out[done : done + block.numel() // itemsize].copy_(block.view(dtype))
    return out.numel() * itemsize


def _read_exactly(stream: Any, view: memoryview, file: Path) -> None:
    """Fill `view` from `stream` (a read may return less than asked); the file ending first is an error."""
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled:])
        if not count:
            raise ModelError(f"{file}: ends inside a tensor's bytes (truncated?)")
        filled += count


def load_partitioned(
    auto_class: type, source: Path, dtype: torch.dtype, **kwargs: Any
) -> PreTrainedModel | None:
    """The model at `source` (a local safetensors directory) built partitioned under the live ZeRO-3 config,
    each rank reading only its slices; None where the checkpoint must go through transformers' loading.

    `kwargs` go to `AutoConfig.from_pretrained` (e.g. `num_labels`, `trust_remote_code`)."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(source, **kwargs)
    model = _build_partitioned(auto_class, config, dtype, kwargs.get("trust_remote_code", False))
    stored = checkpoint_tensors(source)
    plan = _key_plan(model, stored)
    if isinstance(plan, str):
        log.info("model %s: left to transformers' loading (%s)", source, plan)
        return None
    loaded = {id(param) for param in plan.values()}
    missing = [name for name, param in model.named_parameters() if id(param) not in loaded]
    if missing:
        log.info("model %s: newly initialized (not in the checkpoint): %s", source, ", ".join(missing))
        _initialize(model, missing)
    copied = [_copy_partition(param, stored[key], key) for key, param in plan.items()]
    read, whole = sum(r for r, _ in copied), sum(w for _, w in copied)
    for name, buffer in model.named_buffers():  # ZeRO-3 leaves buffers whole on every rank
        if name in stored:
            copy_flat(stored[name], 0, buffer.data.view(-1))
    # read back by `reads_from_log`
    log.info("model %s: this rank read %.1f of %.1f MiB of the checkpoint's weights (its partition)",
             source, read / 2**20, whole / 2**20)  # fmt: skip
    if model.can_generate() and (source / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(source)
    return model.eval()  # as from_pretrained returns it


def _build_partitioned(
    auto_class: type, config: Any, dtype: torch.dtype, trust_remote_code: bool
) -> PreTrainedModel:
    """The model partitioned under `zero.Init` as transformers' `from_config` builds it under ZeRO-3, less two
    costs of values the checkpoint overwrites: transformers' initialization, which gathers every module whole
    on every rank (over gloo, the embedding twice over), and zero.Init's broadcast of rank 0's fresh values,
    which writes each whole tensor on every other rank before it is partitioned. Only what the checkpoint
    lacks is initialized, on rank 0 and broadcast (`_initialize`)."""
    import deepspeed
    from transformers import initialization
    from transformers.integrations import deepspeed as hf_deepspeed
    from transformers.modeling_utils import set_zero3_state

    # transformers >= 5.2x keeps zero.Init from casting RoPE's torch.arange; older ones (5.19, which vLLM pins)
    # have no such guard and neither does their own from_pretrained
    keep_arange_dtype = getattr(hf_deepspeed, "prevent_arange_dtype_change", nullcontext)

    class InitWithoutBroadcast(deepspeed.zero.Init):
        def _zero_init_param(self, param: Any) -> None:  # DeepSpeed's, without `dist.broadcast(param)`
            self._convert_to_deepspeed_param(param)
            param.partition()

    # The modeling module is imported before zero.Init, as from_pretrained does: DeepSpeed's exit gives each
    # class created inside it back the __init__ its hook saw, undoing what a decorator set after the hook
    # (transformers 5.25's hub kernels: the next model built lacks `_kernel_funcs`)
    if type(config) in auto_class._model_mapping:
        auto_class._model_mapping[type(config)]  # the lookup imports it
    # set_zero3_state: transformers sees our zero.Init and adds neither its own nor its initialization
    with initialization.no_init_weights(), keep_arange_dtype(), \
            InitWithoutBroadcast(config_dict_or_path=hf_deepspeed.deepspeed_config()), set_zero3_state():  # fmt: skip
        model = auto_class.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()
    return model


def _initialize(model: PreTrainedModel, names: list[str]) -> None:
    """Initialize the parameters `names` as `from_pretrained` initializes weights a checkpoint lacks: each
    owning module gathered, rank 0 running the model's `_init_weights`, the result partitioned again."""
    import deepspeed
    import torch

    for owner in dict.fromkeys(name.rpartition(".")[0] for name in names):
        module = model.get_submodule(owner)
        with torch.no_grad(), deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)),
                                                                 modifier_rank=0):  # fmt: skip
            if deepspeed.comm.get_rank() == 0:
                model._init_weights(module)


def _key_plan(model: PreTrainedModel, stored: dict[str, StoredTensor]) -> dict[str, Any] | str:
    """{checkpoint key: the partitioned parameter it fills}, or why this loader should not load the model.

    A checkpoint saved from the bare model (no `model.` prefix) or from a model with a head (a causal LM's
    checkpoint loaded as a reward model) maps by adding or removing the base model's prefix. Only parameters
    outside the base model (a new head: the reward model's `score`) may be missing; they are initialized as
    `from_pretrained` initializes them (`_initialize`)."""
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum

    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""
    plan: dict[str, Any] = {}
    missing = []
    for param_name, param in model.named_parameters():
        partition = getattr(param, "ds_tensor", None)
        if (partition is None or getattr(param, "ds_secondary_tensor", None) is not None  # ZeRO++'s second copy
                or getattr(partition, "final_location", None) == OffloadDeviceEnum.nvme):  # fmt: skip
            return f"{param_name} is not a partition in memory (ZeRO++ or NVMe offload)"
        candidates = (
            (param_name, param_name.removeprefix(prefix), prefix + param_name) if prefix else (param_name,)
        )
        key = next((key for key in candidates if key in stored), None)
        if key is None:
            missing.append(param_name)
        else:
            plan[key] = param
    if not plan or any(not prefix or param_name.startswith(prefix) for param_name in missing):
        return f"{len(missing)} of its parameters are not in the checkpoint by name, e.g. {missing[:1]}"
    return plan


def _copy_partition(param: Any, tensor: StoredTensor, key: str) -> tuple[int, int]:
    """Read this rank's partition of `key` into `param.ds_tensor`: (bytes read, bytes of the whole tensor)."""
    import deepspeed.comm as dist

    if tensor.shape != tuple(param.ds_shape):
        raise ModelError(f"{tensor.file}: '{key}' has shape {list(tensor.shape)}, the model's is "
                         f"{list(param.ds_shape)}")  # fmt: skip
    rank = dist.get_rank(group=param.ds_process_group)
    start, end = partition_range(param.ds_numel, param.ds_tensor.ds_numel, rank)
    read = copy_flat(tensor, start, param.ds_tensor.data[: end - start]) if end > start else 0
    return read, tensor.numel * tensor.torch_dtype.itemsize


_READ_LINE = re.compile(r"\[rank (\d+)\] .*this rank read ([\d.]+) of ([\d.]+) MiB")


def reads_from_log(log: str) -> dict[str, list[float]]:
    """{rank: [share of each checkpoint it read]} from the `this rank read` lines of a multi-process stage's
    output (each line prefixed with its rank), for the tests that check partitioned loading."""
    reads: dict[str, list[float]] = {}
    for rank, read, whole in _READ_LINE.findall(log):
        reads.setdefault(rank, []).append(float(read) / float(whole))
    return reads
