#!/usr/bin/env bash
# scripts/ab.sh — same-call A/B comparisons of grouped-GEMM kernels across git revisions. Numbers
# of different device calls differ by a few percent on unchanged kernels, so a change is judged
# against its base in one call: build gemm_bench for each revision here (CPU machine; the binary
# links cudart statically and runs on the device unchanged), carry build/ab, run there.
#   here:    bash scripts/ab.sh build REV [REV ...]     e.g. bash scripts/ab.sh build main HEAD
#            -> build/ab/<short hash>/gemm_bench (one git worktree per revision, in build/ab-src;
#            remove them with rm -rf build/ab-src && git worktree prune)
#   device:  bash scripts/ab.sh run [shapes, default 0,1,2] [rounds, default 2] [roles, default all]
#            (run call with carry ["build/ab"]); runs every build/ab/*/gemm_bench, alternating
#            revisions round by round, and prints TFLOPS per role and revision (the best of the
#            rounds) with each revision's ratio to the first one named at build time, after every
#            round (a run cut short by a caller's timeout keeps the rounds it finished); every
#            run's JSON and log come back in $OUT/ab.tgz.
#            AB_ONLY="rev rev ..." runs only those (names or hashes as built; the first is the base).
#            AB_BENCH_ARGS="--sustain-ms 2000" is passed to every gemm_bench (revisions that have it).
#            Budget: one gemm_bench run of all six roles takes ~60 s at shapes 0,1,2 (host-side
#            routing and error checks); name the roles (e.g. dh,down) to compare fewer.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
ab=build/ab
mode=${1:?usage: scripts/ab.sh build REV... | run [shapes] [rounds]}
shift

if [ "$mode" = build ]; then
  [ $# -ge 1 ] || { echo "ab.sh build: name at least one revision" >&2; exit 2; }
  [ -d third_party/cutlass-4.2.0.0/include ] || bash scripts/setup.sh
  export PATH=/usr/local/cuda/bin:$PATH
  mkdir -p "$ab" build/ab-src
  : >"$ab/order"
  for rev in "$@"; do
    hash=$(git rev-parse --short "$rev^{commit}")
    tree=build/ab-src/$hash
    [ -d "$tree" ] || git worktree add --detach -f "$tree" "$hash" >/dev/null 2>&1
    [ -e "$tree/third_party" ] || ln -s "$root/third_party" "$tree/third_party"
    cmake -S "$tree" -B "$tree/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSONICMOE_KERNEL_SET=dev \
      -DSONICMOE_CUTLASS_DIR="$root/third_party/cutlass-4.2.0.0/include" >/dev/null
    cmake --build "$tree/build" -j"$(nproc)" --target gemm_bench >"$ab/build_$hash.log" 2>&1 ||
      { tail -20 "$ab/build_$hash.log"; exit 1; }
    mkdir -p "$ab/$hash"
    cp "$tree/build/gemm_bench" "$ab/$hash/"
    echo "$hash $rev" >>"$ab/order"
    echo "ab.sh: $rev = $hash -> $ab/$hash/gemm_bench"
  done
  echo "ab.sh: on the device: run with carry [\"$ab\"] and command: bash scripts/ab.sh run [shapes] [rounds]"
  exit 0
fi

[ "$mode" = run ] || { echo "ab.sh: unknown mode $mode" >&2; exit 2; }
shapes=${1:-0,1,2}
rounds=${2:-2}
roles=${3:-up,down,dh,dw2,dx,dw1}
# Per-run JSON and logs stay beside the builds; the device tool brings back at most 8 files from
# $OUT, so they go there as one archive (ab.tgz) after every round.
out=$root/build/ab-runs
rm -rf "$out"
mkdir -p "$out" "${OUT:-$root/out}"
order=$ab/order
if [ -n "${AB_ONLY:-}" ]; then
  order=$out/order
  for want in $AB_ONLY; do awk -v w="$want" '$1 == w || $2 == w' "$ab/order"; done >"$order"
  [ -s "$order" ] || { echo "ab.sh: none of AB_ONLY=$AB_ONLY was built" >&2; exit 2; }
fi
mapfile -t hashes < <(cut -d' ' -f1 "$order")
# The table of the rounds done so far (best of them), printed after every round: a run cut short
# (a caller's timeout) still leaves the rounds it finished on stdout.
summarize() {
python3 - "$out" "$order" "$1" <<'EOF'
import json, sys
out, order, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
revs = [line.split() for line in open(order) if line.strip()]
best = {}  # (hash, shape, role) -> TFLOPS
shapes = []
for h, _ in revs:
    for r in range(1, rounds + 1):
        try:
            data = json.load(open(f"{out}/{h}_{r}.json"))
        except (OSError, ValueError):
            continue
        for shape in data["shapes"]:
            if tuple(shape["shape"]) not in shapes:
                shapes.append(tuple(shape["shape"]))
            for row in shape["rows"]:
                key = (h, tuple(shape["shape"]), row["role"])
                best[key] = max(best.get(key, 0.0), row["flops"] / row["ours_ms"] / 1e9)
base = revs[0][0]
for shape in shapes:
    print(f"\n(T,d,n,E,K) = {shape}: TFLOPS, best of {rounds} (ratio to {base})")
    roles = [k[2] for k in best if k[0] == base and k[1] == shape]
    print(f"  {'role':28s}" + "".join(f"{h + ' ' + rev:>24s}" for h, rev in revs))
    for role in roles:
        cells = []
        for h, _ in revs:
            v = best.get((h, shape, role))
            b = best.get((base, shape, role))
            cells.append(f"{v:9.1f} ({v / b:4.2f})".rjust(24) if v and b else "-".rjust(24))
        print(f"  {role:28s}" + "".join(cells))
EOF
}
for r in $(seq 1 "$rounds"); do
  for h in "${hashes[@]}"; do
    timeout 300 "$ab/$h/gemm_bench" --shapes "$shapes" --roles "$roles" ${AB_BENCH_ARGS:-} --json "$out/${h}_$r.json" >"$out/${h}_$r.log" 2>&1 ||
      echo "ab.sh: $h round $r failed (rc=$?), see $out/${h}_$r.log"
  done
  echo "== ab.sh: after round $r of $rounds =="
  summarize "$r"
  tar czf "${OUT:-$root/out}/ab.tgz" -C "$out" .
done
