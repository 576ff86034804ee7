"""The sonicmoe backend (CUDA ops of the extension) on a Hopper GPU: forward and every gradient
against the torch backend (fp32 oracle, tolerance from a bf16 torch run, see layer_data.py), the
routing and H exactly / per tensor, determinism, the inference forward, the memory contract,
torch.library.opcheck on both ops, torch.compile(fullgraph=True) of the module, CUDA-graph
capture and replay, 50 training steps against the torch backend's loss curve, and argument
errors. Skips (with the reason) without a Hopper GPU or without the built extension."""
import pytest
import torch
import torch.nn.functional as F

import sonicmoe
from sonicmoe import torch_backend as tb
from conftest import requires_sonicmoe
from layer_data import compare, forward_and_grads, make_layer, rel_err

pytestmark = requires_sonicmoe

BF16 = torch.bfloat16
DEV = "cuda"  # one name for the device, so the harness can be dry-run elsewhere
op_forward = lambda: torch.ops.sonicmoe.moe_forward.default  # noqa: E731  (resolved only when the extension loads)
op_backward = lambda: torch.ops.sonicmoe.moe_backward.default  # noqa: E731

# (T, d, n, E, K, routing, tile_m, rounding_mode, bias)
CONFIGS = [
    (512, 256, 128, 16, 4, "top_k", 128, "nearest", False),
    (512, 256, 128, 16, 4, "top_k", 128, "nearest", True),
    (257, 136, 72, 9, 3, "top_k", 128, "nearest", False),  # d, n not multiples of 64; odd T, E
    (64, 128, 64, 8, 1, "top_k", 128, "nearest", False),  # K = 1
    (100, 64, 32, 4, 4, "top_k", 128, "nearest", True),  # K = E
    (1, 64, 64, 8, 2, "top_k", 128, "nearest", False),  # T = 1
    (1024, 128, 64, 8, 2, "token_rounding", 128, "nearest", False),
    (1024, 128, 64, 8, 2, "token_rounding", 128, "up", True),
    (300, 128, 64, 8, 2, "token_rounding", 16, "down", False),
]
CONFIG_IDS = [f"T{c[0]}-d{c[1]}-n{c[2]}-E{c[3]}-K{c[4]}-{c[5]}{'-' + c[7] + str(c[6]) if c[5] != 'top_k' else ''}"
              f"{'-bias' if c[8] else ''}" for c in CONFIGS]


def layer_fns(K, routing, tile_m, mode):
    kw = dict(top_k=K, routing=routing, tile_m=tile_m, rounding_mode=mode)

    def ours(x, wr, w1, w2, b1=None, b2=None):
        return sonicmoe.moe_layer(x, wr, w1, w2, b1=b1, b2=b2, **kw)

    def torch_ref(x, wr, w1, w2, b1=None, b2=None):
        return tb.moe_layer(x, wr, w1, w2, b1=b1, b2=b2, **kw)

    return ours, torch_ref


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_forward_and_gradients_match_torch_backend(seed, config):
    T, d, n, E, K, routing, tile_m, mode, bias = config
    layer = make_layer(T, d, n, E, bias=bias, device=DEV)
    grad_out = torch.randn(T, d, device=DEV).to(BF16)
    ours_fn, ref_fn = layer_fns(K, routing, tile_m, mode)

    # Same routing as the oracle, exactly (logits are exact by construction, see layer_data.py).
    with torch.no_grad():
        _, routed = sonicmoe.moe_layer(layer["x"], layer["wr"], layer["w1"], layer["w2"], b1=layer.get("b1"),
                                       b2=layer.get("b2"), top_k=K, routing=routing, tile_m=tile_m,
                                       rounding_mode=mode, return_routing=True)
        _, expected = tb.moe_layer(*(layer[k].float() for k in ("x", "wr", "w1", "w2")), top_k=K, routing=routing,
                                   tile_m=tile_m, rounding_mode=mode, return_routing=True)
    tk = int(routed.expert_offsets[-1])
    assert tk == expected.token_idx.numel()
    assert torch.equal(routed.token_idx[:tk], expected.token_idx)
    assert torch.equal(routed.expert_idx[:tk], expected.expert_idx)
    assert torch.equal(routed.expert_offsets, expected.expert_offsets)
    torch.testing.assert_close(routed.scores[:tk], expected.scores, rtol=1e-5, atol=1e-7)
    if routing == "token_rounding":
        counts = routed.expert_offsets[1:] - routed.expert_offsets[:-1]
        assert torch.all(counts % tile_m == 0), counts

    out, grads = forward_and_grads(ours_fn, layer, grad_out)
    out32, grads32 = forward_and_grads(ref_fn, layer, grad_out, dtype=torch.float32)
    out16, grads16 = forward_and_grads(ref_fn, layer, grad_out)
    assert out.dtype == BF16 and out.shape == (T, d)
    table, failures = compare({"out": out, **grads}, {"out": out32, **grads32}, {"out": out16, **grads16})
    print(table)
    assert not failures, f"relative errors above tolerance for {failures}:\n{table}"


