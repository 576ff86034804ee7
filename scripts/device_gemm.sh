#!/usr/bin/env bash
# scripts/device_gemm.sh — the grouped GEMM's one GPU-machine job: configure and build the test
# binary there (sm_90a), run the GroupedGemm tests, print the 7B-shape timing, run
# compute-sanitizer (memcheck, racecheck, synccheck) on small cases. Logs go to $OUT (or ./out).
# Needs the CUTLASS headers in third_party/ (carry it) and GoogleTest: the system one, else the
# sources in third_party/googletest (copied from /usr/src/googletest), built here.
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-$root/out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
jobs=$(nproc)

{
  date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  nvcc --version | tail -2; cmake --version | head -1; g++ --version | head -1
} >"$out/env.log" 2>&1

prefix_args=()
if [ ! -f /usr/include/gtest/gtest.h ] && [ -d third_party/googletest ]; then
  echo "building GoogleTest from third_party/googletest" >>"$out/env.log"
  cmake -S third_party/googletest -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX=/tmp/gtest-prefix -DBUILD_GMOCK=OFF >>"$out/env.log" 2>&1 &&
    cmake --build /tmp/gtest-build -j"$jobs" >>"$out/env.log" 2>&1 &&
    cmake --install /tmp/gtest-build >>"$out/env.log" 2>&1
  prefix_args=(-DCMAKE_PREFIX_PATH=/tmp/gtest-prefix)
fi

start=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSONICMOE_KERNEL_SET=dev \
  -DSONICMOE_CUTLASS_DIR="$root/third_party/cutlass-4.2.0.0/include" "${prefix_args[@]}" >"$out/build.log" 2>&1
cmake --build build/gpu -j"$jobs" --target sonicmoe_tests >>"$out/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - start )) s" | tee -a "$out/build.log"
bin=build/gpu/sonicmoe_tests
if [ $build_rc -ne 0 ] || [ ! -x $bin ]; then
  echo "build failed; trying the binary built on the development machine" | tee -a "$out/build.log"
  bin=third_party/prebuilt/sonicmoe_tests
fi

timeout 150 $bin --gtest_filter='GroupedGemmUpProj.*:GroupedGemmDownProj.*:GroupedGemmUpProjInputGrad.*:GroupedGemmValidation.*' >"$out/tests.log" 2>&1
tests_rc=$?
echo "tests rc=$tests_rc" | tee -a "$out/tests.log"
if [ $tests_rc -eq 124 ]; then
  echo "tests timed out (a hang?): skipping timing and sanitizer" | tee -a "$out/tests.log"
  exit 0
fi
SONICMOE_GEMM_TIMING=1 timeout 120 $bin --gtest_filter='GroupedGemmTiming*' >"$out/timing.log" 2>&1
echo "timing rc=$?" | tee -a "$out/timing.log"

small='GroupedGemmUpProj.EdgeExpertSizesTailsBias:GroupedGemmDownProj.ManyTilesPerCta:GroupedGemmUpProjInputGrad.EdgeExpertSizesTails'
{
  for tool in memcheck racecheck synccheck; do
    echo "=== compute-sanitizer --tool $tool"
    timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 $bin --gtest_filter="$small" 2>&1 | tail -25
    echo "$tool rc=${PIPESTATUS[0]}"
  done
} >"$out/sanitizer.log" 2>&1
grep -E "rc=" "$out/sanitizer.log"
exit 0
