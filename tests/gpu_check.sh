#!/usr/bin/env bash
# The GPU check (BENCHMARKS.md, "GPU"): the CUDA tests, a trimmed benchmark, the loader at 2 and 12 workers (and from
# the decoded-image cache) with the CPU time of each decode path, and, where Fashion-MNIST is given, fmnist_32_long's
# s/step and its evaluation on the GPU.
# Usage: [PARTS="tests bench loader fmnist"] bash tests/gpu_check.sh [OUTDIR] [FMNIST_DIR [CLASSIFIER_CACHE_DIR]]
# Each part runs under its own time limit in seconds (PART_TESTS 360, in two halves: the quick tests first, then the
# three that compile; PART_BENCH 200; PART_FMNIST 100; the loader's parts 30-90 each). All four parts take about
# 12 minutes on one H100/H200, more than one 10-minute call: run PARTS=tests, then PARTS="bench loader fmnist".
# Uses the machine's python3 and its torch; needs neither torch-fidelity nor lmdb, nor a dataset.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
fmnist="${2:-}"
cache="${3:-}"
parts=" ${PARTS:-tests bench loader fmnist} "
mkdir -p "$out"
out="$(cd "$out" && pwd)"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0
part() {  # part SECONDS NAME COMMAND...: run COMMAND under a time limit, its output appended to $out/NAME
  local limit="$1" name="$2"
  shift 2
  timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee -a "$out/$name"
  local rc="${PIPESTATUS[0]}"
  if [ "$rc" = 124 ] || [ "$rc" = 130 ] || [ "$rc" = 137 ]; then echo "!! stopped at its limit of $limit s: $*" | tee -a "$out/$name"; fi
  [ "$rc" = 0 ] || status=1
}
has() { [[ "$parts" == *" $1 "* ]]; }
$py -c "import torch; print('torch', torch.__version__, '| device', torch.cuda.get_device_name(0))" | tee "$out/device.txt"
if has loader; then  # the loader's 2,000 JPEGs are made on one CPU core while the GPU parts run
  jpegs="$(mktemp -d)/jpegs"
  $py bench.py --make_jpegs "$jpegs" --n 2000 > "$out/loader.txt" 2>&1 &
  maker=$!
fi
if has tests; then
  echo "== pytest -m gpu: the quick tests, then the three that compile"
  half=$(( ${PART_TESTS:-360} / 3 ))
  part "$half" pytest_gpu.txt $py -m pytest -m gpu -v -p no:cacheprovider --durations=0 tests/test_gpu.py -k "not compile"
  part $(( 2 * half )) pytest_gpu.txt $py -m pytest -m gpu -v -p no:cacheprovider --durations=0 tests/test_gpu.py -k compile
fi
if has bench; then
  echo "== bench: 128 px ImageNet SAGAN, batch 256, 10 iterations after 3 warm-ups (the compiled variant last)"
  part "${PART_BENCH:-200}" bench.txt $py bench.py --imsize 128 --batch_size 256 --num_classes_bench 1000 --device cuda --warmup 3 --iters 10 \
    --compare "fp32-math:--amp off --attn_backend math|bf16-sdpa-cl:--amp bf16 --attn_backend sdpa --channels_last true|tf32-math:--amp off --attn_backend math --tf32 true|bf16-all:--amp bf16 --attn_backend sdpa --channels_last true --compile true" \
    --json "$out/bench.json"
fi
if has loader; then
  echo "== loader: 2,000 synthetic ImageNet-sized JPEGs at 128 px, 2 and 12 workers"
  wait "$maker" || status=1
  cat "$out/loader.txt"
  part 45 loader.txt $py bench.py --loader "$jpegs" --imsize 128 --batch_size 256 --num_workers 2
  part 90 loader.txt $py bench.py --loader "$jpegs" --imsize 128 --batch_size 256 --num_workers 12
  part 90 loader.txt $py bench.py --loader "$jpegs" --imsize 128 --batch_size 256 --num_workers 12 --full_decode
  part 40 loader.txt $py bench.py --loader "$jpegs" --imsize 128 --batch_size 256 --num_workers 2 --data_cache "$jpegs.cache"
  part 30 loader.txt $py bench.py --decode_paths "$jpegs" --n 300 --imsize 128
fi
if has fmnist && [ -n "$fmnist" ]; then
  echo "== fmnist_32_long: 500 steps on the GPU, then its evaluation on 2,000 samples"
  runs="$(mktemp -d)"
  part "${PART_FMNIST:-100}" fmnist.txt $py main.py --preset fmnist_32_long --version gpu_check --data_dir "$fmnist" \
    ${cache:+--eval_cache_dir "$cache"} --total_step 500 --log_step 100 --eval_step 500 --model_save_step 500 --sample_step 500 \
    --model_save_path "$runs/models" --sample_path "$runs/samples" --log_path "$runs/logs" --attn_path "$runs/attn"
fi
exit $status
