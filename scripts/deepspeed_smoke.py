"""DeepSpeed on one CUDA device: a few SFT steps at ZeRO-2 and ZeRO-3, then sampling under ZeRO-3.

A quick check of the GPU path that the CPU machines cannot exercise (`bash scripts/gpu_check.sh` runs it).
It runs as a single-process DeepSpeed job (world size 1), so it needs no launcher.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.update(
    {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533"}
)


def main() -> None:
    import torch
    from trl import SFTConfig, SFTTrainer

    from rlhf.builtin_models import build_builtin_model
    from rlhf.data.files import SFT_FORMS, load_rows
    from rlhf.data.synthetic import SynthConfig, write_synthetic_task
    from rlhf.eval import generate, load_prompts, summarize
    from rlhf.settings import GenerationSpec

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_synthetic_task(
            Path(tmp) / "task", SynthConfig(num_sft_train=4000, num_preference_tasks=10)
        )
        data, _ = load_rows(files["sft_train"], SFT_FORMS)
        for stage in (2, 3):
            model, tokenizer = build_builtin_model("small-llama", seed=0)
            ds = {"zero_optimization": {"stage": stage}, "bf16": {"enabled": True},
                  "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                  "train_batch_size": "auto", "gradient_clipping": "auto"}  # fmt: skip
            args = SFTConfig(output_dir=f"{tmp}/out{stage}", max_steps=60, per_device_train_batch_size=64,
                             learning_rate=1e-3, bf16=True, logging_steps=10, save_strategy="no",
                             report_to="none", gradient_checkpointing=False, deepspeed=ds, disable_tqdm=True,
                             max_length=64)  # fmt: skip
            trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
            start = time.perf_counter()
            out = trainer.train()
            seconds = time.perf_counter() - start
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            entry = {"zero": stage, "loss_first": losses[0], "loss_last": losses[-1], "train_s": seconds,
                     "train_loss": out.training_loss, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip
            if stage == 3:  # sampling with sharded parameters: gather once for the whole batch
                import deepspeed

                engine = trainer.model_wrapped
                with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
                    start = time.perf_counter()
                    samples = generate(engine.module, tokenizer, load_prompts(files["eval_prompts"]),
                                       GenerationSpec(max_new_tokens=12), seed=0)  # fmt: skip
                    entry["generate_s"] = time.perf_counter() - start
                entry.update(summarize(samples, "synthetic"))
            results[f"zero{stage}"] = entry
            print(json.dumps(entry), flush=True)
            del trainer, model
            torch.cuda.empty_cache()
    assert all(r["loss_last"] < r["loss_first"] for r in results.values()), results
    print("deepspeed smoke: ok")


if __name__ == "__main__":
    main()
