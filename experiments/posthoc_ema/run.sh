#!/usr/bin/env bash
# Post-hoc EMA and loss weightings at equal training FLOPs on the mnist_study recipe (0.64 M-parameter U-Net,
# 1,776 steps of 128 images, bf16, lr 2e-3, fixed EMA 0.99, p_uncond 0.1):
#  1. the uniform (simple-loss) model trained with power-function EMA tracks (sigma_rel 0.05 and 0.10, a snapshot
#     every 111 steps: 16), then FID over sigma_rel x w with evaluate.py, the fixed EMA as the first row;
#  2. autoguidance from that run's own short-trained EMA (sigma_rel 0.05 at step 444) instead of the null label;
#  3. the same recipe with Min-SNR-5, the sigmoid weighting and EDM's log-normal times, swept over the same w.
# Every point: 1,000 balanced-label samples, DPM-Solver++(2M) 20 steps, the same labels and seeds.
# Usage: experiments/posthoc_ema/run.sh /path/to/mnist [extra overrides]   (about 70 minutes on 2 CPU cores)
set -euo pipefail
MNIST_DIR=${1:?give the folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz}; shift
cd "$(dirname "$0")/../.."
OUT=experiments/posthoc_ema/runs
SWEEP=(sampler.steps=20 sampling.precision=bf16-mixed sampling.batched=false sweep.ws='[0,0.5,1,2]'
       sweep.num_samples=1000 sweep.batch_size=500)
train() {  # name, overrides...
  local name=$1; shift
  [ -f "$OUT/$name/.done" ] && return
  python train.py experiment=mnist_study data.data_dir="$MNIST_DIR" grids.ws='[0.5]' trainer.enable_progress_bar=false \
    "${SWEEP[@]}" hydra.run.dir="$OUT/$name" "$@" "${EXTRA[@]}"
  touch "$OUT/$name/.done"
}
EXTRA=("$@")
train uniform callbacks=phema callbacks.phema.snapshot_every=111 '~callbacks.sweep'
python evaluate.py ckpt_path="$OUT/uniform/checkpoints/last.ckpt" sigma_rels='[null,0.03,0.07,0.15]' \
  sampler=dpmpp_2m "${SWEEP[@]}" hydra.run.dir="$OUT/ema_sweep"
# autoguidance with a cheap bad version of the same run: its sigma_rel 0.05 EMA at a quarter of training
python reconstruct_ema.py "$OUT/uniform" --sigma-rel 0.05 --step 444
python evaluate.py ckpt_path="$OUT/uniform/checkpoints/last.ckpt" guidance=autoguidance \
  guidance.guide_ckpt="$OUT/uniform/phema/sigma_rel-0.050-step444.ckpt" sampler=dpmpp_2m "${SWEEP[@]}" \
  hydra.run.dir="$OUT/autoguidance"
for weighting in min_snr sigmoid edm; do
  train "$weighting" weighting="$weighting"
done
python experiments/posthoc_ema/tables.py  # results.md, tradeoff.png, heat_map.png
cp "$OUT"/ema_sweep/sweep.csv experiments/posthoc_ema/ema_sweep.csv
