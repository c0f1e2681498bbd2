#!/bin/bash
# One prepared GPU session (benchmarks/RESULTS.md, "Ops on a GPU"): the CUDA tests, the
# launch-configuration sweep, a choice of TUNING from it, and the full benchmark with that
# choice. Run from the repository root on a CUDA machine with torch and triton; results go
# to $OUT (default ./gpu-results).
: "${OUT:=gpu-results}"; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
start=$(date +%s)
timeout 220 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_nn.py -k "gpu or cuda" 2>&1 | tail -25 | tee $OUT/tests.txt
echo "tests took $(( $(date +%s) - start )) s"
timeout 200 python3 benchmarks/ops_gpu.py --sweep --json $OUT/sweep.json --out $OUT/sweep.md 2>&1 | grep -v -i warn
echo "sweep done at $(( $(date +%s) - start )) s"
python3 - "$OUT/sweep.json" > $OUT/tuning.json <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
def best(shape, dtype, pred):
    c = [r for r in rows if tuple(r["shape"]) == shape and r["dtype"] == dtype and pred(r["config"])]
    return min(c, key=lambda r: r["ms"]) if c else None
f32 = "torch.float32"
never = lambda c: c.get("fast_log", "never") == "never"
tuning = {"fast_log": "16-bit"}
single = lambda c: c.get("single_cols", 1) != 0
s32 = best((8192, 32768), f32, lambda c: never(c) and single(c))
t32 = best((8192, 32768), f32, lambda c: never(c) and not single(c))
s8 = best((4096, 8192), f32, single)
t8 = best((4096, 8192), f32, lambda c: not single(c))
if s8:
    tuning["single_elems_per_thread"] = s8["config"]["single_elems_per_thread"]
if s32 and t32 and s32["ms"] <= t32["ms"]:
    tuning.update(single_cols=32768, single_max_warps=s32["config"]["single_max_warps"])
elif s8 and t8 and s8["ms"] <= t8["ms"]:
    tuning.update(single_cols=16384)
else:
    tuning.update(single_cols=4096)
long = best((64, 131072), f32, lambda c: True) if tuning["single_cols"] >= 32768 else t32
if long:
    tuning.update(chunks=long["config"]["chunks"], warps=long["config"]["warps"])
print(json.dumps(tuning))
PY
echo "tuning: $(cat $OUT/tuning.json)"
timeout $(( 560 - ($(date +%s) - start) )) python3 benchmarks/ops_gpu.py --rounds 5 --calls 10 --draws 1e9 --tuning "$(cat $OUT/tuning.json)" --out $OUT/bench.md --json $OUT/bench.json 2>&1 | grep -v -i warn
echo "all done at $(( $(date +%s) - start )) s"
