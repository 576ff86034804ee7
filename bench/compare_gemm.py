"""Issue 3's comparison table: our grouped-GEMM roles (gemm_bench --json) against PyTorch's path
for the same work (grouped_mm_baseline.py --json) and a dense cuBLAS GEMM of the same FLOPs.

The PyTorch path of a role is grouped_mm plus the separate gather where our kernel fuses one
(up-proj also adds its SwiGLU, as ours does). For dH both paths are shown: the target counts the
gather + grouped_mm one (its dSwiGLU epilogue, unfused, costs PyTorch far more). Both files must
come from the same device call (numbers of different calls differ by a few percent) and, for a
fair ratio, the same --reps and --sustain-ms.
    python3 bench/compare_gemm.py gemm_bench.json grouped_mm.json
"""
import json
import sys

# role prefix in gemm_bench's JSON -> (role in the baseline's JSON, [PyTorch path variants]);
# the first variant is the one the 1.1x target counts.
ROLES = [
    ("up_proj", "up_proj", ["gather+grouped_mm+swiglu"]),
    ("down_proj", "down_proj", ["grouped_mm"]),
    ("dH", "dH", ["gather+grouped_mm", "gather+grouped_mm+dswiglu"]),
    ("dW2", "dW2", ["gather+grouped_mm"]),
    ("dX", "dX", ["grouped_mm"]),
    ("dW1", "dW1", ["gather+grouped_mm"]),
]


def main(ours_path, base_path):
    ours, base = json.load(open(ours_path)), json.load(open(base_path))
    for key in ("reps", "sustain_ms"):
        if ours.get(key) != base.get(key):
            print(f"note: {key} differs: gemm_bench {ours.get(key)}, baseline {base.get(key)}")
    base_by_shape = {tuple(s["shape"]): s["rows"] for s in base["shapes"]}
    print(f"card: {ours['card']}; sustain_ms {ours.get('sustain_ms', 0)}; TFLOPS (ratio = ours / PyTorch path)")
    below = 0
    for shape in ours["shapes"]:
        key = tuple(shape["shape"])
        rows = base_by_shape.get(key)
        if rows is None:
            print(f"\n{key}: not in the baseline file")
            continue
        print(f"\n(T,d,n,E,K) = {key}")
        print(f"  {'role':26s} {'ours':>7s}  {'PyTorch path':>33s} {'ratio':>6s}  {'dense cuBLAS':>12s}")
        for prefix, base_role, variants in ROLES:
            mine = next((r for r in shape["rows"] if r["role"].startswith(prefix)), None)
            if mine is None or mine.get("ours_ms", -1) <= 0:
                continue
            ours_tflops = mine["flops"] / mine["ours_ms"] * 1e-9
            dense = mine["flops"] / mine["cublas_dense_ms"] * 1e-9
            for i, variant in enumerate(variants):
                ref = next((r for r in rows if r["role"] == base_role and r["variant"] == variant and "ms" in r), None)
                if ref is None:
                    print(f"  {mine['role']:26s} {ours_tflops:7.1f}  {variant + ': missing':>33s}")
                    continue
                ratio = ref["ms"] / mine["ours_ms"]
                counted = i == 0
                below += counted and ratio < 1.1
                label = mine["role"] if i == 0 else ""
                # Marked where it counts below 1.1 (a 1.098 prints as 1.10).
                mark = ("  < 1.1" if ratio < 1.1 else "") if counted else "  (not counted)"
                print(f"  {label:26s} {ours_tflops:7.1f}  {variant:>25s} {ref['tflops']:7.1f}  {ratio:5.2f}x"
                      f"  {dense:10.1f}{mark}")
    print(f"\nrows below 1.1x the PyTorch path: {below}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
