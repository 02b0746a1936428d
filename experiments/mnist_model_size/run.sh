#!/usr/bin/env bash
# Which MNIST-scale U-Net gives the best guided FID for a fixed training compute? Four widths/depths, each
# trained for the same FLOPs as the default (unet_mnist_cpu, 1,000 steps x 128 images x 3 x 0.374 GFLOP =
# 143 TFLOP; steps = 1000 x 0.374 / the model's GFLOP per image forward), the mnist_study recipe otherwise
# (bf16, lr 2e-3, EMA 0.99, p_uncond 0.1), then swept over w with DPM-Solver++(2M) 20 steps, 1,000 samples.
# Usage: experiments/mnist_model_size/run.sh /path/to/mnist [extra overrides]   (about 30 minutes on 2 CPU cores)
set -euo pipefail
MNIST_DIR=${1:?give the folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz}; shift
cd "$(dirname "$0")/../.."
OUT=experiments/mnist_model_size/runs
rm -rf "$OUT"
run() {  # name, overrides...
  local name=$1; shift
  python train.py experiment=mnist_study data.data_dir="$MNIST_DIR" "$@" \
    sampler.steps=20 sampling.precision=bf16-mixed sampling.batched=false \
    sweep.ws='[0,0.5,1]' sweep.num_samples=1000 sweep.batch_size=500 \
    grids.ws='[1]' trainer.enable_progress_bar=false hydra.run.dir="$OUT/$name" "${EXTRA[@]}"
}
EXTRA=("$@")
run c24 model=unet_mnist_cpu model.base_channels=24 trainer.max_steps=1776  # 0.64 M params, 0.210 GFLOP
run small model=unet_small trainer.max_steps=977                            # 0.71 M params, 0.382 GFLOP (2 levels)
run default model=unet_mnist_cpu trainer.max_steps=1000                     # 1.14 M params, 0.374 GFLOP
run c48 model=unet_mnist_cpu model.base_channels=48 trainer.max_steps=445   # 2.56 M params, 0.839 GFLOP
python aggregate.py "$OUT"
cp "$OUT"/aggregate.{md,csv,png} experiments/mnist_model_size/
