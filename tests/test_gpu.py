"""GPU paths: run only where CUDA is present (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.launch import run_standalone
from rlhf.precision import precision_flags
from rlhf.workspace import standalone_context
from stages import sft
from tests.conftest import pipeline_config
from tests.test_sft import CONFIG

pytestmark = pytest.mark.gpu


def test_auto_precision_is_bf16_on_a_gpu_that_has_it() -> None:
    import torch

    assert precision_flags("auto") == {"bf16": torch.cuda.is_bf16_supported(), "fp16": False}


def test_sft_trains_on_the_gpu_in_bf16(tmp_path: Path) -> None:
    config = pipeline_config(tmp_path, CONFIG)
    stage_cfg, ctx = standalone_context(load_config(config), "sft", tmp_path / "probe")
    trainer = sft.build_trainer(stage_cfg, ctx)
    assert trainer.args.bf16 and next(trainer.model.parameters()).device.type == "cuda"

    result = run_standalone("sft", sft.run, str(config), [], str(tmp_path / "run"))
    assert result.metrics["train_loss_last"] < 0.8 * result.metrics["train_loss_first"]
    assert result.metrics["gold_reward"] > 0.25
