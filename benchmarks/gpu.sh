#!/usr/bin/env bash
# One command for the day a GPU is lent (one H100/H200-class GPU). About 7 minutes on an H200
# (2026-11-30); each step has a time limit (together 675 s), so it ends whatever happens:
#   1. AOT check of every Triton kernel for the GPU's own arch (registers, spills, vector loads),
#      on the CPU while the GPU-only tests (5.) run
#   2. kernel microbenchmark: GB/s, fraction of peak, vs eager and torch.compile of the references
#   3. runner overhead per forward on the GPU (tiny FLUX: host work dominates), and per variant
#      the kernel launches and host ops per forward (torch.profiler), and the split of a computed
#      step into compiled code, the Python around it, and that Python alone (--breakdown)
#   4. end-to-end: FLUX-shaped bf16 model (4+8 blocks, 12 heads x 128, 1024+256 tokens): no cache
#      eager / compiled / regional, cache-dit eager and compiled, diffusers FirstBlockCache,
#      dit_cachepass full / regional / reduce-overhead (CUDA graphs)
#   5. the GPU-only tests (Triton decisions = reference decisions; CUDA graphs = default mode)
#   6. (only with ONLY=compile, ~4-5 minutes: a second call) compile time in fresh processes with
#      empty Inductor caches: diffusers' compile_repeated_blocks, dit_cachepass regional (graph
#      path), regional on the block path, and plain torch.compile
# Every table goes to a dated section of benchmarks/RESULTS.md (RESULTS=path to change it).
#
# The e2e step has a --time-budget and reports whatever finished when it runs out.
#
#   bash benchmarks/gpu.sh            # from the repository root, with the test extra installed
#   RESULTS=/tmp/r.md LOG=/tmp/logs PY=python3 bash benchmarks/gpu.sh
#   ONLY="gpu_tests e2e" E2E_VARIANTS=compiled,dcp_inductor bash benchmarks/gpu.sh   # a subset
#
# On an offline GPU machine that has torch and Triton but not diffusers / cache-dit (how the
# first run was done): download the wheels elsewhere into .whl/ (diffusers==0.42.1,
# cache-dit==1.5.3, importlib_metadata==8.7.0), then
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   python3 -m pip install --no-index --no-deps --no-build-isolation -e .
#   PY=python3 bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(command -v python || command -v python3)}
RESULTS=${RESULTS:-benchmarks/RESULTS.md}
PLOT=${PLOT:-benchmarks/e2e_gpu.png}
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
ONLY=${ONLY:-"gpu_tests gpu_ops aot kernels overhead e2e"}
E2E_VARIANTS=${E2E_VARIANTS:-eager,compiled,dcp_inductor,dcp_reduce_overhead,cachedit,cachedit_compiled,diffusers_fbc,compiled_regional,dcp_regional,dcp_regional_block}
# Random weights change a lot between steps (rel. Fn-residual diffs 0.54-0.61 on this model, measured in fp32 on a CPU): R0.5 caches
# nothing, so the default threshold lets DBCache cache what W and MC allow (the error column is not
# a quality measure on random weights)
E2E_THRESHOLD=${E2E_THRESHOLD:-1.0}
E2E_BUDGET=${E2E_BUDGET:-200}  # seconds; the step's timeout is 20 s more
OVERHEAD_VARIANTS=${OVERHEAD_VARIANTS:-plain,computed,cached,cachedit}
GPU_TESTS_LIMIT=${GPU_TESTS_LIMIT:-200}  # 2 tests took 93 s on an H200 (compiles); 3 now
want() { [[ " $ONLY " == *" $1 "* ]]; }
LOG=${LOG:-$(mktemp -d)}
mkdir -p "$LOG"
status=0
section() { printf '\n#### %s\n\n' "$1" >> "$RESULTS"; }
record() {  # record NAME RC SECONDS CMD...: the log's tail into the results as a code block
  local name=$1 rc=$2 secs=$3; shift 3
  section "$name (\`$*\`, rc $rc, $secs s)"
  { echo '```'; grep -v -E "^W[0-9]{4} |Failed to load|torchao" "$LOG/$name.txt" | tail -60; echo '```'; } >> "$RESULTS"
  [ "$rc" -eq 0 ] || status=1
}
run() {  # run NAME TIMEOUT CMD...: failures are recorded, not fatal; steps not in $ONLY are skipped
  local name=$1 limit=$2; shift 2
  want "$name" || return 0
  echo "== $name: $*" >&2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$LOG/$name.txt" 2>&1
  record "$name" $? $((SECONDS - t0)) "$@"
}

printf '\n## GPU run %s on %s (%s), `bash benchmarks/gpu.sh`\n' "$(date -u +%F)" "$GPU" "$ARCH" >> "$RESULTS"
T0=$SECONDS
# AOT compiles on the CPU: it runs beside the GPU tests, whose timing does not matter
AOT=($PY -m dit_cachepass.kernels.aot --roofline)
if want aot; then
  (t0=$SECONDS; timeout 70 "${AOT[@]}" > "$LOG/aot.txt" 2>&1; echo "$? $((SECONDS - t0))" > "$LOG/aot.rc") &
  AOT_PID=$!
fi
# compiled Triton: tests/conftest.py (and tests/kernels/conftest.py, once collected) would turn the
# interpreter on for Inductor's kernels too, so test_gpu.py runs alone; test_ops' GPU check runs
# its kernels in a subprocess of its own
run gpu_tests "$GPU_TESTS_LIMIT" env TRITON_INTERPRET=0 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py
run gpu_ops 75 $PY -m pytest -q -p no:cacheprovider tests/kernels/test_ops.py -k "gpu or cuda"
if want aot; then
  wait $AOT_PID
  read -r AOT_RC AOT_S < "$LOG/aot.rc"
  record aot "$AOT_RC" "$AOT_S" "${AOT[@]}"
fi
run kernels 60 $PY benchmarks/kernel_bench.py --sizes flux --dtype bf16 --peak-gbps "$PEAK"
run overhead 140 $PY benchmarks/overhead.py --device cuda --rounds 20 --calls 10 \
  --variants "$OVERHEAD_VARIANTS" --breakdown --profile --results "$RESULTS"
run e2e $((E2E_BUDGET + 20)) $PY benchmarks/e2e.py --model gpu --device cuda --dtype bf16 --steps 20 --repeats 3 --warmup-gens 1 \
  --variants "$E2E_VARIANTS" --threshold "$E2E_THRESHOLD" --threads 0 --time-budget "$E2E_BUDGET" --out "$PLOT" --results "$RESULTS"
run compile 330 $PY benchmarks/compile_time.py --model gpu --device cuda --dtype bf16 --steps 8 --gens 3 --threads 4 \
  --variants "${COMPILE_VARIANTS:-regional,dcp_regional,dcp_block,compiled}" --results "$RESULTS"
echo "gpu.sh: done in $((SECONDS - T0)) s, rc $status; tables appended to $RESULTS" >&2
exit $status
