"""PyTorch baselines for the six expert GEMM roles (issue 3's benchmark).

For each shape (T, d, n, E, K) with uniform random top-K routing, times on the current GPU:
  - torch.nn.functional.grouped_mm (or torch._grouped_mm on older builds) on the contiguous
    grouped problem, alone, with the separate gather where our kernel fuses one, and with the
    gather and the activation (SwiGLU after up-proj; dSwiGLU, A' and dS after dH) where our
    kernel fuses both (the "same work" path; for dH, docs/performance.md reports the ratio
    against both it and the gather + grouped_mm path, and counts the latter), and
  - a dense cuBLAS GEMM (torch.mm) with the same FLOPs,
as medians of CUDA-event timings after warm-up, rotating several input sets so the L2 cache does
not flatter the numbers. Prints a table and writes JSON. Run on the device machine:
    python3 bench/grouped_mm_baseline.py --json $OUT/grouped_mm.json
"""
import argparse
import json
import statistics
import time

import torch

SHAPES = [(24576, 1536, 256, 128, 8), (32768, 4096, 512, 128, 8), (32768, 4096, 1024, 128, 8)]


def grouped_mm(a, b, offs):
    fn = getattr(torch.nn.functional, "grouped_mm", None)
    if fn is not None:
        return fn(a, b, offs=offs)
    return torch._grouped_mm(a, b, offs=offs)


