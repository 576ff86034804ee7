"""Functional API of the sonicmoe backend: the layer as one autograd.Function over the two ops.

Memory contract (DESIGN.md §3): the forward keeps for the backward exactly x (the caller's
tensor, not a copy), H [capacity, 2n] bf16, the fp32 scores and the int32 routing arrays, plus
references to the weights; A, Y and the router logits live in a workspace that is returned to
PyTorch's caching allocator before the forward returns. Without autograd (torch.no_grad(), or no
input requiring grad) the op runs in inference mode and keeps nothing at all.

Tensors: bf16 CUDA tensors on a Hopper GPU, contiguous (x may have any leading dims: [..., d]);
routing arrays int32, scores fp32.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _ops
from .torch_backend import Routing


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class MoELayerFunction(torch.autograd.Function):
    """One pass of the layer: sonicmoe::moe_forward, and sonicmoe::moe_backward for its gradient.

    Inputs (x, router_weight, w1, b1, w2, b2, token_idx, expert_idx, scores, top_k, routing,
    tile_m, rounding_mode, check_routing); outputs (out, token_idx, expert_idx, scores,
    expert_offsets), only ``out`` differentiable. Gradients reach x, the weights, the biases and,
    for general routing, the input scores."""

    @staticmethod
    def forward(ctx, x, router_weight, w1, b1, w2, b2, token_idx, expert_idx, scores, top_k, routing, tile_m,
                rounding_mode, check_routing):
        out, h, tok, exp, sc, offsets, gather, scatter, reverse = torch.ops.sonicmoe.moe_forward(
            x, router_weight, w1, b1, w2, b2, token_idx, expert_idx, scores, top_k, routing, tile_m, rounding_mode,
            False, check_routing)
        ctx.save_for_backward(x, router_weight, w1, b1, w2, b2, h, tok, exp, sc, offsets, gather, scatter, reverse)
        ctx.layer = (top_k, routing, tile_m, rounding_mode)
        ctx.mark_non_differentiable(tok, exp, sc, offsets)
        return out, tok, exp, sc, offsets

    @staticmethod
    def backward(ctx, grad_out, *unused):
        x, router_weight, w1, b1, w2, b2, h, tok, exp, sc, offsets, gather, scatter, reverse = ctx.saved_tensors
        top_k, routing, tile_m, rounding_mode = ctx.layer
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_wr, grad_scores = torch.ops.sonicmoe.moe_backward(
            grad_out.contiguous(), x, router_weight, w1, b1, w2, b2, h, tok, exp, sc, offsets, gather, scatter,
            reverse, top_k, routing, tile_m, rounding_mode)
        return (grad_x,
                grad_wr if router_weight is not None else None,
                grad_w1,
                grad_b1 if b1 is not None else None,
                grad_w2,
                grad_b2 if b2 is not None else None,
                None, None,
                grad_scores if routing == "general" else None,
                None, None, None, None, None)


def _check_common(x, w1, w2, b1, b2):
    if x.dim() < 1:
        raise ValueError("x must have shape [..., d]")
    if (b1 is None) != (b2 is None):
        raise ValueError("b1 and b2 must be given together")


def moe_layer(x: torch.Tensor, router_weight: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, *, top_k: int,
              b1: Optional[torch.Tensor] = None, b2: Optional[torch.Tensor] = None, routing: str = "top_k",
              tile_m: int = 128, rounding_mode: str = "nearest", return_routing: bool = False):
    """The MoE layer with its router on a Hopper GPU.

    x [..., d], router_weight [E, d], w1 [E, 2n, d] (SwiGLU rows interleaved: 2j gate, 2j+1 up),
    w2 [E, d, n], optional b1 [E, 2n] and b2 [E, d]; all bf16 CUDA tensors. ``routing`` is
    "top_k" or "token_rounding" (then ``tile_m`` and ``rounding_mode`` in nearest / up / down).
    Returns out [..., d] bf16, and with ``return_routing=True`` also a :class:`Routing` (arrays of
    the layer's capacity, TK = expert_offsets[-1] of them used; not differentiable)."""
    _ops.require_extension()
    if routing not in ("top_k", "token_rounding"):
        raise ValueError(f"routing must be 'top_k' or 'token_rounding' (got {routing!r}); "
                         "for caller-supplied routing use moe_layer_general")
    _check_common(x, w1, w2, b1, b2)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    if not _needs_grad(x2, router_weight, w1, b1, w2, b2):
        outs = torch.ops.sonicmoe.moe_forward(x2, router_weight, w1, b1, w2, b2, None, None, None, top_k, routing,
                                              tile_m, rounding_mode, not return_routing, True)
        out, tok, exp, sc, offsets = outs[0], outs[2], outs[3], outs[4], outs[5]
    else:
        out, tok, exp, sc, offsets = MoELayerFunction.apply(x2, router_weight, w1, b1, w2, b2, None, None, None,
                                                            top_k, routing, tile_m, rounding_mode, True)
    out = out.view(shape)
    return (out, Routing(tok, exp, sc, offsets)) if return_routing else out


def moe_layer_general(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, token_idx: torch.Tensor,
                      expert_idx: torch.Tensor, scores: torch.Tensor, *, b1: Optional[torch.Tensor] = None,
                      b2: Optional[torch.Tensor] = None, check_routing: bool = True) -> torch.Tensor:
    """The experts with a caller-supplied routing list (general routing) on a Hopper GPU.

    (token_idx, expert_idx, scores) [TK]: entry i sends token token_idx[i] to expert
    expert_idx[i] with weight scores[i]; sorted by token, distinct experts per token, any number
    of experts per token (zero included). Index tensors are converted to int32, scores to fp32
    (differentiable: the gradient dS = <dO_t, Y_i> flows back to ``scores``).
    ``check_routing`` checks those rules on the GPU first (one 8-byte read-back, so one stream
    synchronisation); it is skipped automatically inside CUDA-graph capture."""
    _ops.require_extension()
    _check_common(x, w1, w2, b1, b2)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    token_idx = token_idx.to(torch.int32).contiguous()
    expert_idx = expert_idx.to(torch.int32).contiguous()
    scores = scores.to(torch.float32).contiguous()
    if not _needs_grad(x2, w1, b1, w2, b2, scores):
        out = torch.ops.sonicmoe.moe_forward(x2, None, w1, b1, w2, b2, token_idx, expert_idx, scores, 1, "general", 128,
                                             "nearest", True, check_routing)[0]
    else:
        out = MoELayerFunction.apply(x2, None, w1, b1, w2, b2, token_idx, expert_idx, scores, 1, "general", 128,
                                     "nearest", check_routing)[0]
    return out.view(shape)


def saved_state_bytes(num_tokens: int, hidden: int, intermediate: int, num_experts: int, capacity: int) -> int:
    """Bytes the training forward keeps for the backward (x included), as the C++ saved_state_bytes."""
    return 2 * num_tokens * hidden + 2 * capacity * 2 * intermediate + 4 * capacity + 5 * 4 * capacity + 4 * (num_experts + 1)
