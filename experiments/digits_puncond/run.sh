#!/usr/bin/env bash
# Ho & Salimans 2022 Table 1 in miniature: one digits model per p_uncond, each swept over w, then one table.
# Usage: experiments/digits_puncond/run.sh [extra overrides]   (about 6 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=experiments/digits_puncond/multirun
rm -rf "$OUT"
python train.py -m module.p_uncond=0.1,0.2,0.5 trainer.max_steps=1500 \
  sweep.ws='[0,0.3,1,2,4]' sweep.num_samples=500 sweep.batch_size=500 \
  grids.ws='[0,3]' trainer.enable_progress_bar=false hydra.sweep.dir="$OUT" "$@"
python aggregate.py "$OUT"
cp "$OUT"/aggregate.{md,csv,png} experiments/digits_puncond/
