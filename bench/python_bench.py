"""The PyTorch layer side by side with two PyTorch MoEs, at the 12 configurations of DESIGN.md §5.

Backends, all bf16, SwiGLU, top-K routing (router included in the timed region):
  sonicmoe    sonicmoe.moe_layer (the extension's CUDA kernels)
  torch       sonicmoe.torch_backend.moe_layer (pure PyTorch, one GEMM pair per expert; the oracle)
  grouped_mm  a torch.nn.functional.grouped_mm MoE: router + topk + softmax, a separate gather of
              x into grouped order, grouped_mm up-proj, SwiGLU, grouped_mm down-proj, un-permute
              and the score-weighted sum over K (the usual "fast PyTorch" MoE)
For each: forward and forward+backward (gradients of x, router weight, W1, W2) time (median of
--reps CUDA-event timings after --warmup; with --sustain-ms N each timed function first runs back to
back for N ms, so it is timed at the GPU's steady power-limited clock as a training job sees it),
TFLOPS with the model-FLOP convention of DESIGN.md §5
(forward 6·TK·d·n, forward+backward 18·TK·d·n), and peak memory above the inputs
(torch.cuda.max_memory_allocated) of the forward (graph kept for a backward) and of
forward+backward. Writes python_bench.md (table), python_bench.json and python_bench.png (when
matplotlib is importable) into --out, with the card, date, torch version and git commit.

    python3 bench/python_bench.py --out bench/results/python            # all 12 configurations
    python3 bench/python_bench.py --configs 3 --backends sonicmoe,grouped_mm --out /tmp/b
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import sonicmoe  # noqa: E402  (the installed package when there is one)
from sonicmoe import torch_backend  # noqa: E402
from grouped_mm_baseline import median_ms  # noqa: E402  (bench/: CUDA-event median after warm-up)

# (name, T, d, n, E, K, paper fwd TFLOPS, paper bwd TFLOPS) — DESIGN.md §5, H100 SXM
CONFIGS = [
    ("1.4B", 40960, 768, 256, 128, 8, 336, 364),
    ("1.4B", 40960, 768, 512, 64, 4, 396, 396),
    ("1.4B", 40960, 768, 1024, 32, 2, 404, 434),
    ("7B", 24576, 1536, 256, 128, 8, 364, 404),
    ("7B", 24576, 1536, 512, 64, 4, 432, 439),
    ("7B", 24576, 1536, 1024, 32, 2, 464, 466),
    ("30B", 32768, 4096, 256, 256, 16, 428, 460),
    ("30B", 32768, 4096, 512, 128, 8, 502, 511),
    ("30B", 32768, 4096, 1024, 64, 4, 552, 554),
    ("120B", 32768, 4096, 512, 256, 16, 518, 526),
    ("120B", 32768, 4096, 1024, 128, 8, 558, 567),
    ("120B", 32768, 4096, 2048, 64, 4, 595, 586),
]
TARGET_CONFIG, TARGET_SPEEDUP = 3, 1.8  # issue 5: >= 1.8x the grouped_mm MoE fwd+bwd at 7B n=256
BACKENDS = ("sonicmoe", "torch", "grouped_mm")
GIB = 1024 ** 3


def grouped_mm(a, b, offs):
    fn = getattr(F, "grouped_mm", None)
    return fn(a, b, offs=offs) if fn is not None else torch._grouped_mm(a, b, offs=offs)


def grouped_mm_moe(x, router_weight, w1, w2, *, top_k, **unused):
    num_tokens, hidden = x.shape
    num_experts = w1.shape[0]
    logits = F.linear(x, router_weight).float()
    top_logits, experts = logits.topk(top_k, dim=-1)
    scores = torch.softmax(top_logits, dim=-1)
    flat_experts = experts.flatten()
    order = torch.argsort(flat_experts, stable=True)  # grouped row -> flat slot (t*K + k)
    offs = torch.cumsum(torch.bincount(flat_experts, minlength=num_experts), 0).to(torch.int32)
    h = grouped_mm(x[order // top_k], w1.transpose(-2, -1), offs)
    a = F.silu(h[:, 0::2]) * h[:, 1::2]
    y = grouped_mm(a, w2.transpose(-2, -1), offs)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    y = y[inverse].view(num_tokens, top_k, hidden)
    return (y.float() * scores.unsqueeze(-1)).sum(1).to(x.dtype)


LAYERS = {"sonicmoe": sonicmoe.moe_layer, "torch": torch_backend.moe_layer, "grouped_mm": grouped_mm_moe}


def peak_gib(fn):
    """Peak allocated memory above what was allocated before fn, in GiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / GIB
    del result
    return peak