def test_saved_h_matches_reference(seed):
    T, d, n, E, K = 512, 256, 128, 16, 4
    L = make_layer(T, d, n, E, bias=True, device=DEV)
    outs = op_forward()(L["x"], L["wr"], L["w1"], L["b1"], L["w2"], L["b2"], None, None, None, K, "top_k", 128,
                        "nearest", False, True)
    h, offsets, gather = outs[1], outs[5].tolist(), outs[6].long()
    errs, errs16 = [], []
    h32, h16 = torch.empty(h.shape, device=DEV), torch.empty(h.shape, device=DEV, dtype=BF16)
    for e in range(E):
        rows = slice(offsets[e], offsets[e + 1])
        xe = L["x"][gather[rows]]
        h32[rows] = xe.float() @ L["w1"][e].float().t() + L["b1"][e].float()
        h16[rows] = xe @ L["w1"][e].t() + L["b1"][e]
    e_ours, e16 = rel_err(h, h32), rel_err(h16, h32)
    assert e_ours <= max(2 * e16, 5e-3), (e_ours, e16)


def test_general_routing_matches_torch_backend(seed):
    T, d, n, E = 300, 128, 64, 10
    L = make_layer(T, d, n, E, bias=True, device=DEV)
    del L["wr"]
    # 0..4 experts per token; expert 0 and E-1 never used; token 7 goes nowhere.
    g = torch.Generator().manual_seed(seed)
    tok, exp = [], []
    for t in range(T):
        count = 0 if t == 7 else int(torch.randint(0, 5, (1,), generator=g))
        experts = sorted((torch.randperm(E - 2, generator=g)[:count] + 1).tolist())
        tok += [t] * len(experts)
        exp += experts
    L["scores"] = torch.rand(len(tok), device=DEV) * 0.9 + 0.05
    tok_t = torch.tensor(tok, dtype=torch.int32, device=DEV)
    exp_t = torch.tensor(exp, dtype=torch.int32, device=DEV)
    grad_out = torch.randn(T, d, device=DEV).to(BF16)

    def ours(x, w1, w2, b1, b2, scores):
        return sonicmoe.moe_layer_general(x, w1, w2, tok_t, exp_t, scores, b1=b1, b2=b2)

    def ref(x, w1, w2, b1, b2, scores):
        return tb.moe_layer_general(x, w1, w2, tok_t, exp_t, scores, b1=b1, b2=b2)

    out, grads = forward_and_grads(ours, L, grad_out)
    out32, grads32 = forward_and_grads(ref, L, grad_out, dtype=torch.float32)
    out16, grads16 = forward_and_grads(ref, {**L, "scores": L["scores"]}, grad_out)
    assert torch.all(out[7] == 0)
    table, failures = compare({"out": out, **grads}, {"out": out32, **grads32}, {"out": out16, **grads16})
    print(table)
    assert not failures, f"relative errors above tolerance for {failures}:\n{table}"


