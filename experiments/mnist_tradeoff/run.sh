#!/usr/bin/env bash
# MNIST guidance trade-off at CPU scale: train on the official 10k MNIST test images (the only split stored
# here; 9,000 train / 1,000 held out), then sweep w with the domain-classifier metrics at the end of fit.
# Usage: experiments/mnist_tradeoff/run.sh /path/to/mnist [extra overrides]
set -euo pipefail
MNIST_DIR=${1:?give the folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz}; shift
cd "$(dirname "$0")/../.."
python train.py data=mnist data.data_dir="$MNIST_DIR" data.split=test model=unet_mnist_cpu \
  trainer.max_steps=1000 trainer.precision=bf16-mixed trainer.check_val_every_n_epoch=1000 \
  module.lr=2e-3 module.p_uncond=0.1 callbacks.ema.decay=0.99 \
  sampler=dpmpp_2m sampler.steps=10 \
  sweep.num_samples=500 sweep.batch_size=250 \
  grids.ws='[0,1,3]' hydra.run.dir=experiments/mnist_tradeoff/run "$@"
