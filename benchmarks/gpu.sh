#!/usr/bin/env bash
# One command for the day a GPU is lent (one H100/H200-class GPU; the steps' time limits add up
# to 500 s, so it ends in about 8 minutes whatever happens; never run on a GPU yet):
#   1. AOT check of every Triton kernel for the GPU's own arch (registers, spills, vector loads)
#   2. kernel microbenchmark: GB/s, fraction of peak, vs eager and torch.compile of the references
#   3. runner overhead per forward on the GPU (tiny FLUX: host work dominates)
#   4. end-to-end: FLUX-shaped bf16 model (4+8 blocks, 12 heads x 128, 1024+256 tokens): no cache
#      eager / compiled / regional, cache-dit eager and compiled, diffusers FirstBlockCache,
#      dit_cachepass full / regional / reduce-overhead (CUDA graphs)
#   5. the GPU-only tests (Triton decisions = reference decisions; CUDA graphs = default mode)
# Every table goes to a dated section of benchmarks/RESULTS.md (RESULTS=path to change it).
#
#   bash benchmarks/gpu.sh            # from the repository root, with the test extra installed
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
RESULTS=${RESULTS:-benchmarks/RESULTS.md}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export CACHE_DIT_LOG_LEVEL=warning

GPU=$($PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())") || {
  echo "gpu.sh: no CUDA GPU visible to torch" >&2; exit 2; }
ARCH=$($PY -c "import torch; print('sm_%d%d' % torch.cuda.get_device_capability())")
case "$GPU" in
  *H200*) PEAK=4800 ;;
  *H100*) PEAK=3350 ;;
  *A100*) PEAK=2039 ;;
  *) PEAK=${PEAK_GBPS:-0} ;;
esac
LOG=$(mktemp -d)
status=0
section() { printf '\n#### %s\n\n' "$1" >> "$RESULTS"; }
run() {  # run NAME TIMEOUT CMD...: output into the results as a code block; failures are recorded, not fatal
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" >&2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$LOG/$name.txt" 2>&1
  local rc=$?
  section "$name (\`$*\`, rc $rc, $((SECONDS - t0)) s)"
  { echo '```'; grep -v -E "^W[0-9]{4} |Failed to load|torchao" "$LOG/$name.txt" | tail -60; echo '```'; } >> "$RESULTS"
  [ $rc -eq 0 ] || status=1
}

printf '\n## GPU run %s on %s (%s), `bash benchmarks/gpu.sh`\n' "$(date -u +%F)" "$GPU" "$ARCH" >> "$RESULTS"
T0=$SECONDS
run aot 60 $PY -m dit_cachepass.kernels.aot --roofline
run kernels 60 $PY benchmarks/kernels.py --sizes flux --dtype bf16 --peak-gbps "$PEAK"
run overhead 90 $PY benchmarks/overhead.py --device cuda --rounds 40 --calls 10 --variants plain,computed,unfolded,cached
run e2e 240 $PY benchmarks/e2e.py --model gpu --device cuda --dtype bf16 --steps 20 --repeats 3 --warmup-gens 1 \
  --variants eager,compiled,compiled_regional,cachedit,cachedit_compiled,diffusers_fbc,dcp_inductor,dcp_regional,dcp_reduce_overhead \
  --threads 0 --out benchmarks/e2e_gpu.png
run gpu_tests 50 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/kernels/test_ops.py -k "gpu or cuda"
echo "gpu.sh: done in $((SECONDS - T0)) s, rc $status; tables appended to $RESULTS" >&2
exit $status