def median_ms(fn, warmup=5, reps=30, sustain_ms=0.0):
    """Median of `reps` CUDA-event timings after `warmup` runs; with sustain_ms > 0, after running
    fn back to back for that long first, so it is timed at the GPU's steady power-limited clock
    (as gemm_bench --sustain-ms; bench/bench_util.cuh says why)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start_s = time.perf_counter()
    while (time.perf_counter() - start_s) * 1e3 < sustain_ms:
        for _ in range(8):
            fn()
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def routing(T, E, K, gen):
    logits = torch.randn(T, E, device="cuda", generator=gen)
    experts = logits.topk(K, dim=1).indices.flatten().to(torch.int32)  # flat slot t*K+k
    order = torch.sort(experts.long() * T + torch.arange(T * K, device="cuda") // K, stable=True).indices
    gather = (order // K).to(torch.int32)  # grouped row -> token
    counts = torch.bincount(experts, minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)  # grouped_mm takes inclusive ends
    return gather, offs


def bench_shape(T, d, n, E, K, sets=3, reps=30, sustain_ms=0.0):
    gen = torch.Generator(device="cuda").manual_seed(0)
    bf = torch.bfloat16
    TK = T * K
    inputs = []
    for _ in range(sets):
        gather, offs = routing(T, E, K, gen)
        inputs.append(dict(
            x=torch.randn(T, d, device="cuda", dtype=bf),
            dout=torch.randn(T, d, device="cuda", dtype=bf),
            w1=torch.randn(E, 2 * n, d, device="cuda", dtype=bf) / d**0.5,
            w2=torch.randn(E, d, n, device="cuda", dtype=bf) / n**0.5,
            a=torch.randn(TK, n, device="cuda", dtype=bf),
            dh=torch.randn(TK, 2 * n, device="cuda", dtype=bf),
            xg=torch.randn(TK, d, device="cuda", dtype=bf),
            scores=torch.rand(TK, device="cuda"),
            gather=gather.long(), offs=offs))
    it = [0]

    def cur():
        it[0] = (it[0] + 1) % sets
        return inputs[it[0]]

    def swiglu(h):
        return torch.nn.functional.silu(h[:, 0::2]) * h[:, 1::2]

    def dswiglu(da, h, s):
        # What our dH kernel's epilogue writes besides the GEMM (epilogue_dswiglu.cuh), from the
        # GEMM's dA' = da and the saved pre-activation h (interleaved gate, up): dH, A' = s * A
        # and dS = rowsum(dA' * A), in fp32 as our kernel computes them.
        g, u, da = h[:, 0::2].float(), h[:, 1::2].float(), da.float()
        sig = torch.sigmoid(g)
        silu = g * sig
        a = silu * u
        ds = (da * a).sum(-1)
        da = da * s[:, None]
        dh = torch.stack((da * u * sig * (1 + g * (1 - sig)), da * silu), -1).flatten(1).to(h.dtype)
        return dh, (a * s[:, None]).to(h.dtype), ds

    roles = {
        # name: (flops, {variant: fn})
        "up_proj": (2 * TK * d * 2 * n, {
            "grouped_mm": lambda: (lambda s: grouped_mm(s["xg"], s["w1"].transpose(-2, -1), s["offs"]))(cur()),
            "gather+grouped_mm+swiglu": lambda: (lambda s: swiglu(grouped_mm(s["x"][s["gather"]], s["w1"].transpose(-2, -1), s["offs"])))(cur()),
        }),
        "down_proj": (2 * TK * n * d, {
            "grouped_mm": lambda: (lambda s: grouped_mm(s["a"], s["w2"].transpose(-2, -1), s["offs"]))(cur()),
        }),
        "dH": (2 * TK * d * n, {
            "grouped_mm": lambda: (lambda s: grouped_mm(s["xg"], s["w2"], s["offs"]))(cur()),
            "gather+grouped_mm": lambda: (lambda s: grouped_mm(s["dout"][s["gather"]], s["w2"], s["offs"]))(cur()),
            "gather+grouped_mm+dswiglu": lambda: (lambda s: dswiglu(
                grouped_mm(s["dout"][s["gather"]], s["w2"], s["offs"]), s["dh"], s["scores"]))(cur()),
        }),
        "dW2": (2 * TK * d * n, {
            "grouped_mm": lambda: (lambda s: grouped_mm(s["xg"].t(), s["a"], s["offs"]))(cur()),
            "gather+grouped_mm": lambda: (lambda s: grouped_mm(s["dout"][s["gather"]].t(), s["a"], s["offs"]))(cur()),
        }),
        "dX": (2 * TK * 2 * n * d, {
            "grouped_mm": lambda: (lambda s: grouped_mm(s["dh"], s["w1"], s["offs"]))(cur()),
        }),
        "dW1": (2 * TK * 2 * n * d, {
            "grouped_mm": lambda: (lambda s: grouped_mm(s["dh"].t(), s["xg"], s["offs"]))(cur()),
            "gather+grouped_mm": lambda: (lambda s: grouped_mm(s["dh"].t(), s["x"][s["gather"]], s["offs"]))(cur()),
        }),
    }
    # Dense cuBLAS with the FLOPs of the role: [TK, k] x [k, m].
    dense_shapes = {"up_proj": (TK, d, 2 * n), "down_proj": (TK, n, d), "dH": (TK, d, n), "dW2": (d, TK, n),
                    "dX": (TK, 2 * n, d), "dW1": (2 * n, TK, d)}
    rows = []
    for role, (flops, variants) in roles.items():
        m, k, nn = dense_shapes[role]
        a = torch.randn(m, k, device="cuda", dtype=bf)
        b = torch.randn(k, nn, device="cuda", dtype=bf)
        variants = dict(variants, **{"dense_cublas": lambda: torch.mm(a, b)})
        for name, fn in variants.items():
            try:
                ms = median_ms(fn, reps=reps, sustain_ms=sustain_ms)
                rows.append(dict(role=role, variant=name, ms=ms, tflops=flops / ms * 1e-9))
            except Exception as exc:  # an unsupported layout on this torch build: say so, go on
                rows.append(dict(role=role, variant=name, error=f"{type(exc).__name__}: {exc}"[:200]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default="all", help="all or comma list of indices into SHAPES")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--sustain-ms", type=float, default=0.0,
                    help="run each variant back to back this long before timing it (steady clock)")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    card = torch.cuda.get_device_name()
    shapes = SHAPES if args.shapes == "all" else [SHAPES[int(i)] for i in args.shapes.split(",")]
    result = dict(card=card, torch=torch.__version__, reps=args.reps, sustain_ms=args.sustain_ms, shapes=[])
    print(f"card: {card}  torch {torch.__version__}  median of {args.reps} runs, sustain {args.sustain_ms:.0f} ms")
    for shape in shapes:
        rows = bench_shape(*shape, reps=args.reps, sustain_ms=args.sustain_ms)
        result["shapes"].append(dict(shape=shape, rows=rows))
        print(f"\n(T,d,n,E,K) = {shape}")
        for r in rows:
            if "error" in r:
                print(f"  {r['role']:10s} {r['variant']:28s} ERROR {r['error']}")
            else:
                print(f"  {r['role']:10s} {r['variant']:28s} {r['ms']:8.3f} ms {r['tflops']:7.1f} TFLOPS")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
