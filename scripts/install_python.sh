#!/usr/bin/env bash
# Installs the PyTorch package `sonicmoe` (python/sonicmoe + the extension) into python3, offline:
# the build backend (scikit-build-core and its pure-Python dependencies) comes from
# third_party/wheels/ (scripts/setup.sh downloads it there), torch must already be installed,
# and the extension is compiled by the top-level CMake against that torch (no build isolation).
# Needs nvcc (CUDA 13), CMake >= 3.25, ninja and the CUTLASS headers in third_party/.
#   SONICMOE_JOBS=N   parallel compile jobs (default: all cores)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
wheels=third_party/wheels
py=${PYTHON:-python3}

if ! "$py" -c "import torch" 2>/dev/null; then
  echo "install_python.sh: $py cannot import torch; install a CUDA build of PyTorch (>= 2.9) first" >&2
  exit 1
fi
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
command -v nvcc >/dev/null || { echo "install_python.sh: nvcc not found (CUDA 13 toolkit needed)" >&2; exit 1; }
[ -f third_party/cutlass-4.2.0.0/include/cute/tensor.hpp ] || [ -n "${SKBUILD_CMAKE_DEFINE:-}" ] \
  || { echo "install_python.sh: CUTLASS headers missing in third_party/; run scripts/setup.sh on a machine with network" >&2; exit 1; }

# Install into the Python that holds torch, as torch itself was (a Debian system Python marks
# itself externally managed; pip >= 23.0.1 honours this override, older pips ignore it).
export PIP_BREAK_SYSTEM_PACKAGES=1

if ! "$py" -c "import scikit_build_core" 2>/dev/null; then
  ls $wheels/scikit_build_core-*.whl >/dev/null 2>&1 \
    || { echo "install_python.sh: no scikit-build-core wheel in $wheels; run scripts/setup.sh with network first" >&2; exit 1; }
  "$py" -m pip install -q --disable-pip-version-check --no-index --find-links "$wheels" scikit-build-core pathspec packaging
fi

export CMAKE_BUILD_PARALLEL_LEVEL=${SONICMOE_JOBS:-$(nproc)}
start=$(date +%s)
mkdir -p build
log=build/install_python.log
echo "install_python.sh: building the extension (log: $log)"
if ! "$py" -m pip install --disable-pip-version-check --no-build-isolation --no-index --find-links "$wheels" \
    --no-deps -v . >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  echo "install_python.sh: pip install failed; full log in $log" >&2
  exit 1
fi
grep -E "^ *-- sonicmoe:|^Successfully installed" "$log" || true
"$py" - <<'PY'
import sonicmoe
if not sonicmoe.extension_available():
    raise SystemExit(f"install_python.sh: sonicmoe installed but its extension does not load: {sonicmoe.extension_error()}")
print(f"install_python.sh: sonicmoe {sonicmoe.__version__} installed, extension loaded from {sonicmoe.extension_path()}")
PY
echo "install_python.sh: took $(( $(date +%s) - start )) s"
