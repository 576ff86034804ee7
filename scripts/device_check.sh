#!/usr/bin/env bash
# scripts/device_check.sh — everything that needs the Hopper GPU, in one call of the device
# machine (its time is scarce): build there, the whole test suite (GPU tests included),
# compute-sanitizer on a small case of every GPU role, the grouped-GEMM benchmark and the PyTorch
# baselines. $OUT (or ./out) receives logs.tgz (every log), summary.txt and the benchmark JSON
# and tables; the last lines printed are the summary.
#   usage (device machine, repo root, third_party/ carried):
#     bash scripts/device_check.sh [gemm shapes, default 0,1,2 | none] [layer configs, default all | none]
#   SKIP_SLOW=1  leaves out the test whose CPU reference takes ~2 minutes (MoeLayerGPU.TopK7BShape)
#   SANITIZE=0   leaves out compute-sanitizer (default: memcheck, racecheck, synccheck on a small set)
#   PYTHON=1     also installs the PyTorch extension (scripts/install_python.sh) and runs pytest
#   SUSTAIN_MS=N the GEMM benchmarks run each kernel back to back for N ms before timing it, at the
#                GPU's steady power-limited clock (bench/bench_util.cuh; default 0: 5 warm-up runs)
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-$root/out}
# The device tool brings back at most 8 files from $OUT: the logs are written beside the build
# and come back in one archive; $OUT gets the archive, the summary and the benchmark tables.
logs=$root/build/device_check_logs
rm -rf "$logs"
mkdir -p "$out" "$logs"
export PATH=/usr/local/cuda/bin:$PATH
shapes=${1:-0,1,2}
layer_configs=${2:-all}
summary=()

{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; nvcc --version | tail -1
  cmake --version | head -1; g++ --version | head -1; git log --oneline -1 2>/dev/null; } >"$logs/env.log" 2>&1
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)

start=$(date +%s)
cmake -S . -B build/device -G Ninja -DCMAKE_BUILD_TYPE=Release -DSONICMOE_KERNEL_SET=dev \
  -DSONICMOE_CUTLASS_DIR="$root/third_party/cutlass-4.2.0.0/include" >"$logs/build.log" 2>&1 &&
  cmake --build build/device -j"$(nproc)" >>"$logs/build.log" 2>&1
build_rc=$?
summary+=("build rc=$build_rc in $(( $(date +%s) - start )) s on $card")
grep -E "spill|bytes stack frame" "$logs/build.log" | sort | uniq -c >"$logs/ptxas_spills.log"
if [ $build_rc -ne 0 ]; then
  tail -30 "$logs/build.log"
  tar czf "$out/logs.tgz" -C "$logs" . 2>/dev/null
  printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
  exit 1
fi

exclude=()
[ "${SKIP_SLOW:-0}" = 1 ] && exclude=(-E TopK7BShape)
(cd build/device && timeout 420 ctest -j8 --timeout 300 "${exclude[@]}" --output-on-failure >"$logs/ctest.log" 2>&1)
summary+=("ctest: $(grep -E 'tests passed|tests failed' "$logs/ctest.log")")

small='GroupedGemmUpProj.EdgeExpertSizesTailsBias:GroupedGemmDownProj.EdgeExpertSizesTailsBias:GroupedGemmDownProj.EveryTailLength:GroupedGemmUpProj.EveryTailLength:GroupedGemmUpProjInputGrad.EdgeExpertSizesTails:GroupedGemmDownProjActGrad.EdgeExpertSizesAndTails:GroupedGemmDownProjWeightGrad.EdgeExpertSizesAndTails:GroupedGemmUpProjWeightGrad.EdgeExpertSizesAndTails:GroupedGemmUpProjWeightGrad.SkewedOneExpertHalfTheRows:MoeLayerGPU.TopKBiasHiddenNotTileMultiple:MoeLayerGPU.GeneralRoutingBias:MoeLayerTokenRoundingGPU.*/1'
tools=(memcheck racecheck synccheck)
[ "${SANITIZE:-1}" = 0 ] && tools=()
for tool in "${tools[@]}"; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 build/device/sonicmoe_tests --gtest_filter="$small" \
    >"$logs/sanitizer_$tool.log" 2>&1
  summary+=("compute-sanitizer $tool rc=$? ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/sanitizer_$tool.log" | tail -1))")
  if [ $tool = racecheck ]; then
    # cuBLAS's split-K kernels (nvjet*, the router GEMMs) report shared-memory hazards inside
    # cuBLAS that we can neither inspect nor fix (excluding them with --kernel-name-exclude makes
    # the sanitizer fail on them instead). What counts is every hazard in any other kernel.
    ours=$(grep -E "Race reported" "$logs/sanitizer_$tool.log" | grep -vcE "nvjet|cublas")
    summary+=("racecheck hazards outside cuBLAS kernels: $ours")
  fi
done

if [ "${PYTHON:-0}" = 1 ]; then
  # install_python.sh reads PYTHON as the interpreter's name: this script's PYTHON=1 is not one.
  env -u PYTHON timeout 300 bash scripts/install_python.sh >"$logs/python_install.log" 2>&1
  summary+=("python install rc=$?")
  cp build/install_python.log "$logs/" 2>/dev/null
  timeout 400 python3 -m pytest tests/python -q -rs -p no:cacheprovider >"$logs/pytest.log" 2>&1
  summary+=("pytest rc=$? ($(tail -1 "$logs/pytest.log"))")
fi
if [ "$layer_configs" != none ]; then
  timeout 400 build/device/layer_bench --configs "$layer_configs" --json "$logs/layer_bench.json" >"$logs/layer_bench.log" 2>&1
  summary+=("layer_bench rc=$?")
  cat "$logs/layer_bench.log"
fi
if [ "$shapes" != none ]; then
  sustain=(--sustain-ms "${SUSTAIN_MS:-0}")
  timeout 500 build/device/gemm_bench --shapes "$shapes" "${sustain[@]}" --json "$logs/gemm_bench.json" >"$logs/gemm_bench.log" 2>&1
  summary+=("gemm_bench rc=$?")
  timeout 400 python3 bench/grouped_mm_baseline.py --shapes "$shapes" "${sustain[@]}" --json "$logs/grouped_mm.json" >"$logs/grouped_mm.log" 2>&1
  summary+=("grouped_mm baseline rc=$?")
  grep -vE '^\s+\.\.\.' "$logs/gemm_bench.log"
  python3 bench/compare_gemm.py "$logs/gemm_bench.json" "$logs/grouped_mm.json" | tee "$logs/compare_gemm.txt"
fi
tar czf "$out/logs.tgz" -C "$logs" . 2>/dev/null
for f in compare_gemm.txt gemm_bench.json grouped_mm.json layer_bench.json; do
  [ -f "$logs/$f" ] && cp "$logs/$f" "$out/"
done
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
