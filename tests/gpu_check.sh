#!/usr/bin/env bash
# The GPU check (BENCHMARKS.md, "GPU"): the CUDA tests, a trimmed benchmark and the loader at 2 and 12 workers
# (and from the decoded-image cache), and the CPU time of each decode path.
# Usage: bash tests/gpu_check.sh [OUTDIR]   (default gpu_check/; about 10 minutes on one H100/H200)
# Uses the machine's python3 and its torch; needs neither torch-fidelity nor lmdb, nor a dataset.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
mkdir -p "$out"
py="${PYTHON:-python3}"
status=0
$py -c "import torch; print('torch', torch.__version__, '| device', torch.cuda.get_device_name(0))" | tee "$out/device.txt"
echo "== pytest -m gpu"
/usr/bin/time -f "pytest -m gpu: %e s" $py -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/pytest_gpu.txt" || status=1
echo "== bench: 128 px ImageNet SAGAN, batch 256, 10 iterations after 3 warm-ups"
$py bench.py --imsize 128 --batch_size 256 --num_classes_bench 1000 --device cuda --warmup 3 --iters 10 \
  --compare "fp32-math:--amp off --attn_backend math|bf16-sdpa-cl:--amp bf16 --attn_backend sdpa --channels_last true|bf16-all:--amp bf16 --attn_backend sdpa --channels_last true --compile true|tf32-math:--amp off --attn_backend math --tf32 true" \
  --json "$out/bench.json" 2>&1 | tee "$out/bench.txt" || status=1
echo "== loader: 2,000 synthetic ImageNet-sized JPEGs at 128 px, 2 and 12 workers"
jpegs="$(mktemp -d)/jpegs"
$py bench.py --make_jpegs "$jpegs" --n 2000 | tee "$out/loader.txt" || status=1
for w in 2 12; do
  $py bench.py --loader "$jpegs" --imsize 128 --batch_size 256 --num_workers "$w" 2>&1 | tee -a "$out/loader.txt" || status=1
done
$py bench.py --loader "$jpegs" --imsize 128 --batch_size 256 --num_workers 12 --full_decode 2>&1 | tee -a "$out/loader.txt" || status=1
$py bench.py --loader "$jpegs" --imsize 128 --batch_size 256 --num_workers 2 --data_cache "$jpegs.cache" 2>&1 | tee -a "$out/loader.txt" || status=1
$py bench.py --decode_paths "$jpegs" --n 300 --imsize 128 2>&1 | tee -a "$out/loader.txt" || status=1
exit $status
