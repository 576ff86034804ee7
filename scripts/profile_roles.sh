#!/usr/bin/env bash
# scripts/profile_roles.sh — Nsight Compute profiles of grouped-GEMM roles, one launch each, at one
# gemm_bench shape (device machine; needs a built build/device, e.g. from device_check.sh).
# Writes <role>.ncu-rep and <role>.txt (the details page: speed of light, memory and compute
# workloads, warp states, scheduler, top stall sources) into $OUT/ncu (or ./out/ncu).
#   usage: bash scripts/profile_roles.sh [shape index, default 0] [roles, default up,dh,dw1,dw2]
#   roles: up (up-proj), down (down-proj), dh (dH), dw2, dx (dX̃), dw1
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-$root/out}/ncu
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
shape=${1:-0}
roles=${2:-up,dh,dw1,dw2}
bench=build/device/gemm_bench

# Demangled-name patterns that single out each role's kernel instantiation.
declare -A pattern=(
  [up]='EpilogueSwiGLU'
  [down]='MainloopSm90TmaGather<[^>]*K>.*EpilogueStoreTma'
  [dh]='EpilogueDSwiGLU'
  [dx]='MainloopSm90TmaGather<[^>]*MN>.*EpilogueStoreTma'
  [dw2]='MainloopSm90CpAsyncVarlenK<[^>]*true>'
  [dw1]='MainloopSm90CpAsyncVarlenK<[^>]*false>'
)
sections=(SpeedOfLight MemoryWorkloadAnalysis ComputeWorkloadAnalysis Occupancy LaunchStats
          SchedulerStats WarpStateStats SourceCounters)
for role in ${roles//,/ }; do
  [ -n "${pattern[$role]:-}" ] || { echo "profile_roles.sh: unknown role $role"; exit 2; }
  args=(--kernel-name-base demangled -k "regex:${pattern[$role]}" --launch-skip 2 --launch-count 1
        --cache-control all --clock-control base)
  for s in "${sections[@]}"; do args+=(--section "$s"); done
  timeout 240 ncu "${args[@]}" -f -o "$out/$role" "$bench" --shapes "$shape" --reps 3 >"$out/$role.run.log" 2>&1
  echo "ncu $role rc=$?"
  ncu --import "$out/$role.ncu-rep" --page details >"$out/$role.txt" 2>&1
  grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Hit|Registers Per|Stall|Warp Cycles Per Issued" \
    "$out/$role.txt" | head -20
done
