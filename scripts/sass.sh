#!/usr/bin/env bash
# scripts/sass.sh — the SASS of one CUDA translation unit on any machine, no GPU needed: compiles
# it for sm_90a with the dev build's flags and disassembles it. cuobjdump and nvdisasm are not in
# every CUDA install; they come from PyPI (nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm 13.5.37,
# which read nvcc 13.0's cubins), fetched once into the git-ignored third_party/tools/.
#   usage: bash scripts/sass.sh src/gemm/grouped_gemm_weight_grad.cu [out.sass]
# Prints ptxas's register and spill report per kernel and counts the local-memory instructions
# (STL/LDL: spills) in the SASS; the listing goes to out.sass (default /tmp/<name>.sass). Used to
# check what a kernel change did to the instruction stream before spending GPU time on it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
src=${1:?usage: scripts/sass.sh FILE.cu [out.sass]}
out=${2:-/tmp/$(basename "${src%.*}").sass}
export PATH=/usr/local/cuda/bin:$PATH
tools=$root/third_party/tools
version=13.5.37
if [ ! -x "$tools/bin/nvdisasm" ] || [ ! -x "$tools/bin/cuobjdump" ]; then
  mkdir -p "$tools/wheels" "$tools/bin"
  python3 -m pip download -q --no-deps -d "$tools/wheels" \
    "nvidia-cuda-cuobjdump==$version" "nvidia-cuda-nvdisasm==$version"
  for w in "$tools"/wheels/*.whl; do python3 -m zipfile -e "$w" "$tools/unpacked"; done
  find "$tools/unpacked" -type f \( -name cuobjdump -o -name nvdisasm \) -exec cp {} "$tools/bin/" \;
  chmod +x "$tools/bin/cuobjdump" "$tools/bin/nvdisasm"
fi
[ -d third_party/cutlass-4.2.0.0/include ] || bash scripts/setup.sh
cubin=$(mktemp --suffix .cubin)
trap 'rm -f "$cubin"' EXIT
nvcc -DSONICMOE_DEV_KERNELS=1 -Iinclude -Isrc -Ithird_party/cutlass-4.2.0.0/include -O3 -DNDEBUG \
  -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -std=c++20 -Xptxas -v \
  -cubin "$src" -o "$cubin" 2>&1 | grep -E "Compiling entry|registers|spill" | sed -E 's/_ZN[^ ]*grouped_gemm_sm90_kernel/grouped_gemm_sm90_kernel/'
PATH=$tools/bin:$PATH cuobjdump -sass "$cubin" >"$out"
echo "SASS: $out ($(grep -cE '^\s+/\*[0-9a-f]{4,}\*/' "$out") instructions, $(grep -cE '\b(STL|LDL)\b' "$out") STL/LDL)"
