#!/usr/bin/env bash
# Guidance methods compared at equal cost on the mnist_study model (0.64 M-parameter U-Net, 1,776 steps of 128
# images, bf16, p_uncond 0.1, fixed EMA 0.99): every method over the same w on the same 3 paired noise sets of
# 500 balanced-label samples, DPM-Solver++(2M) 20 steps; CFG also at 12 steps, the NFE of the interval methods;
# per-class metrics too.
# Then aggregate.py: each method at its best w with its spread, NFE and seconds, the paired differences from the
# leader, the FID-against-NFE front. Usage: experiments/guidance_methods/run.sh /path/to/mnist  (about 45 minutes
# on 2 CPU cores)
set -euo pipefail
MNIST_DIR=${1:?give the folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz}; shift
cd "$(dirname "$0")/../.."
OUT=experiments/guidance_methods/runs
[ -f "$OUT/model/.done" ] || {
  python train.py experiment=mnist_study data.data_dir="$MNIST_DIR" grids.ws='[1]' '~callbacks.sweep' \
    trainer.enable_progress_bar=false hydra.run.dir="$OUT/model"
  touch "$OUT/model/.done"
}
SWEEP=(ckpt_path="$OUT/model/checkpoints/last.ckpt" sampler=dpmpp_2m sampling.precision=bf16-mixed
       sampling.batched=false sweep.ws='[0.2,0.3,0.5,1,2]' sweep.num_samples=500 sweep.batch_size=500 sweep.repeats=3
       metrics.per_class=true hydra.sweep.dir="$OUT/methods")
# finished points are kept: rerunning the same commands resumes
python evaluate.py -m "${SWEEP[@]}" guidance=cfg,interval_narrow,interval_high,apg,rescale sampler.steps=20 \
  hydra.sweep.subdir='steps20_${hydra.job.num}'
python evaluate.py -m "${SWEEP[@]}" guidance=cfg sampler.steps=12 hydra.sweep.subdir='steps12_${hydra.job.num}'
python aggregate.py "$OUT/methods" --wandb off
cp "$OUT"/methods/{ranking.md,ranking.csv,aggregate.md,fid_vs_nfe.png,aggregate.png} experiments/guidance_methods/
