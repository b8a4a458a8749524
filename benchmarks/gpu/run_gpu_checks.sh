#!/usr/bin/env bash
# One prepared device run: build the CUDA extension, run the GPU tests, quick GPU benchmarks.
# Usage (on the lent GPU machine, repo root): bash benchmarks/gpu/run_gpu_checks.sh OUTDIR
#        bash benchmarks/gpu/run_gpu_checks.sh --dry-run OUTDIR   (any machine, CPU, tiny sizes:
#        the same benchmark stages, to check this script before GPU time is spent on it; CI runs
#        it, tests/test_gpu_script.py)
set -u
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-/tmp/gpu_out}
PY=${PYTHON:-python}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONPATH=$PWD
date +%s > "$OUT/t0"
# The lean student's frame latency (issue 30): 512², 1024², 2048² (whole and in 512-px tiles),
# fp32 / bf16, engines eager / cuda_graph / compile; each case bounded, the report written into
# $OUT after every case. The dry run: the CPU, 64/128 px, eager and cuda_graph (reported as not
# run), two frames; 96-px tiles (the lean halo needs 64 px of overlap).
lean_stage() {
  if [ "$DRY" = "1" ]; then
    timeout 300 $PY benchmarks/bench_lean_gpu.py --device cpu --sides 64,128 --tiled 128 \
      --tile 96 --engines eager,cuda_graph --precisions fp32,bf16 --frames 2 \
      --case-timeout 60 --json "$OUT/lean_frames_dryrun.json" 2>&1 | tail -14
  else
    timeout 300 $PY benchmarks/bench_lean_gpu.py --device cuda --frames 30 --case-timeout 40 \
      --json "$OUT/lean_frames_gpu.json" 2>&1 | tail -30
  fi
  return "${PIPESTATUS[0]}"
}
if [ "$DRY" = "1" ]; then
  echo "=== dry run on $(uname -n): the benchmark stages on the CPU, tiny sizes"
  echo "=== bench_lean_gpu (dry run)"
  lean_stage
  rc=$?
  echo "=== elapsed $(( $(date +%s) - $(cat $OUT/t0) )) s"
  exit $rc
fi
export MEDSHIFT_TEST_GPU=1 MEDSHIFT_FAST_TRITON_AUTOTUNE=0 TRITON_INTERPRET=0
[ -e medshift_fast/kernels ] || ln -s ../kernels medshift_fast/kernels
nvidia-smi --query-gpu=name,memory.total --format=csv
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
MAX_JOBS=16 MEDSHIFT_FAST_BUILD_EXT=1 timeout 200 $PY setup.py -q build_ext --inplace 2>&1 | tail -15
$PY -c "import torch, medshift_fast._C as C; print('ext with_cuda', C.with_cuda())"
$PY -c "import medshift_fast; print(medshift_fast.available_backends())"
for f in tests/ops/test_sinkhorn*.py tests/ops/test_guided_stage.py tests/ops/test_attention.py \
         tests/ops/test_attention_block.py tests/flow/test_sampler.py; do
  [ -f "$f" ] || continue
  echo "=== $f"
  timeout 120 $PY -m pytest -q -x -m cuda -p no:cacheprovider "$f" 2>&1 | tail -8
done
echo "=== elapsed $(( $(date +%s) - $(cat $OUT/t0) )) s"
echo "=== bench_lean_gpu (the lean student's frame latency)"
lean_stage
echo "=== elapsed $(( $(date +%s) - $(cat $OUT/t0) )) s"
# Stage 2 (optional: `STAGE2=1`): the GPU benchmarks the issues ask for, each bounded in time and
# writing its JSON and markdown (benchmarks/_harness.py Report) into $OUT as it goes (a cut-off
# run keeps what it measured, marked incomplete).
if [ "${STAGE2:-0}" = "1" ]; then
  echo "=== bench_guided_stage (copy-bandwidth fraction)"
  timeout 90 $PY benchmarks/bench_guided_stage.py --device cuda --json "$OUT/guided_stage_gpu.json" 2>&1 | tail -12
  echo "=== bench_sinkhorn (cuda / triton vs POT torch backend and the reference)"
  timeout 60 $PY benchmarks/bench_sinkhorn.py --reps 5 --json "$OUT/sinkhorn_gpu.json" 2>&1 | tail -12
  echo "=== bench_attention (TFLOP/s vs SDPA backends and the einsum form)"
  timeout 150 $PY benchmarks/bench_attention.py --device cuda --reps 5 --out "$OUT/attention_gpu.json" 2>&1 | tail -30
  echo "=== bench_sampler --gpu (512x512 frame latency, CUDA graph, bf16)"
  timeout 150 $PY benchmarks/bench_sampler.py --gpu --frames 10 --json "$OUT/sampler_gpu.json" 2>&1 | tail -20
  echo "=== bench_train (images/s; torchcfm anchor only if installed)"
  timeout 150 $PY benchmarks/bench_train.py --steps 5 --rounds 3 --json "$OUT/train_gpu.json" 2>&1 | tail -12
  echo "=== elapsed $(( $(date +%s) - $(cat $OUT/t0) )) s"
fi
