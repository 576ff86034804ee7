#!/usr/bin/env bash
# scripts/profile_roles.sh — Nsight Compute profiles of grouped-GEMM roles, one launch each, at one
# gemm_bench shape (device machine; needs a built build/device, e.g. from device_check.sh).
# Writes <role>.ncu-rep, <role>.txt (the details page: speed of light, memory and compute
# workloads, warp states, scheduler) and <role>.sass.csv (every SASS instruction with its warp-stall
# samples) into $OUT/ncu (or ./out/ncu). --clock-control base: durations are at the base clock.
#   usage: bash scripts/profile_roles.sh [shape index, default 0] [roles, default up,dh,dw1,dw2]
#   roles: up (up-proj), down (down-proj), dh (dH), dw2, dx (dX̃), dw1
#   BENCH=path/to/gemm_bench profiles another build (e.g. build/ab/<hash>/gemm_bench from
#   scripts/ab.sh; that build must know --roles), NAME=prefix names the outputs <NAME><role>.*
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-$root/out}/ncu
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
shape=${1:-0}
roles=${2:-up,dh,dw1,dw2}
bench=${BENCH:-build/device/gemm_bench}
name=${NAME:-}

# Demangled-name patterns that single out each role's kernel instantiation (ncu prints template
# arguments as (cute::SM90::GMMA::Major)0 = K-major, 1 = MN-major, and (bool)0 / (bool)1).
declare -A pattern=(
  [up]='EpilogueSwiGLU'
  [down]='Major\)0, \(sonicmoe::gemm::ASource\)1>, sonicmoe::gemm::EpilogueStoreTma'
  [dh]='EpilogueDSwiGLU'
  [dx]='Major\)1, \(sonicmoe::gemm::ASource\)1>, sonicmoe::gemm::EpilogueStoreTma'
  [dw2]='EpilogueWeightGradTma<.*, \(bool\)0>'
  [dw1]='EpilogueWeightGradTma<.*, \(bool\)1>'
)
sections=(SpeedOfLight MemoryWorkloadAnalysis ComputeWorkloadAnalysis Occupancy LaunchStats
          SchedulerStats WarpStateStats SourceCounters)
for role in ${roles//,/ }; do
  [ -n "${pattern[$role]:-}" ] || { echo "profile_roles.sh: unknown role $role"; exit 2; }
  args=(--kernel-name-base demangled -k "regex:${pattern[$role]}" --launch-skip 2 --launch-count 1
        --cache-control all --clock-control base)
  for s in "${sections[@]}"; do args+=(--section "$s"); done
  file=$out/$name$role
  timeout 240 ncu "${args[@]}" -f -o "$file" "$bench" --shapes "$shape" --roles "$role" --reps 3 >"$file.run.log" 2>&1
  echo "ncu $name$role rc=$?"
  ncu --import "$file.ncu-rep" --page details --print-details all >"$file.txt" 2>&1
  # Per-instruction SASS with its stall samples: where the warps wait.
  ncu --import "$file.ncu-rep" --page source --print-source sass --csv >"$file.sass.csv" 2>&1
  grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Hit|L1/TEX Hit|Registers Per|Stall|Warp Cycles Per Issued|Grid Size|Cluster" \
    "$file.txt" | head -24
done
