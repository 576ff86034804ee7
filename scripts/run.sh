#!/usr/bin/env bash
# The main job, from a fresh clone: set-up, release build, then sonicmoe_main with any flags
# given here (--help lists them): the CPU reference on a small layer, then, on an sm_90 GPU, the
# grouped-GEMM benchmark (the GPU layer benchmark replaces it once the layer exists).
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
[ "$preset" != host ] && targets+=(gemm_bench)
cmake --build --preset "$preset" --target "${targets[@]}" >&2
echo "run.sh: build ($preset preset) took $(( $(date +%s) - start )) s" >&2
"build/$preset/sonicmoe_main" "$@"
# Until the GPU layer exists (issue 4), a Hopper GPU runs the grouped-GEMM engine's benchmark at
# the 7B shape; without one, gemm_bench says why and exits 0.
if [ -x "build/$preset/gemm_bench" ]; then
  echo
  "build/$preset/gemm_bench" --shapes 0
fi
