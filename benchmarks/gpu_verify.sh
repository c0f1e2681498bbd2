#!/bin/bash
# A short GPU check for a session with little device time (benchmarks/RESULTS.md, "Ops on a
# GPU"): the CUDA tests, the benchmark shapes (target: 64, 128, 32768) in three dtypes, the
# non-finite count over at least 10^9 draws per dtype. Results go to $OUT (default
# ./gpu-results). benchmarks/gpu_session.sh is the long form (launch-configuration sweep too).
: "${OUT:=gpu-results}"; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
start=$(date +%s)
timeout "${TEST_S:-80}" python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_nn.py \
  -k "gpu or cuda" 2>&1 | tail -25 | tee "$OUT/tests.txt"
echo "tests took $(( $(date +%s) - start )) s"
python3 benchmarks/ops_gpu.py --shapes "${SHAPES:-256x30x10,4096x1000,64x128x32768}" --rounds 3 --calls 5 --draws 1e9 \
  --out "$OUT/bench.md" --json "$OUT/bench.json" 2>&1 | grep -v -i warn
echo "all done at $(( $(date +%s) - start )) s"
