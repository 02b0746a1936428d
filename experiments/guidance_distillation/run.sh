#!/usr/bin/env bash
# Guidance distillation of a v-prediction mnist_study teacher on a 2-core CPU: stage one (w-conditioned student,
# Meng et al. 2023, 2,000 steps), stage two by two methods: progressive distillation (16 -> 8 -> 4 DDIM steps,
# Salimans & Ho 2022, truncated-SNR loss, learning rate annealed to 0 in each round; and one round straight to 4
# steps from stage one's 64-step DDIM path) and guided multistep consistency distillation straight to 4 steps
# (Heek et al. 2024); then the benchmark that samples teacher and students over
# w in {0, 0.5, 1, 2, 4} (1,000 samples each, domain-classifier metrics), the spread of w = 0 FIDs over 4 noise sets
# (spread.py) and the tables. The round-length curve and the 800-step stage one come from
# benchmark_stage1_800.json, the run of this script before stage one was lengthened (800 steps; the 8 -> 4 round
# at 250, 500 and 1000 steps).
# Usage: experiments/guidance_distillation/run.sh /path/to/mnist [teacher.ckpt]
#   Without a teacher checkpoint it first trains one: python train.py experiment=mnist_study_v (12-16 minutes).
set -euo pipefail
MNIST_DIR=${1:?give the folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz}
cd "$(dirname "$0")/../.."
OUT=experiments/guidance_distillation/runs
COMMON=(data.data_dir="$MNIST_DIR" callbacks.sweep=null logger=none trainer.enable_progress_bar=false)
mkdir -p "$OUT"
cpu_seconds() {  # wall time x cores of a command, appended to $OUT/cost.txt as "name seconds"
  local name=$1; shift
  local t0; t0=$(date +%s)
  "$@"
  echo "$name $(( ($(date +%s) - t0) * $(nproc) ))" >> "$OUT/cost.txt"
}
TEACHER=${2:-}
if [ -z "$TEACHER" ]; then
  cpu_seconds teacher_v python train.py experiment=mnist_study_v "${COMMON[@]}" grids.ws='[1]' \
    hydra.run.dir="$OUT/teacher_v"
  TEACHER=$OUT/teacher_v/checkpoints/last.ckpt
fi
cpu_seconds stage1_v python train.py experiment=distill_mnist teacher_ckpt="$TEACHER" "${COMMON[@]}" \
  hydra.run.dir="$OUT/stage1_v"
STAGE1=$OUT/stage1_v/checkpoints/last.ckpt
cpu_seconds stage2_v python distill.py experiment=progressive_mnist teacher_ckpt="$STAGE1" rounds='[8,4]' \
  "${COMMON[@]}" hydra.run.dir="$OUT/stage2_v"
cpu_seconds progressive4_of_64 python train.py experiment=progressive_mnist teacher_ckpt="$STAGE1" \
  module.student_steps=4 module.teacher_steps=64 "${COMMON[@]}" hydra.run.dir="$OUT/progressive4_of_64"
cpu_seconds consistency4 python train.py experiment=consistency_mnist teacher_ckpt="$STAGE1" "${COMMON[@]}" \
  hydra.run.dir="$OUT/consistency4"
python benchmarks/distillation.py --teacher "$TEACHER" --student "$STAGE1" \
  --few-step "$OUT/stage2_v/steps_8/checkpoints/last.ckpt" "$OUT/stage2_v/steps_4/checkpoints/last.ckpt" \
  "$OUT/progressive4_of_64/checkpoints/last.ckpt" "$OUT/consistency4/checkpoints/last.ckpt" \
  --data-dir "$MNIST_DIR" | tee "$OUT/benchmark.txt"
tail -n 1 "$OUT/benchmark.txt" > experiments/guidance_distillation/benchmark.json
python experiments/guidance_distillation/spread.py --teacher "$TEACHER" --student "$STAGE1" \
  --few-step "$OUT/stage2_v/steps_4/checkpoints/last.ckpt" "$OUT/progressive4_of_64/checkpoints/last.ckpt" \
  "$OUT/consistency4/checkpoints/last.ckpt" --data-dir "$MNIST_DIR" | tee "$OUT/spread.txt"
tail -n 1 "$OUT/spread.txt" > experiments/guidance_distillation/spread.json
cp "$OUT/cost.txt" experiments/guidance_distillation/cost.txt
D=experiments/guidance_distillation
python $D/tables.py $D/benchmark.json $D/benchmark_stage1_800.json $D/benchmark_eps.json $D/cost.txt $D/spread.json
