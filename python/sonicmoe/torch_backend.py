"""The MoE layer in plain PyTorch: the oracle the sonicmoe backend is tested against, and the
fallback on machines without a Hopper GPU (CPU included).

Same math and layouts as the C++ core (DESIGN.md §1-3):
  - router logits = x·Wrᵀ in fp32; top-K: the K largest logits per token, ties to the lower
    expert index; scores = softmax over those K logits, fp32; entry t*K + k is slot k of token
    t, slots by descending score;
  - token rounding: top-K, then every expert's count rounded to a multiple of tile_m (modes
    nearest / up / down; dropping removes the expert's lowest-score top-K tokens, ties: higher
    token first; padding adds its highest full-softmax-probability unchosen tokens, ties: lower
    token first, scored by that probability; too few tokens to pad -> drop). The list is in
    flat order by token, then expert index;
  - W1 [E, 2n, d] with interleaved rows (row 2j gate j, row 2j+1 up j), W2 [E, d, n], optional
    b1 [E, 2n], b2 [E, d]; H = x·W1_eᵀ + b1_e, A_j = silu(H_2j)·H_2j+1, Y = A·W2_eᵀ + b2_e,
    out[t] = Σ_k s·Y (accumulated in fp32, returned in x's dtype).
fp64 inputs stay fp64 throughout (logits and scores included) for finite-difference checks.
Gradients come from PyTorch's autograd through exactly these formulas, router included (the
selection itself is piecewise constant). The expert GEMMs run in the dtype of the weights.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ._ops import ROUNDING_MODES, ROUTING_KINDS


class Routing(NamedTuple):
    """A routing list in flat order (by token) and the per-expert offsets of its grouped order.

    The sonicmoe backend returns arrays of its capacity (see ``routed_capacity``); only the
    first TK = expert_offsets[-1] entries are used there. The torch backend returns exactly TK."""
    token_idx: torch.Tensor     # int32 [TK]
    expert_idx: torch.Tensor    # int32 [TK]
    scores: torch.Tensor        # fp32 [TK]
    expert_offsets: torch.Tensor  # int32 [E+1], exclusive prefix sum of the per-expert counts


def _wide(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs (finite-difference checks)."""
    return torch.promote_types(dtype, torch.float32)


def router_logits(x: torch.Tensor, router_weight: torch.Tensor) -> torch.Tensor:
    """x·Wrᵀ in fp32 ([T, E]; fp64 for fp64 inputs); narrower inputs are widened first, as on the GPU."""
    wide = _wide(x.dtype)
    return x.to(wide) @ router_weight.to(wide).t()


def route_top_k(logits: torch.Tensor, top_k: int):
    """Top-K softmax routing of fp32 logits [T, E] -> (token_idx, expert_idx, scores) of T*K entries."""
    num_tokens, num_experts = logits.shape
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}] (got {top_k})")
    # A stable descending sort keeps equal logits in expert order: ties go to the lower index.
    values, experts = torch.sort(logits, dim=-1, descending=True, stable=True)
    scores = torch.softmax(values[:, :top_k], dim=-1)
    token_idx = torch.arange(num_tokens, device=logits.device, dtype=torch.int32).repeat_interleave(top_k)
    return token_idx, experts[:, :top_k].reshape(-1).to(torch.int32), scores.reshape(-1)


def _rank_along_tokens(order: torch.Tensor) -> torch.Tensor:
    """Inverse of a per-column permutation: rank[order[r, e], e] = r."""
    ranks = torch.arange(order.shape[0], device=order.device).unsqueeze(1).expand_as(order)
    return torch.empty_like(order).scatter_(0, order, ranks)


def route_token_rounding(logits: torch.Tensor, top_k: int, tile_m: int = 128, rounding_mode: str = "nearest"):
    """Token rounding (DESIGN.md §3) of fp32 logits [T, E] -> (token_idx, expert_idx, scores).

    Data-dependent length (synchronises with the device); differentiable in the scores."""
    if rounding_mode not in ROUNDING_MODES:
        raise ValueError(f"rounding_mode must be one of {ROUNDING_MODES} (got {rounding_mode!r})")
    if tile_m < 1:
        raise ValueError(f"tile_m must be >= 1 (got {tile_m})")
    num_tokens, num_experts = logits.shape
    token_idx, expert_idx, topk_scores = route_top_k(logits, top_k)
    tok, exp = token_idx.long(), expert_idx.long()
    # Top-K scores and full-softmax probabilities as [T, E] matrices (differentiable).
    score = torch.zeros(num_tokens, num_experts, dtype=topk_scores.dtype, device=logits.device).index_put((tok, exp),
                                                                                                    topk_scores)
    probability = torch.softmax(logits, dim=-1)
    with torch.no_grad():
        chosen = torch.zeros(num_tokens, num_experts, dtype=torch.bool, device=logits.device)
        chosen[tok, exp] = True
        count = chosen.sum(0)
        over = count % tile_m  # tokens past the expert's last full tile
        missing = tile_m - over  # tokens that would complete it
        if rounding_mode == "up":
            pad = over > 0
        elif rounding_mode == "nearest":
            pad = (over > 0) & (missing < over)  # a tie drops
        else:
            pad = torch.zeros_like(over, dtype=torch.bool)
        pad &= (num_tokens - count) >= missing  # too few tokens to pad: drop instead
        drop = (over > 0) & ~pad
        # Padding: unchosen tokens by descending probability, ties to the lower token (stable sort);
        # chosen ones get -1 so they sort last.
        pad_key = torch.where(chosen, torch.full_like(probability, -1.0), probability.detach())
        pad_rank = _rank_along_tokens(torch.sort(pad_key, dim=0, descending=True, stable=True).indices)
        added = pad & ~chosen & (pad_rank < missing)
        # Dropping: chosen tokens by ascending top-K score, ties to the higher token (stable sort of
        # the token-reversed matrix); unchosen ones get +inf so they sort last.
        drop_key = torch.where(chosen, score.detach(), torch.full_like(score, float("inf"))).flip(0)
        drop_rank = _rank_along_tokens(torch.sort(drop_key, dim=0, stable=True).indices).flip(0)
        removed = drop & chosen & (drop_rank < over)
        final = (chosen & ~removed) | added
        out_tok, out_exp = final.nonzero(as_tuple=True)  # row-major: by token, then expert index
    scores = torch.where(added, probability, score)[out_tok, out_exp]
    return out_tok.to(torch.int32), out_exp.to(torch.int32), scores