def bench_config(index, backends, routing, tile_m, warmup, reps, sustain_ms):
    name, T, d, n, E, K, paper_fwd, paper_bwd = CONFIGS[index]
    gen = torch.Generator(device="cuda").manual_seed(index)
    bf = torch.bfloat16
    x = torch.randn(T, d, device="cuda", generator=gen).to(bf).requires_grad_()
    wr = (torch.randn(E, d, device="cuda", generator=gen) * d ** -0.5).to(bf).requires_grad_()
    w1 = (torch.randn(E, 2 * n, d, device="cuda", generator=gen) * d ** -0.5).to(bf).requires_grad_()
    w2 = (torch.randn(E, d, n, device="cuda", generator=gen) * n ** -0.5).to(bf).requires_grad_()
    grad_out = torch.randn(T, d, device="cuda", generator=gen).to(bf)
    inputs = [x, wr, w1, w2]
    rows = []
    for backend in backends:
        layer = LAYERS[backend]
        kwargs = dict(top_k=K)
        if backend != "grouped_mm" and routing == "token_rounding":
            kwargs.update(routing="token_rounding", tile_m=tile_m)
        row = dict(config=index, model=name, T=T, d=d, n=n, E=E, K=K, backend=backend,
                   routing=routing if backend != "grouped_mm" else "top_k")
        try:
            tk = T * K
            if "routing" in kwargs:  # count only real rows (DESIGN.md §5)
                with torch.no_grad():
                    tk = int(layer(x, wr, w1, w2, return_routing=True, **kwargs)[1].expert_offsets[-1])
            forward = lambda: layer(x, wr, w1, w2, **kwargs)  # noqa: E731
            forward_backward = lambda: torch.autograd.grad(forward(), inputs, grad_out)  # noqa: E731
            fwd_ms = median_ms(forward, warmup, reps, sustain_ms)
            step_ms = median_ms(forward_backward, warmup, reps, sustain_ms)
            row.update(TK=tk, fwd_ms=fwd_ms, fwd_bwd_ms=step_ms,
                       fwd_tflops=6 * tk * d * n / fwd_ms * 1e-9, fwd_bwd_tflops=18 * tk * d * n / step_ms * 1e-9,
                       peak_fwd_gib=peak_gib(forward), peak_fwd_bwd_gib=peak_gib(forward_backward))
            if backend == "sonicmoe":
                capacity = sonicmoe.routed_capacity(kwargs.get("routing", "top_k"), T, E, K, tile_m)
                row["cached_gib"] = sonicmoe.saved_state_bytes(T, d, n, E, capacity) / GIB
                row.update(paper_fwd_tflops=paper_fwd, paper_bwd_tflops=paper_bwd)
        except torch.cuda.OutOfMemoryError:
            row["error"] = "out of memory"
        except Exception as exc:  # report and go on with the other backends
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        torch.cuda.empty_cache()
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(r):
    head = f"[{r['config']:2d}] {r['model']:4s} T={r['T']:<5d} d={r['d']:<4d} n={r['n']:<4d} E={r['E']:<3d} K={r['K']:<2d} {r['backend']:10s}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    return (f"{head} fwd {r['fwd_tflops']:6.1f} fwd+bwd {r['fwd_bwd_tflops']:6.1f} TFLOPS "
            f"({r['fwd_ms']:.2f} / {r['fwd_bwd_ms']:.2f} ms)  peak fwd {r['peak_fwd_gib']:.2f} GiB "
            f"fwd+bwd {r['peak_fwd_bwd_gib']:.2f} GiB")