def test_general_routing_all_tokens_on_one_expert(seed):
    T, d, n, E = 200, 64, 64, 4
    L = make_layer(T, d, n, E, device=DEV)
    tok = torch.arange(T, dtype=torch.int32, device=DEV)
    exp = torch.full((T,), 2, dtype=torch.int32, device=DEV)
    scores = torch.ones(T, device=DEV)
    with torch.no_grad():
        out = sonicmoe.moe_layer_general(L["x"], L["w1"], L["w2"], tok, exp, scores)
        ref = tb.moe_layer_general(L["x"].float(), L["w1"].float(), L["w2"].float(), tok, exp, scores)
    assert rel_err(out, ref) < 1e-2


def test_deterministic(seed):
    T, d, n, E, K = 512, 256, 128, 16, 4
    L = make_layer(T, d, n, E, bias=True, device=DEV)
    grad_out = torch.randn(T, d, device=DEV).to(BF16)
    fn = layer_fns(K, "token_rounding", 32, "nearest")[0]
    a_out, a = forward_and_grads(fn, L, grad_out)
    b_out, b = forward_and_grads(fn, L, grad_out)
    assert torch.equal(a_out, b_out)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_inference_forward_keeps_nothing_and_matches_training(seed):
    T, d, n, E, K = 256, 128, 64, 8, 2
    L = make_layer(T, d, n, E, device=DEV)
    outs = op_forward()(L["x"], L["wr"], L["w1"], None, L["w2"], None, None, None, None, K, "top_k", 128, "nearest",
                        True, True)
    assert all(t.shape[0] == 0 for t in outs[1:])
    with torch.no_grad():
        inference = sonicmoe.moe_layer(L["x"], L["wr"], L["w1"], L["w2"], top_k=K)
    training = sonicmoe.moe_layer(*(L[k].requires_grad_() for k in ("x", "wr", "w1", "w2")), top_k=K)
    assert torch.equal(inference, outs[0])
    assert torch.equal(inference, training.detach())