def expert_offsets(expert_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    counts = torch.bincount(expert_idx.long(), minlength=num_experts)
    return F.pad(torch.cumsum(counts, 0), (1, 0)).to(torch.int32)


def experts_forward(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, token_idx: torch.Tensor,
                    expert_idx: torch.Tensor, scores: torch.Tensor, b1: Optional[torch.Tensor] = None,
                    b2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[t] = Σ over entries i of token t: scores[i] · expert_{expert_idx[i]}(x[t]), SwiGLU experts.

    Rows are grouped by expert (one GEMM per expert, one host synchronisation for the counts)."""
    num_tokens, hidden = x.shape
    num_experts = w1.shape[0]
    tok, exp = token_idx.long(), expert_idx.long()
    order = torch.argsort(exp * num_tokens + tok)  # grouped order: by expert, then token
    tok_grouped = tok[order]
    counts = torch.bincount(exp, minlength=num_experts).tolist()
    ys = []
    for e, xe in enumerate(x[tok_grouped].split(counts)):
        if xe.shape[0] == 0:
            continue
        h = F.linear(xe, w1[e], None if b1 is None else b1[e])
        a = F.silu(h[:, 0::2]) * h[:, 1::2]
        ys.append(F.linear(a, w2[e], None if b2 is None else b2[e]))
    y = torch.cat(ys) if ys else x.new_zeros(0, hidden)
    wide = _wide(x.dtype)
    weighted = y.to(wide) * scores[order].to(wide).unsqueeze(1)
    out = torch.zeros(num_tokens, hidden, dtype=wide, device=x.device).index_add(0, tok_grouped, weighted)
    return out.to(x.dtype)


def _route(x, router_weight, top_k, routing, tile_m, rounding_mode):
    logits = router_logits(x, router_weight)
    if routing == "top_k":
        return route_top_k(logits, top_k)
    if routing == "token_rounding":
        return route_token_rounding(logits, top_k, tile_m, rounding_mode)
    raise ValueError(f"routing must be 'top_k' or 'token_rounding' here (got {routing!r}); "
                     "use moe_layer_general for caller-supplied routing")


def moe_layer(x: torch.Tensor, router_weight: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, *, top_k: int,
              b1: Optional[torch.Tensor] = None, b2: Optional[torch.Tensor] = None, routing: str = "top_k",
              tile_m: int = 128, rounding_mode: str = "nearest", return_routing: bool = False):
    """The whole layer with the router, in PyTorch. Same signature as ``sonicmoe.moe_layer``."""
    if routing not in ROUTING_KINDS:
        raise ValueError(f"routing must be one of {ROUTING_KINDS} (got {routing!r})")
    if (b1 is None) != (b2 is None):
        raise ValueError("b1 and b2 must be given together")
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    token_idx, expert_idx, scores = _route(x2, router_weight, top_k, routing, tile_m, rounding_mode)
    out = experts_forward(x2, w1, w2, token_idx, expert_idx, scores, b1, b2).view(shape)
    if not return_routing:
        return out
    return out, Routing(token_idx, expert_idx, scores.detach(), expert_offsets(expert_idx, w1.shape[0]))


def moe_layer_general(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, token_idx: torch.Tensor,
                      expert_idx: torch.Tensor, scores: torch.Tensor, *, b1: Optional[torch.Tensor] = None,
                      b2: Optional[torch.Tensor] = None, check_routing: bool = True) -> torch.Tensor:
    """The experts with a caller-supplied routing list (differentiable in x, weights and scores)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if check_routing:
        check_routing_list(token_idx, expert_idx, scores, x2.shape[0], w1.shape[0])
    return experts_forward(x2, w1, w2, token_idx, expert_idx, scores, b1, b2).view(shape)


def check_routing_list(token_idx, expert_idx, scores, num_tokens, num_experts) -> None:
    """The rules of a general routing list (sonicmoe/routing.h); raises ValueError naming the rule."""
    n = token_idx.shape[0]
    if expert_idx.shape != (n,) or scores.shape != (n,):
        raise ValueError(f"token_idx, expert_idx and scores must be 1-D of one length (got {tuple(token_idx.shape)}, "
                         f"{tuple(expert_idx.shape)}, {tuple(scores.shape)})")
    if n == 0:
        return
    tok, exp = token_idx.long(), expert_idx.long()
    if bool(((tok < 0) | (tok >= num_tokens)).any()):
        raise ValueError(f"token_idx: entries must be in [0, num_tokens={num_tokens})")
    if bool((tok[1:] < tok[:-1]).any()):
        raise ValueError("token_idx: must be sorted by token (non-decreasing)")
    if bool(((exp < 0) | (exp >= num_experts)).any()):
        raise ValueError(f"expert_idx: entries must be in [0, num_experts={num_experts})")
    if torch.unique(tok * num_experts + exp).numel() != n:
        raise ValueError("expert_idx: a token is routed to the same expert twice")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores: entries must be finite")