def markdown(result):
    lines = [f"Python layer benchmark — {result['card']}, {result['date']}, torch {result['torch']}, "
             f"commit {result['commit']}, routing {result['routing']}, "
             + (f"timed after {result['sustain_ms']:g} ms back to back (steady clock)" if result.get("sustain_ms")
                else f"timed after {result['warmup']} warm-up runs")
             + ("" if result.get("complete", True) else " (incomplete run: the rows measured so far)"), "",
             "| model | T | d | n | E | K | backend | fwd TFLOPS | fwd+bwd TFLOPS | fwd ms | fwd+bwd ms | peak fwd GiB | peak fwd+bwd GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [r["model"], r["T"], r["d"], r["n"], r["E"], r["K"], r["backend"]]
        if "error" in r:
            cells += [r["error"]] + [""] * 5
        else:
            cells += [f"{r['fwd_tflops']:.1f}", f"{r['fwd_bwd_tflops']:.1f}", f"{r['fwd_ms']:.2f}",
                      f"{r['fwd_bwd_ms']:.2f}", f"{r['peak_fwd_gib']:.2f}", f"{r['peak_fwd_bwd_gib']:.2f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if result.get("speedups"):
        lines += ["", "sonicmoe / grouped_mm, forward+backward: " +
                  ", ".join(f"[{k}] {v:.2f}x" for k, v in result["speedups"].items())]
    if result.get("target"):
        lines += [result["target"]]
    return "\n".join(lines) + "\n"


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("python_bench: matplotlib is not installed: no plot written")
        return False
    configs = sorted({r["config"] for r in result["rows"]})
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in result["rows"])]
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.0 * len(configs)), 8))
    width = 0.8 / len(backends)
    for ax, key, title in zip(axes, ("fwd_tflops", "fwd_bwd_tflops"), ("forward", "forward+backward")):
        for i, b in enumerate(backends):
            values = [next((r.get(key, 0.0) for r in result["rows"] if r["config"] == c and r["backend"] == b), 0.0)
                      for c in configs]
            ax.bar([j + i * width for j in range(len(configs))], values, width, label=b)
        ax.set_xticks([j + width * (len(backends) - 1) / 2 for j in range(len(configs))])
        ax.set_xticklabels([f"{CONFIGS[c][0]}\nn={CONFIGS[c][3]}" for c in configs], fontsize=8)
        ax.set_ylabel("TFLOPS")
        ax.set_title(f"{title} ({result['routing']})")
        ax.legend(fontsize=8)
    fig.suptitle(f"sonicmoe PyTorch layer — {result['card']}, {result['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def git_commit():
    if os.environ.get("SONICMOE_COMMIT"):  # a copy of the tree whose .git is stale or absent
        return os.environ["SONICMOE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for python_bench.{md,json,png}")
    ap.add_argument("--configs", default="all", help="all, or comma-separated indices 0-11 into DESIGN.md §5")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--routing", default="top_k", choices=["top_k", "token_rounding"],
                    help="routing of the sonicmoe and torch backends (grouped_mm is always top-K)")
    ap.add_argument("--tile-m", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--sustain-ms", type=float, default=0.0,
                    help="run each timed function back to back this long before timing it (the steady clock)")
    args = ap.parse_args()
    if args.sustain_ms < 0:
        sys.exit(f"python_bench: --sustain-ms must be >= 0, got {args.sustain_ms}")
    if not torch.cuda.is_available():
        sys.exit("python_bench: no CUDA device")
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in BACKENDS:
            sys.exit(f"python_bench: unknown backend {b!r} (choose from {BACKENDS})")
    if "sonicmoe" in backends and not sonicmoe.extension_available():
        sys.exit(f"python_bench: sonicmoe extension not available: {sonicmoe.extension_error()}")
    torch.backends.cuda.matmul.allow_tf32 = False
    configs = list(range(len(CONFIGS))) if args.configs == "all" else [int(c) for c in args.configs.split(",")]
    result = dict(card=torch.cuda.get_device_name(), date=datetime.date.today().isoformat(), torch=torch.__version__,
                  commit=git_commit(), routing=args.routing, warmup=args.warmup, reps=args.reps,
                  sustain_ms=args.sustain_ms, rows=[])
    print(f"card: {result['card']}  date {result['date']}  torch {result['torch']}  commit {result['commit']}  "
          f"sustain_ms {result['sustain_ms']:g}")
    os.makedirs(args.out, exist_ok=True)
    for c in configs:
        result["rows"] += bench_config(c, backends, args.routing, args.tile_m, args.warmup, args.reps, args.sustain_ms)
        write_results(result, args.out, final=False)  # a run cut short still leaves its rows
    table = write_results(result, args.out, final=True)
    print("\n" + table)
    if plot(result, os.path.join(args.out, "python_bench.png")):
        print(f"python_bench: plot written to {os.path.join(args.out, 'python_bench.png')}")


def write_results(result, out, final):
    """python_bench.json and .md in `out`, with the speedups over grouped_mm measured so far."""
    configs = sorted({r["config"] for r in result["rows"]})
    speedups = {}
    for c in configs:
        ours = next((r for r in result["rows"] if r["config"] == c and r["backend"] == "sonicmoe" and "error" not in r), None)
        base = next((r for r in result["rows"] if r["config"] == c and r["backend"] == "grouped_mm" and "error" not in r), None)
        if ours and base:
            speedups[c] = base["fwd_bwd_ms"] / ours["fwd_bwd_ms"]
    result["speedups"] = speedups
    result["complete"] = final
    if TARGET_CONFIG in speedups:
        s = speedups[TARGET_CONFIG]
        result["target"] = (f"target (issue 5): >= {TARGET_SPEEDUP}x the grouped_mm MoE forward+backward at config "
                            f"{TARGET_CONFIG}: {s:.2f}x -> {'met' if s >= TARGET_SPEEDUP else 'NOT met'}")
    with open(os.path.join(out, "python_bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    table = markdown(result)
    with open(os.path.join(out, "python_bench.md"), "w") as f:
        f.write(table)
    return table


if __name__ == "__main__":
    main()
