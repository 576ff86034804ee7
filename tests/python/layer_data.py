"""Inputs and comparison helpers shared by the GPU tests (importable without a GPU).

Equal routing on every side. The sonicmoe kernels compute the router logits with cuBLAS (fp32
accumulation of bf16 products), the torch backend in fp32 with another summation order; a near
tie would let them pick different experts and make the comparison meaningless. As in
tests/cpp/gpu/test_moe_layer.cpp, x is drawn from N(0, 1) rounded to multiples of 2^-6 (|x| < 4)
and every router row has 64 non-zeros that are multiples of 2^-10: every product and partial sum
of x·Wrᵀ is exact in fp32 (and bf16 holds the inputs exactly), so all sides see bit-identical
logits and the same ties, broken by expert index. The expert weights are at realistic scale,
N(0, 1/fan_in); biases N(0, 0.1^2).

Tolerance (DESIGN.md §6): per tensor, the relative Frobenius error of the sonicmoe result
against the fp32 torch backend must be at most 2x the error of the torch backend run in bf16
(the straightforward bf16 implementation of the same math), with a floor of 5e-3 (a few bf16
roundings, 2^-9 each; a wrong formula gives errors of order 1e-1 to 1).
"""
import torch

FACTOR = 2.0
FLOOR = 5e-3


def make_layer(T, d, n, E, *, bias=False, device="cuda", generator=None):
    """bf16 tensors of one layer: x, wr, w1, w2 (and b1, b2)."""
    g = generator
    x = ((torch.randn(T, d, generator=g) * 64).round().clamp(-255, 255) / 64)
    wr = torch.zeros(E, d)
    nnz = min(64, d)
    for e in range(E):
        cols = torch.randperm(d, generator=g)[:nnz]
        wr[e, cols] = (torch.randn(nnz, generator=g) * 64).round().clamp(-127, 127) / 1024
    layer = dict(x=x, wr=wr, w1=torch.randn(E, 2 * n, d, generator=g) * d ** -0.5,
                 w2=torch.randn(E, d, n, generator=g) * n ** -0.5)
    if bias:
        layer.update(b1=torch.randn(E, 2 * n, generator=g) * 0.1, b2=torch.randn(E, d, generator=g) * 0.1)
    return {k: v.to(device=device, dtype=torch.bfloat16).contiguous() for k, v in layer.items()}


def rel_err(a, ref):
    a, ref = a.detach().double(), ref.detach().double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def forward_and_grads(fn, inputs, grad_out, dtype=None):
    """out and the gradients of <out, grad_out> w.r.t. every input, on fresh leaves (cast to dtype)."""
    leaves = {k: v.detach().to(dtype or v.dtype).clone().requires_grad_(v.is_floating_point())
              for k, v in inputs.items()}
    out = fn(**leaves)
    names = [k for k, v in leaves.items() if v.requires_grad]
    grads = torch.autograd.grad(out, [leaves[k] for k in names], grad_out.to(out.dtype), allow_unused=True)
    return out.detach(), {k: g for k, g in zip(names, grads)}


def compare(results, ref32, ref16, label=""):
    """results/ref32/ref16: dicts name -> tensor. Returns (table, failures)."""
    lines, failures = [], []
    for name in ref32:
        if ref32[name] is None:
            continue
        ours, e16 = rel_err(results[name], ref32[name]), rel_err(ref16[name], ref32[name])
        tol = max(FACTOR * e16, FLOOR)
        ok = ours <= tol  # NaN fails
        lines.append(f"{label}{name:>8s}: sonicmoe {ours:.2e}  bf16 torch {e16:.2e}  tol {tol:.2e}  {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(name)
    return "\n".join(lines), failures
