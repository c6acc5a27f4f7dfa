#!/usr/bin/env bash
# The GPU checks, as one short script for a lent CUDA machine (no network there: the wheels this project
# needs beyond that machine's image travel in .whl/, see the device notes). Results go to $OUT (or ./gpu-check).
set -uo pipefail
out="${OUT:-gpu-check}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, trl, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'deepspeed', deepspeed.__version__, 'bf16', torch.cuda.is_bf16_supported())" | tee -a "$out/gpu.txt"

echo "== gpu tests"; timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -5 | tee "$out/gpu_tests.txt"
echo "== quickstart on the gpu"; timeout 240 python3 -m rlhf.cli run configs/quickstart.yaml tracking=none runs_dir=/tmp/runs 2>&1 | tail -12 | tee "$out/quickstart.txt"
echo "== deepspeed"; timeout 300 python3 scripts/deepspeed_smoke.py 2>&1 | grep -E '^\{|smoke|Error|error' | tail -8 | tee "$out/deepspeed.txt"
echo "== sft throughput"; timeout 300 python3 bench/sft_throughput.py --model small-llama --repeats 3 --steps 60 --warmup 10 --threads 4 --json "$out/sft_gpu.json" 2>&1 | tail -9 | tee "$out/sft_gpu.txt"
# The real-size path: the Qwen2.5-0.5B shape through SFT -> reward model -> DPO -> PPO in bf16 at ZeRO-3 on
# this GPU, a few steps each; seconds and peak GPU memory per stage against `rlhf plan`'s prediction.
echo "== 0.5B shape, bf16, ZeRO-3"; timeout 420 python3 bench/shape_stages.py distributed.zero_stage=3 \
  stages.sft.precision=bf16 stages.reward.precision=bf16 stages.policy.dpo.precision=bf16 \
  stages.policy.ppo.precision=bf16 2>&1 | tail -9 | tee "$out/shape_stages.txt"
echo "== plan accuracy"; timeout 200 python3 bench/plan_accuracy.py --processes 1 --zero 0 3 --models qwen2.5-0.5b-shape 2>&1 | tail -6 | tee "$out/plan_accuracy.txt"
echo "== plan"; timeout 60 python3 -m rlhf.cli plan configs/shapes/qwen2.5-0.5b-cpu.yaml --gpus-per-node 1 2>&1 | tail -20 | tee "$out/plan.txt"
# vLLM rollouts at the 0.5B shape (256 responses x 128 tokens, vLLM against generate(), weight-sync time) and the
# engine's tests (log-probs against the trainer's after an update), where this machine's python has vLLM
if python3 -c "import vllm" 2>/dev/null; then
  echo "== vllm rollouts, 0.5B shape"; timeout 420 python3 bench/rollout_engine.py --models qwen2.5-0.5b-shape \
    --responses 256 --tokens 128 --repeats 3 --json "$out/rollout_engine.json" 2>&1 | tail -8 | tee "$out/rollout_engine.txt"
  echo "== vllm tests"; timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_vllm_rollout.py 2>&1 | tail -3 | tee "$out/vllm_tests.txt"
else
  echo "== vllm rollouts: vllm is not installed on this machine (pip install 'rlhf[vllm]'), skipped" | tee "$out/rollout_engine.txt"
fi
