"""sonicmoe: the SonicMoE Mixture-of-Experts layer (arXiv 2512.14080) for Hopper GPUs, in PyTorch.

    import torch, sonicmoe
    moe = sonicmoe.MoE(num_experts=64, num_experts_per_tok=4, hidden_size=1536,
                       intermediate_size=512).cuda().to(torch.bfloat16)
    out, aux_loss = moe(torch.randn(8, 1024, 1536, device="cuda", dtype=torch.bfloat16))

Backends: "sonicmoe" (CUDA kernels of the C++ core, loaded from the extension library) and
"torch" (pure PyTorch, any device). Functional API: :func:`moe_layer` (router inside: top-K or
token rounding) and :func:`moe_layer_general` (caller-supplied routing lists); the same
functions in pure PyTorch live in :mod:`sonicmoe.torch_backend`. See docs/python.md.
"""
from ._ops import (ROUNDING_MODES, ROUTING_KINDS, extension_available, extension_error, extension_path,
                   routed_capacity, token_rounding_capacity)
from .functional import MoELayerFunction, moe_layer, moe_layer_general, saved_state_bytes
from .module import MoE, Experts, load_balancing_loss
from .torch_backend import Routing
from . import torch_backend

__version__ = "0.1.0"

__all__ = [
    "MoE", "Experts", "MoELayerFunction", "Routing", "moe_layer", "moe_layer_general", "load_balancing_loss",
    "torch_backend", "extension_available", "extension_error", "extension_path", "routed_capacity",
    "token_rounding_capacity", "saved_state_bytes", "ROUTING_KINDS", "ROUNDING_MODES",
]
