#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one go: the CUDA tests, the default MNIST study trained and swept on the GPU,
# then the three benchmark scripts on its checkpoint, then the DiT benchmark.
#   bash benchmarks/run_gpu.sh <folder with the MNIST t10k IDX files> [out dir] [domain-metric cache dir]
# Each step has its own time limit and log (<out>/<step>.log); a failed step does not stop the next ones.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: run_gpu.sh <mnist dir> [out dir] [cache dir]}
OUT=${2:-gpu_bench}
export CFGLAB_CACHE=${3:-.cache/cfglab} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
CKPT=$OUT/mnist_study/checkpoints/last.ckpt

step() {  # step <name> <seconds> <command...>
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/steps.txt"
step tests 240 python -m pytest -q tests/test_cuda.py
step train 300 python train.py experiment=mnist_study trainer=gpu data.data_dir="$DATA" metrics.device=cuda \
  hydra.run.dir="$OUT/mnist_study" trainer.enable_progress_bar=false
step sweep_cost 300 python benchmarks/sweep_cost.py --ckpt "$CKPT" --device cuda --batch 1000 \
  --quality-samples 1000 --seed 3 --cache "$CFGLAB_CACHE"
step sampling 240 python benchmarks/sampling.py --ckpt "$CKPT" --device cuda --samples 500
step throughput_b1024 120 python benchmarks/train_throughput.py --device cuda --steps 30 --warmup 5 --batch 1024
step throughput_b128 300 python benchmarks/train_throughput.py --device cuda --steps 50 --warmup 10 --batch 128 \
  --compile default reduce-overhead
# DiT-B/2 and DiT-XL/2 on 32x32x4 latents against diffusers' DiT, eager and compiled, and guided sampling with
# decoding (BENCHMARKS.md, "DiT"): about 8 minutes on an H200, most of it compiling.
step dit_throughput 540 python benchmarks/dit_throughput.py --device cuda --batch 256 --steps 20 --warmup 5
# A published DiT-XL/2 (random weights, both file layouts) swept with DPM-Solver++ 20 steps and decoding, per 1,000
# samples, against diffusers' DiTPipeline (BENCHMARKS.md, "Published DiT").
step published_dit 420 python benchmarks/published_dit.py --device cuda --samples 1000 --batch 250
