"""The pure-PyTorch backend (sonicmoe.torch_backend, MoE(backend="torch")) on CPU: routing
invariants, token rounding against a straightforward per-expert loop of the rules, the layer
against a per-token loop in float64, gradients by finite differences, and the module's API."""
import math

import pytest
import torch
import torch.nn.functional as F

import sonicmoe
from sonicmoe import torch_backend as tb


# ---- top-K ------------------------------------------------------------------------------------

def test_top_k_scores_are_softmax_of_the_k_largest(seed):
    T, E, K = 64, 12, 3
    logits = torch.randn(T, E)
    tok, exp, scores = tb.route_top_k(logits, K)
    assert tok.dtype == exp.dtype == torch.int32 and scores.dtype == torch.float32
    assert torch.equal(tok, torch.arange(T, dtype=torch.int32).repeat_interleave(K))
    exp, scores = exp.view(T, K).long(), scores.view(T, K)
    torch.testing.assert_close(scores.sum(1), torch.ones(T))
    # The chosen logits are the K largest and come in descending order.
    chosen = logits.gather(1, exp)
    assert torch.all(chosen[:, :-1] >= chosen[:, 1:])
    kth = chosen[:, -1:]
    others = logits.masked_fill(F.one_hot(exp, E).sum(1).bool(), -math.inf)
    assert torch.all(others.max(1, keepdim=True).values <= kth)
    torch.testing.assert_close(scores, torch.softmax(chosen, dim=1))
    assert len(set(map(tuple, exp.tolist()))) > 1  # not a degenerate draw


def test_top_k_ties_go_to_the_lower_expert():
    logits = torch.zeros(3, 6)
    logits[1] = torch.tensor([1.0, 2.0, 2.0, 0.5, 2.0, 2.0])
    logits[2] = torch.tensor([3.0, 1.0, 1.0, 1.0, 3.0, 1.0])
    _, exp, scores = tb.route_top_k(logits, 3)
    assert exp.view(3, 3).tolist() == [[0, 1, 2], [1, 2, 4], [0, 4, 1]]
    torch.testing.assert_close(scores.view(3, 3)[0], torch.full((3,), 1 / 3))


def test_top_k_rejects_k_above_e():
    with pytest.raises(ValueError, match="top_k"):
        tb.route_top_k(torch.randn(4, 3), 4)


# ---- token rounding -----------------------------------------------------------------------------

def token_rounding_loop(logits, K, M, mode):
    """The rules of DESIGN.md §3 / sonicmoe/routing.h written as a plain loop over experts (float64)."""
    logits = logits.double()
    T, E = logits.shape
    prob = torch.softmax(logits, 1)
    chosen, score = {}, {}
    for t in range(T):
        order = sorted(range(E), key=lambda e: (-logits[t, e].item(), e))[:K]
        s = torch.softmax(logits[t, order], 0)
        for k, e in enumerate(order):
            chosen[(t, e)] = True
            score[(t, e)] = s[k].item()
    for e in range(E):
        members = [t for t in range(T) if chosen.get((t, e))]
        others = [t for t in range(T) if not chosen.get((t, e))]
        over = len(members) % M
        if over == 0:
            continue
        missing = M - over
        pad = mode == "up" or (mode == "nearest" and missing < over)
        if pad and len(others) < missing:
            pad = False
        if pad:
            for t in sorted(others, key=lambda t: (-prob[t, e].item(), t))[:missing]:
                chosen[(t, e)] = True
                score[(t, e)] = prob[t, e].item()
        else:
            for t in sorted(members, key=lambda t: (score[(t, e)], -t))[:over]:
                del chosen[(t, e)]
    entries = sorted(k for k, v in chosen.items() if v)
    return entries, [score[k] for k in entries]


