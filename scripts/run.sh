#!/usr/bin/env bash
# The main job, from a fresh clone: set-up, release build, then sonicmoe_main with any flags
# given here (--help lists them). On an sm_90 GPU this is where the GPU layer benchmark will run;
# elsewhere it runs the CPU reference on a small layer and says why.
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
cmake --build --preset "$preset" --target sonicmoe_main >&2
echo "run.sh: build ($preset preset) took $(( $(date +%s) - start )) s" >&2
exec "build/$preset/sonicmoe_main" "$@"
