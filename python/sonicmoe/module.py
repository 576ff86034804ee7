"""``sonicmoe.MoE``: an MoE block as an nn.Module, returning (output, aux_loss) like the public
SonicMoE module, with two backends: "sonicmoe" (the CUDA kernels, Hopper GPUs) and "torch"
(pure PyTorch, any device; the oracle the kernels are tested against).

Parameters (names as in the public module): ``router.weight`` [E, d]; ``c_fc.weight``
[E, 2n, d] with interleaved SwiGLU rows (2j gate j, 2j+1 up j) and ``c_fc.bias`` [E, 2n];
``c_proj.weight`` [E, d, n] and ``c_proj.bias`` [E, d].

aux_loss is the switch-style load-balancing loss (Fedus et al., as in the public module):
    aux_loss = E · Σ_e f_e · P_e,
    f_e = (routed (token, expert) pairs sent to e) / (all routed pairs)   -- not differentiable,
    P_e = mean over tokens of softmax(router logits)_e, fp32                -- differentiable,
so it is 1 for perfectly uniform routing and reaches E when everything goes to one expert. The
counts are those of the routing the layer actually used (after token rounding when on). The
logits are recomputed in PyTorch from x and router.weight (the kernels keep none). It is None
for inference forwards (``is_inference_mode=True`` or eval mode), as in the public module.
Scale it yourself (e.g. loss + 0.01·aux_loss).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn

from . import functional, torch_backend
from ._ops import ROUNDING_MODES

BACKENDS = ("sonicmoe", "torch")


class Experts(nn.Module):
    """E stacked linear maps: weight [E, out_features, in_features], optional bias [E, out_features]."""

    def __init__(self, num_experts: int, in_features: int, out_features: int, add_bias: bool = False,
                 std: Optional[float] = None, device=None, dtype=None) -> None:
        super().__init__()
        self.num_experts, self.in_features, self.out_features = num_experts, in_features, out_features
        self.std = std
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features, device=device, dtype=dtype)) if add_bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Default N(0, 1/fan_in): outputs keep the magnitude of the inputs.
        nn.init.normal_(self.weight, mean=0.0, std=self.std if self.std is not None else 1.0 / math.sqrt(self.in_features))
        if self.bias is not None:
            self.bias.zero_()

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, in_features={self.in_features}, out_features={self.out_features}"


def load_balancing_loss(logits: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
    """E · Σ_e f_e · P_e from fp32 router logits [T, E] and the routing's expert_offsets [E+1]."""
    num_experts = logits.shape[-1]
    probs = torch.softmax(logits.float(), dim=-1).sum(0)
    counts = (expert_offsets[1:] - expert_offsets[:-1]).float()
    return num_experts * ((probs / probs.sum().clamp_min(1e-12)) * (counts / counts.sum().clamp_min(1.0))).sum()


def _to_bf16(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t if t is None or t.dtype == torch.bfloat16 else t.to(torch.bfloat16)


class MoE(nn.Module):
    """Mixture-of-Experts block: top-K token-choice router + SwiGLU experts.

    ``routing="token_rounding"`` rounds every expert's token count to a multiple of ``tile_m``
    in training forwards (DESIGN.md §3); eval and inference forwards use plain top-K.

    Backend "sonicmoe" computes in bf16: parameters or inputs of another dtype are cast on the
    way in (autograd-tracked copies; keep the module in bf16 to avoid them) and the output is
    returned in x's dtype. Backend "torch" computes in the parameters' dtype."""

    def __init__(self, num_experts: int, num_experts_per_tok: int, hidden_size: int, intermediate_size: int,
                 activation: str = "swiglu", add_bias: bool = False, std: Optional[float] = None, *,
                 backend: str = "sonicmoe", routing: str = "top_k", tile_m: int = 128,
                 rounding_mode: str = "nearest", device=None, dtype=None) -> None:
        super().__init__()
        if str(activation).lower() != "swiglu":
            raise ValueError(f"activation must be 'swiglu' (the only one the kernels implement; got {activation!r})")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} (got {backend!r})")
        if routing not in ("top_k", "token_rounding"):
            raise ValueError(f"routing must be 'top_k' or 'token_rounding' (got {routing!r})")
        if rounding_mode not in ROUNDING_MODES:
            raise ValueError(f"rounding_mode must be one of {ROUNDING_MODES} (got {rounding_mode!r})")
        if not 1 <= num_experts_per_tok <= num_experts:
            raise ValueError(f"num_experts_per_tok must be in [1, num_experts={num_experts}] (got {num_experts_per_tok})")
        self.num_experts = num_experts
        self.top_k = num_experts_per_tok
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.activation = "swiglu"
        self.backend = backend
        self.routing = routing
        self.tile_m = tile_m
        self.rounding_mode = rounding_mode
        self.router = nn.Linear(hidden_size, num_experts, bias=False, device=device, dtype=dtype)
        self.c_fc = Experts(num_experts, hidden_size, 2 * intermediate_size, add_bias, std, device, dtype)
        self.c_proj = Experts(num_experts, intermediate_size, hidden_size, add_bias, std, device, dtype)

    def extra_repr(self) -> str:
        return (f"backend={self.backend!r}, routing={self.routing!r}, top_k={self.top_k}, "
                f"tile_m={self.tile_m}, rounding_mode={self.rounding_mode!r}")

    def forward(self, hidden_states: torch.Tensor,
                is_inference_mode: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden_states must have shape [..., {self.hidden_size}] (got {tuple(hidden_states.shape)})")
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, self.hidden_size)
        inference = is_inference_mode or not self.training
        routing = "top_k" if inference else self.routing
        params = [self.router.weight, self.c_fc.weight, self.c_proj.weight, self.c_fc.bias, self.c_proj.bias]
        if self.backend == "sonicmoe":
            wr, w1, w2, b1, b2 = [_to_bf16(t) for t in params]
            xin = _to_bf16(x)
            layer = functional.moe_layer
        else:
            wr, w1, w2, b1, b2 = params
            xin = x.to(w1.dtype)
            layer = torch_backend.moe_layer
        kwargs = dict(top_k=self.top_k, b1=b1, b2=b2, routing=routing, tile_m=self.tile_m,
                      rounding_mode=self.rounding_mode)
        if inference:
            out = layer(xin, wr, w1, w2, **kwargs)
            aux_loss = None
        else:
            out, routed = layer(xin, wr, w1, w2, return_routing=True, **kwargs)
            aux_loss = load_balancing_loss(torch_backend.router_logits(xin, wr), routed.expert_offsets)
        return out.to(hidden_states.dtype).view(shape), aux_loss