@pytest.mark.parametrize("mode", ["nearest", "up", "down"])
@pytest.mark.parametrize("T,E,K,M", [(300, 8, 2, 16), (97, 5, 3, 8), (40, 6, 2, 32), (7, 4, 4, 3)])
def test_token_rounding_matches_the_rules(seed, mode, T, E, K, M):
    logits = torch.randn(T, E) * 2
    tok, exp, scores = tb.route_token_rounding(logits, K, M, mode)
    expected, expected_scores = token_rounding_loop(logits, K, M, mode)
    assert list(zip(tok.tolist(), exp.tolist())) == expected
    torch.testing.assert_close(scores.double(), torch.tensor(expected_scores, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    assert len(expected) <= sonicmoe.token_rounding_capacity(T, E, K, M)


@pytest.mark.parametrize("mode", ["nearest", "up", "down"])
def test_token_rounding_invariants(seed, mode):
    T, E, K, M = 500, 8, 2, 32
    logits = torch.randn(T, E)
    tok_k, exp_k, _ = tb.route_top_k(logits, K)
    tok, exp, scores = tb.route_token_rounding(logits, K, M, mode)
    before = torch.bincount(exp_k.long(), minlength=E)
    after = torch.bincount(exp.long(), minlength=E)
    assert torch.all(after % M == 0), after  # T=500 leaves enough tokens to pad every expert
    assert torch.all((after - before).abs() < M)
    if mode == "up":
        assert torch.all(after >= before)
    if mode == "down":
        assert torch.all(after <= before)
    # Sorted by token then expert, no duplicates; padded entries carry the full softmax probability.
    key = tok.long() * E + exp.long()
    assert torch.all(key[1:] > key[:-1])
    prob = torch.softmax(logits, 1)
    topk = set(zip(tok_k.tolist(), exp_k.tolist()))
    for t, e, s in zip(tok.tolist(), exp.tolist(), scores.tolist()):
        if (t, e) not in topk:
            assert math.isclose(s, prob[t, e].item(), rel_tol=1e-5)


def test_token_rounding_nearest_tie_drops_and_too_few_tokens_drop():
    # Expert 0 gets 2 of 4 tokens with tile 4: over = 2 = missing, a tie -> drop both.
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    tok, exp, _ = tb.route_token_rounding(logits, 1, 4, "nearest")
    assert tok.numel() == 0
    # 'up' with tile 8 but only 4 tokens: padding impossible -> both experts round down to 0.
    tok, exp, _ = tb.route_token_rounding(logits, 1, 8, "up")
    assert tok.numel() == 0
    # 'up' with tile 4 pads each expert with the other two tokens.
    tok, exp, _ = tb.route_token_rounding(logits, 1, 4, "up")
    assert torch.bincount(exp.long(), minlength=2).tolist() == [4, 4]


# ---- the layer ----------------------------------------------------------------------------------

def per_token_layer(x, wr, w1, w2, K, b1=None, b2=None):
    """out[t] = Σ_k s_k · W2_e (silu(gate) ⊙ up) with gate/up the even/odd rows of W1_e (float64)."""
    T, d = x.shape
    n = w2.shape[2]
    out = torch.zeros(T, d, dtype=torch.float64)
    for t in range(T):
        logits = wr.double() @ x[t].double()
        order = sorted(range(wr.shape[0]), key=lambda e: (-logits[e].item(), e))[:K]
        s = torch.softmax(logits[order], 0)
        for k, e in enumerate(order):
            rows = w1[e].double().view(n, 2, d)
            gate, up = rows[:, 0] @ x[t].double(), rows[:, 1] @ x[t].double()
            if b1 is not None:
                gate, up = gate + b1[e].double().view(n, 2)[:, 0], up + b1[e].double().view(n, 2)[:, 1]
            y = w2[e].double() @ (F.silu(gate) * up)
            if b2 is not None:
                y = y + b2[e].double()
            out[t] += s[k] * y
    return out


def random_layer(T, d, n, E, dtype=torch.float64, bias=False):
    g = lambda *s, scale=1.0: (torch.randn(*s) * scale).to(dtype)
    layer = dict(x=g(T, d), wr=g(E, d, scale=d ** -0.5), w1=g(E, 2 * n, d, scale=d ** -0.5), w2=g(E, d, n, scale=n ** -0.5))
    if bias:
        layer.update(b1=g(E, 2 * n, scale=0.1), b2=g(E, d, scale=0.1))
    return layer


@pytest.mark.parametrize("bias", [False, True])
def test_layer_matches_per_token_loop(seed, bias):
    T, d, n, E, K = 37, 16, 8, 6, 2
    L = random_layer(T, d, n, E, bias=bias)
    out = tb.moe_layer(L["x"], L["wr"], L["w1"], L["w2"], top_k=K, b1=L.get("b1"), b2=L.get("b2"))
    ref = per_token_layer(L["x"], L["wr"], L["w1"], L["w2"], K, L.get("b1"), L.get("b2"))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("routing", ["top_k", "token_rounding"])
def test_layer_gradients_by_finite_differences(seed, routing):
    T, d, n, E, K = 24, 8, 8, 4, 2
    L = random_layer(T, d, n, E, bias=True)
    names = ["x", "wr", "w1", "w2", "b1", "b2"]
    inputs = [L[k].requires_grad_() for k in names]

    def f(x, wr, w1, w2, b1, b2):
        return tb.moe_layer(x, wr, w1, w2, top_k=K, b1=b1, b2=b2, routing=routing, tile_m=4)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_general_routing_gradient_reaches_scores(seed):
    T, d, n, E = 10, 8, 8, 4
    L = random_layer(T, d, n, E)
    tok = torch.tensor([0, 0, 1, 3, 3, 3, 7, 9], dtype=torch.int32)
    exp = torch.tensor([1, 2, 0, 0, 1, 3, 2, 2], dtype=torch.int32)
    scores = torch.rand(8, dtype=torch.float64, requires_grad=True)
    out = tb.moe_layer_general(L["x"], L["w1"], L["w2"], tok, exp, scores)
    assert torch.all(out[[4, 5, 6, 8]] == 0)  # tokens 4, 5, 6, 8 have no expert
    assert torch.autograd.gradcheck(lambda s: tb.moe_layer_general(L["x"], L["w1"], L["w2"], tok, exp, s), (scores,))


@pytest.mark.parametrize("tok,exp,scores,match", [
    ([1, 0], [0, 1], [0.5, 0.5], "sorted"),
    ([0, 0], [1, 1], [0.5, 0.5], "twice"),
    ([0, 5], [0, 1], [0.5, 0.5], "num_tokens"),
    ([0, 1], [0, 4], [0.5, 0.5], "num_experts"),
    ([0, 1], [0, 1], [0.5, math.nan], "finite"),
])
def test_general_routing_list_errors(tok, exp, scores, match):
    L = random_layer(4, 8, 8, 4)
    with pytest.raises(ValueError, match=match):
        tb.moe_layer_general(L["x"], L["w1"], L["w2"], torch.tensor(tok), torch.tensor(exp),
                             torch.tensor(scores, dtype=torch.float64))


# ---- the module ---------------------------------------------------------------------------------

def test_module_shapes_aux_loss_and_modes(seed):
    moe = sonicmoe.MoE(num_experts=8, num_experts_per_tok=2, hidden_size=32, intermediate_size=16, backend="torch")
    x = torch.randn(2, 5, 32, requires_grad=True)
    out, aux = moe(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert aux.dim() == 0 and 0.5 < aux.item() < 8.0
    (out.square().mean() + aux).backward()
    for p in moe.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    moe.eval()
    out_eval, aux_eval = moe(x)
    assert aux_eval is None
    torch.testing.assert_close(out_eval, out)
    _, aux_inf = moe.train()(x, is_inference_mode=True)
    assert aux_inf is None


def test_load_balancing_loss_values():
    E = 4
    uniform = torch.zeros(8, E)
    offsets = torch.tensor([0, 2, 4, 6, 8], dtype=torch.int32)
    assert math.isclose(sonicmoe.load_balancing_loss(uniform, offsets).item(), 1.0, rel_tol=1e-6)
    skewed = torch.full((8, E), -30.0)
    skewed[:, 0] = 30.0
    assert math.isclose(sonicmoe.load_balancing_loss(skewed, torch.tensor([0, 8, 8, 8, 8])).item(), E, rel_tol=1e-5)


def test_module_token_rounding_trains_and_evaluates_top_k(seed):
    moe = sonicmoe.MoE(8, 2, 16, 8, backend="torch", routing="token_rounding", tile_m=8, add_bias=True)
    x = torch.randn(64, 16)
    out, aux = moe(x)
    routed = tb.route_token_rounding(tb.router_logits(x, moe.router.weight), 2, 8)[1]
    assert torch.all(torch.bincount(routed.long(), minlength=8) % 8 == 0)
    out.sum().backward()
    assert moe.c_proj.bias.grad is not None
    ref = tb.moe_layer(x, moe.router.weight, moe.c_fc.weight, moe.c_proj.weight, top_k=2, b1=moe.c_fc.bias,
                       b2=moe.c_proj.bias)
    torch.testing.assert_close(moe.eval()(x)[0], ref)


def test_module_argument_errors():
    with pytest.raises(ValueError, match="activation"):
        sonicmoe.MoE(4, 2, 8, 8, activation="gelu")
    with pytest.raises(ValueError, match="backend"):
        sonicmoe.MoE(4, 2, 8, 8, backend="triton")
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        sonicmoe.MoE(4, 5, 8, 8)
    with pytest.raises(ValueError, match="hidden_states"):
        sonicmoe.MoE(4, 2, 8, 8, backend="torch")(torch.randn(3, 9))


def test_sonicmoe_backend_on_cpu_says_to_use_torch():
    moe = sonicmoe.MoE(4, 2, 8, 8).to(torch.bfloat16)
    with pytest.raises((RuntimeError, ValueError), match="backend='torch'"):
        moe(torch.randn(3, 8, dtype=torch.bfloat16))