@pytest.mark.parametrize("routing", ["top_k", "token_rounding"])
def test_memory_contract_saves_x_h_scores_and_routing_only(seed, routing):
    T, d, n, E, K, tile_m = 512, 256, 128, 16, 4, 64
    L = {k: v.requires_grad_() for k, v in make_layer(T, d, n, E, bias=True, device=DEV).items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = sonicmoe.moe_layer(L["x"], L["wr"], L["w1"], L["w2"], b1=L["b1"], b2=L["b2"], top_k=K, routing=routing,
                                 tile_m=tile_m)
    weights = {L[k].data_ptr() for k in ("wr", "w1", "w2", "b1", "b2")}
    activations = [t for t in saved if t.data_ptr() not in weights]
    capacity = sonicmoe.routed_capacity(routing, T, E, K, tile_m)
    assert sum(t.numel() * t.element_size() for t in activations) == sonicmoe.saved_state_bytes(T, d, n, E, capacity)
    assert any(t.data_ptr() == L["x"].data_ptr() for t in activations), "x must be saved itself, not a copy"
    out.sum().backward()


# ---- opcheck ----------------------------------------------------------------------------------------

def op_args(variant):
    T, d, n, E, K = 200, 128, 64, 8, 2
    L = make_layer(T, d, n, E, bias=variant == "bias", device=DEV)
    b1, b2 = L.get("b1"), L.get("b2")
    if variant == "general":
        tok = torch.arange(T, dtype=torch.int32, device=DEV).repeat_interleave(2)
        exp = torch.stack([torch.arange(T) % E, (torch.arange(T) + 3) % E], 1).flatten().to(torch.int32).to(DEV)
        scores = torch.rand(2 * T, device=DEV)
        return (L["x"], None, L["w1"], b1, L["w2"], b2, tok, exp, scores, 1, "general", 128, "nearest", False, True)
    routing = "token_rounding" if variant == "token_rounding" else "top_k"
    return (L["x"], L["wr"], L["w1"], b1, L["w2"], b2, None, None, None, K, routing, 16, "nearest",
            variant == "inference", True)


@pytest.mark.parametrize("variant", ["top_k", "bias", "token_rounding", "general", "inference"])
def test_opcheck(seed, variant):
    args = op_args(variant)
    torch.library.opcheck(op_forward(), args)
    if variant == "inference":
        return
    outs = op_forward()(*args)
    grad_out = torch.randn_like(outs[0])
    x, wr, w1, b1, w2, b2 = args[:6]
    top_k, routing, tile_m, mode = args[9:13]
    torch.library.opcheck(op_backward(), (grad_out, x, wr, w1, b1, w2, b2, *outs[1:9], top_k, routing, tile_m, mode))


# ---- torch.compile, CUDA graphs, training ---------------------------------------------------------

@pytest.mark.parametrize("routing", ["top_k", "token_rounding"])
def test_torch_compile_module_fullgraph(seed, routing):
    torch._dynamo.reset()
    d, n, E, K = 128, 64, 8, 2
    moe = sonicmoe.MoE(E, K, d, n, add_bias=True, routing=routing, tile_m=32).to(DEV).to(BF16)
    compiled = torch.compile(moe, fullgraph=True)
    for shape in [(4, 128, d), (3, 100, d)]:  # a second token count: recompilation with symbolic T
        x = torch.randn(*shape, device=DEV).to(BF16)
        results = []
        for model in (moe, compiled):
            moe.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            out, aux = model(xi)
            (out.float().square().mean() + 0.1 * aux).backward()
            results.append([out, aux, xi.grad] + [p.grad for p in moe.parameters()])
        for name, eager, comp in zip(["out", "aux", "x"] + [k for k, _ in moe.named_parameters()], *results):
            assert rel_err(comp, eager) <= 1e-2, (shape, name, rel_err(comp, eager))
    torch._dynamo.reset()


@pytest.mark.parametrize("routing", ["top_k", "general"])
def test_cuda_graph_capture_and_replay(seed, routing):
    T, d, n, E, K = 256, 128, 64, 8, 2
    L = {k: v.requires_grad_() for k, v in make_layer(T, d, n, E, device=DEV).items()}
    grad_out = torch.randn(T, d, device=DEV).to(BF16)
    tok = torch.arange(T, dtype=torch.int32, device=DEV).repeat_interleave(2)
    exp = ((torch.arange(2 * T, device=DEV) * 3) % E).to(torch.int32)
    scores = torch.rand(2 * T, device=DEV).requires_grad_()

    def step():
        if routing == "top_k":
            inputs = [L["x"], L["wr"], L["w1"], L["w2"]]
            out = sonicmoe.moe_layer(*inputs, top_k=K)
        else:
            inputs = [L["x"], L["w1"], L["w2"], scores]
            out = sonicmoe.moe_layer_general(L["x"], L["w1"], L["w2"], tok, exp, scores)  # check skipped in capture
        return [out] + list(torch.autograd.grad(out, inputs, grad_out))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for _ in range(2):  # new data in the captured buffers each time
        with torch.no_grad():
            for v in L.values():
                v.copy_(torch.randn_like(v, dtype=torch.float32) * v.float().std())
            L["x"].copy_((L["x"].float() * 64).round().clamp(-255, 255) / 64)
            scores.copy_(torch.rand_like(scores))
        graph.replay()
        torch.cuda.synchronize()
        eager = step()
        for i, (a, b) in enumerate(zip(static, eager)):
            assert rel_err(a, b) <= 1e-3, (i, rel_err(a, b))


def test_training_50_steps_matches_torch_backend(seed):
    """fp32 master parameters; the sonicmoe backend computes in bf16, the oracle in fp32."""
    d, n, E, K, T, steps = 64, 64, 8, 2, 512, 50
    teacher = sonicmoe.MoE(E, K, d, n, backend="torch").to(DEV)
    data = []
    for _ in range(5):
        x = torch.randn(T, d, device=DEV)
        with torch.no_grad():
            data.append((x, teacher(x)[0]))
    init = sonicmoe.MoE(E, K, d, n, backend="torch").to(DEV).state_dict()
    curves = {}
    for backend in ("sonicmoe", "torch"):
        model = sonicmoe.MoE(E, K, d, n, backend=backend).to(DEV)
        model.load_state_dict(init)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        losses = []
        for step in range(steps):
            x, y = data[step % len(data)]
            out, aux = model(x)
            loss = F.mse_loss(out.float(), y) + 0.01 * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves[backend] = torch.tensor(losses)
    ours, ref = curves["sonicmoe"], curves["torch"]
    relative = (ours - ref).abs() / ref
    report = "\n".join(f"step {i:2d}: sonicmoe {a:.5f}  torch {b:.5f}  rel {r:.3f}"
                       for i, (a, b, r) in enumerate(zip(ours.tolist(), ref.tolist(), relative.tolist())))
    print(report)
    assert ref[-5:].mean() < 0.7 * ref[:5].mean(), "the oracle did not learn: the test is not informative\n" + report
    assert relative.max() <= 0.05 and relative.mean() <= 0.02, report


# ---- argument errors ----------------------------------------------------------------------------------

def test_argument_errors(seed):
    T, d, n, E, K = 64, 64, 32, 8, 2
    L = make_layer(T, d, n, E, device=DEV)
    x, wr, w1, w2 = L["x"], L["wr"], L["w1"], L["w2"]
    call = lambda **kw: sonicmoe.moe_layer(**{**dict(x=x, router_weight=wr, w1=w1, w2=w2, top_k=K), **kw})  # noqa: E731
    with pytest.raises(TypeError, match="'x' must have dtype"):
        call(x=x.float())
    with pytest.raises(ValueError, match="'w1' must be contiguous"):
        call(w1=w1.transpose(1, 2).contiguous().transpose(1, 2))
    with pytest.raises(ValueError, match="'w2' must have shape"):
        call(w2=torch.zeros(E, d, n + 8, device=DEV, dtype=BF16))
    with pytest.raises(ValueError, match="'router_weight' must have shape"):
        call(router_weight=wr[:-1].contiguous())
    with pytest.raises(ValueError, match="top_k"):
        call(top_k=E + 1)
    buffer = torch.zeros(T * d + 8, device=DEV, dtype=BF16)
    with pytest.raises(ValueError, match="'x' must start on a 16-byte boundary"):
        call(x=buffer[1:1 + T * d].view(T, d))
    with pytest.raises(ValueError, match="multiple of 8"):
        sonicmoe.moe_layer(torch.zeros(T, 12, device=DEV, dtype=BF16), torch.zeros(E, 12, device=DEV, dtype=BF16),
                           torch.zeros(E, 2 * n, 12, device=DEV, dtype=BF16),
                           torch.zeros(E, 12, n, device=DEV, dtype=BF16), top_k=K)
    with pytest.raises(ValueError, match="routing"):
        call(routing="expert_choice")
    with pytest.raises(ValueError, match="rounding_mode"):
        call(routing="token_rounding", rounding_mode="sideways")
    with pytest.raises(ValueError, match="together"):
        call(b1=torch.zeros(E, 2 * n, device=DEV, dtype=BF16))
    with pytest.raises(ValueError, match="backend='torch'"):
        call(x=x.cpu(), router_weight=wr.cpu(), w1=w1.cpu(), w2=w2.cpu())
    with pytest.raises(ValueError, match="'w1' must be a CUDA tensor"):
        call(w1=w1.cpu())


@pytest.mark.parametrize("tok,exp,match", [
    ([1, 0], [0, 1], "sorted"),
    ([0, 0], [3, 3], "twice"),
    ([0, 64], [0, 1], "token index outside"),
    ([0, 1], [0, 8], "expert index outside"),
])
def test_general_routing_list_errors(seed, tok, exp, match):
    T, d, n, E = 64, 64, 32, 8
    L = make_layer(T, d, n, E, device=DEV)
    tok = torch.tensor(tok, dtype=torch.int32, device=DEV)
    exp = torch.tensor(exp, dtype=torch.int32, device=DEV)
    scores = torch.full((2,), 0.5, device=DEV)
    with pytest.raises(ValueError, match=match):
        sonicmoe.moe_layer_general(L["x"], L["w1"], L["w2"], tok, exp, scores)
