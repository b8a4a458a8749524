#!/usr/bin/env bash
# Reproduce the demo's shipped checkpoints (pretrained/demo128, pretrained/demo128_student,
# pretrained/demo128_adv, pretrained/demo128_lean, pretrained/demo128_lean_sto,
# pretrained/demo128_lean_tex, pretrained/demo128_lean_dose): the demo's data (same simulator
# seed), the recorded `medshift train` and `medshift distill` commands, then only what the demo
# needs is copied into pretrained/ (EMA weights, config.json, log.csv, data.json = the data's
# fingerprint). About 3 hours of one core
# here; minutes on a GPU.
#   usage: scripts/pretrain.sh [WORK_DIR]   (default runs/pretrain)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=${1:-runs/pretrain}
mkdir -p "$W"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one thread: on a shared 2-core VM two spin
# stage RUN_DIR RESUME_FLAGS COMMAND ARGS...: run `medshift COMMAND ARGS`, continued exactly
# (RESUME_FLAGS) where RUN_DIR already holds a training state
stage() {
  local out=$1 resume=$2 cmd=$3
  shift 3
  if [ -f "$out/training_state.pt" ]; then
    # shellcheck disable=SC2086  # the resume flags are words
    $PY -m medshift_fast "$cmd" "$@" $resume
  else
    $PY -m medshift_fast "$cmd" "$@"
  fi
}
$PY -m medshift_fast simulate --out "$W/data" --subjects 40 --views 6 --size 128 --seed 0 \
    --overwrite --no-progress
# the teacher (the recipe: docs/recipe.md)
TRAIN_ARGS=(--data "$W/data" --out "$W/teacher" --image-size 128 --crop 32 --preset tiny
            --steps 4000 --batch-size 32 --lr 2e-3 --ema-decay 0.999 --sigma 0.1
            --precision fp32 --sample-every 0 --val-every 500 --seed 0)
stage "$W/teacher" "--resume" train "${TRAIN_ARGS[@]}"
# the one-step student of the demo's two pairs (docs/distill.md)
DISTILL_ARGS=(--teacher "$W/teacher" --out "$W/student"
              --pairs synthetic_low:real_normal,real_low:real_exposure
              --tau-min 0.3 --tau-max 0.6 --taus-per-image 1 --max-images 80 --crop 64
              --steps 400 --batch-size 16 --lr 5e-4 --val-every 100 --seed 0
              --guidance-encode 0 --guidance-decode 1.5 --solver euler --solver-steps 10)
stage "$W/student" "--resume" distill "${DISTILL_ARGS[@]}"
# the adversarial one-step student the demo scores (docs/distill.md), from the regression one
ADV_ARGS=(--method adversarial --teacher "$W/teacher" --out "$W/student_adv"
          --init "$W/student" --anchor-run "$W/student"
          --pairs synthetic_low:real_normal,real_low:real_exposure --tau-min 0.3 --tau-max 0.6
          --crop 64 --steps 1000 --batch-size 8 --lr 2e-4 --ema-decay 0.99 --seed 0
          --adv-weight 0.3 --disc-lr 4e-4 --anchor-weight 0.1 --structure-sigma 2
          --val-every 100 --ckpt-every 100 --keep-ckpts 0)
stage "$W/student_adv" "--resume last" distill "${ADV_ARGS[@]}"
# the lean student (models/lean.py): the adversarial student re-distilled into the lean network
LEAN_ARGS=(--method oneshot --arch lean --teacher "$W/teacher" --out "$W/student_lean"
           --anchor-run "$W/student_adv" --anchor-cache --taus-per-image 4
           --pairs synthetic_low:real_normal,real_low:real_exposure --tau-min 0.3 --tau-max 0.6
           --crop 64 --steps 2000 --batch-size 16 --lr 2e-3 --seed 0
           --val-every 200 --ckpt-every 100 --keep-ckpts 0)
stage "$W/student_lean" "--resume last" distill "${LEAN_ARGS[@]}"
# the stochastic lean student the demo scores (a noise-map input, adversarial + diversity terms)
STO_ARGS=(--method adversarial --arch lean --noise-channels 1 --teacher "$W/teacher"
          --out "$W/student_lean_sto" --init "$W/student_lean" --anchor-run "$W/student"
          --anchor-cache --taus-per-image 4
          --pairs synthetic_low:real_normal,real_low:real_exposure --tau-min 0.3 --tau-max 0.6
          --crop 64 --steps 1500 --batch-size 8 --lr 2e-4 --ema-decay 0.99 --seed 0
          --adv-weight 0.3 --diversity-weight 0.1 --disc-lr 4e-4 --anchor-weight 0.1
          --structure-sigma 2 --noise-scale 0.5
          --val-every 100 --ckpt-every 100 --keep-ckpts 0)
stage "$W/student_lean_sto" "--resume last" distill "${STO_ARGS[@]}"
# the lean student with a detector texture (models/texture.py), from the deterministic lean
# student, adversarial + source-noise consistency; noise scale 0.75 (TEX_RECIPE: what the dose
# student below continues with)
TEX_RECIPE=(--method adversarial --arch lean --texture detector --teacher "$W/teacher"
            --anchor-run "$W/student" --anchor-cache --taus-per-image 4
            --pairs synthetic_low:real_normal,real_low:real_exposure --tau-min 0.3 --tau-max 0.6
            --crop 64 --batch-size 8 --ema-decay 0.99 --seed 0
            --adv-weight 0.3 --consistency-weight 20 --disc-lr 4e-4 --anchor-weight 0.1
            --structure-sigma 2 --noise-scale 0.75 --keep-ckpts 0)
TEX_ARGS=("${TEX_RECIPE[@]}" --out "$W/student_lean_tex" --init "$W/student_lean"
          --steps 2400 --lr 2e-4 --val-every 200 --ckpt-every 100)
stage "$W/student_lean_tex" "--resume last" distill "${TEX_ARGS[@]}"
# the demo's default: the texture student continued with the dose pair's Noisier2Noise term
# (train/adversarial.py `_dose`), longer and at a higher lr; published at noise scale 1
# (publish_pretrained.py's SHIPPED, chosen on the validation split: docs/distill.md)
DOSE_ARGS=("${TEX_RECIPE[@]}" --out "$W/student_lean_dose" --init "$W/student_lean_tex"
           --steps 12000 --lr 1e-3 --dose-weight 1000 --dose-pairs real_low:real_exposure
           --val-every 1000 --ckpt-every 500 --log-every 50)
stage "$W/student_lean_dose" "--resume last" distill "${DOSE_ARGS[@]}"
$PY scripts/publish_pretrained.py "$W"
