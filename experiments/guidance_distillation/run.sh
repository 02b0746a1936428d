#!/usr/bin/env bash
# Guidance distillation of the mnist_study teacher on a 2-core CPU: stage one (w-conditioned student, Meng et al.
# 2023), stage two (progressive distillation 16 -> 8 -> 4 DDIM steps, Salimans & Ho 2022), then the benchmark that
# samples teacher and students over w in {0, 0.5, 1, 2, 4} (1,000 samples each, domain-classifier metrics).
# Usage: experiments/guidance_distillation/run.sh /path/to/mnist [teacher.ckpt]
#   Without a teacher checkpoint it first trains one: python train.py experiment=mnist_study (about 8 minutes).
set -euo pipefail
MNIST_DIR=${1:?give the folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz}
cd "$(dirname "$0")/../.."
OUT=experiments/guidance_distillation/runs
COMMON=(data.data_dir="$MNIST_DIR" callbacks.sweep=null logger=none trainer.enable_progress_bar=false)
mkdir -p "$OUT"
cpu_minutes() {  # wall time x cores of a command, in minutes, appended to $OUT/cost.txt as "name minutes"
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@"
  echo "$name $(python -c "import os, sys; print(round((float(sys.argv[1]) - float(sys.argv[2])) * os.cpu_count() / 60, 2))" "$(date +%s.%N)" "$t0")" >> "$OUT/cost.txt"
}
TEACHER=${2:-}
if [ -z "$TEACHER" ]; then
  cpu_minutes teacher python train.py experiment=mnist_study "${COMMON[@]}" grids.ws='[1]' hydra.run.dir="$OUT/teacher"
  TEACHER=$OUT/teacher/checkpoints/last.ckpt
fi
cpu_minutes stage1 python train.py experiment=distill_mnist teacher_ckpt="$TEACHER" "${COMMON[@]}" \
  hydra.run.dir="$OUT/stage1"
cpu_minutes stage2 python distill.py experiment=progressive_mnist teacher_ckpt="$OUT/stage1/checkpoints/last.ckpt" \
  rounds='[8,4]' "${COMMON[@]}" hydra.run.dir="$OUT/stage2"
python benchmarks/distillation.py --teacher "$TEACHER" --student "$OUT/stage1/checkpoints/last.ckpt" \
  --progressive "$OUT/stage2/steps_8/checkpoints/last.ckpt" "$OUT/stage2/steps_4/checkpoints/last.ckpt" \
  --data-dir "$MNIST_DIR" | tee "$OUT/benchmark.txt"
tail -n 1 "$OUT/benchmark.txt" > experiments/guidance_distillation/benchmark.json
python experiments/guidance_distillation/tables.py experiments/guidance_distillation/benchmark.json "$OUT/cost.txt"
