#!/usr/bin/env bash
# One adversarial-distillation experiment on the demo's data (docs/distill.md, the ablation):
#   scripts/adv_run.sh NAME [extra medshift distill flags...]   -> runs/adv/NAME
# the shared settings below; a run that exists is resumed (exactly).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=${W:-runs/adv}
NAME=$1; shift
ARGS=(--method adversarial --teacher pretrained/demo128 --data runs/pretrain/data
      --init pretrained/demo128_student --anchor-run pretrained/demo128_student
      --pairs synthetic_low:real_normal,real_low:real_exposure --tau-min 0.3 --tau-max 0.6
      --crop 64 --batch-size 8 --lr 1e-4 --ema-decay 0.99 --val-every 100 --ckpt-every 100
      --keep-ckpts 0 --log-every 10 --seed 0 --out "$W/$NAME" "$@")
export OMP_NUM_THREADS=1
if [ -f "$W/$NAME/training_state.pt" ]; then
  nice -n 10 $PY -m medshift_fast distill "${ARGS[@]}" --resume last --no-progress
else
  nice -n 10 $PY -m medshift_fast distill "${ARGS[@]}" --no-progress
fi
