#!/usr/bin/env bash
# The main job, from a fresh clone: set-up, release build, then sonicmoe_main with any flags
# given here (--help lists them): the CPU reference on a small layer, then, on an sm_90 GPU, the
# layer benchmark at the 12 configurations of DESIGN.md §5 (bench/layer_bench.cu; results JSON
# in build/<preset>/layer_bench.json). LAYER_CONFIGS=0,3 picks a subset; SUSTAIN_MS=1500 times
# every pass at the GPU's steady power-limited clock (each runs back to back that long first).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh >&2
preset=${SONICMOE_PRESET:-release}
if [ "$preset" != host ] && ! command -v nvcc >/dev/null; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; else preset=host; fi
fi
start=$(date +%s)
cmake --preset "$preset" >/dev/null
targets=(sonicmoe_main)
[ "$preset" != host ] && targets+=(layer_bench)
cmake --build --preset "$preset" --target "${targets[@]}" >&2
echo "run.sh: build ($preset preset) took $(( $(date +%s) - start )) s" >&2
"build/$preset/sonicmoe_main" "$@"
# On a Hopper GPU: the whole layer, forward and backward, with the cuBLAS bound and the paper's
# numbers side by side. Without one, layer_bench says why and exits 0.
if [ -x "build/$preset/layer_bench" ]; then
  echo
  "build/$preset/layer_bench" --configs "${LAYER_CONFIGS:-all}" --sustain-ms "${SUSTAIN_MS:-0}" \
    --json "build/$preset/layer_bench.json"
fi
