"""Loading the extension library and the fake (meta) implementations of its ops.

The library ``_sonicmoe_torch.so`` (python/sonicmoe/csrc/ops.cpp) registers two ops with
TORCH_LIBRARY; this module loads it with ``torch.ops.load_library`` and registers, for each op, a
fake implementation that computes the shapes of all outputs from the inputs alone, so that
``torch.compile`` traces the layer without graph breaks. If the library is missing or cannot be
loaded, nothing is registered and :func:`extension_error` says why; the pure-PyTorch backend
(``sonicmoe.torch_backend``) works regardless.

Set ``SONICMOE_TORCH_LIBRARY=/path/to/_sonicmoe_torch.so`` to load a library from a CMake build
tree (``cmake -DSONICMOE_BUILD_PYTHON=ON``) instead of the installed one.
"""
from __future__ import annotations

import glob
import os
from typing import Optional

import torch

ROUTING_KINDS = ("top_k", "token_rounding", "general")
ROUNDING_MODES = ("nearest", "up", "down")

_HERE = os.path.dirname(os.path.abspath(__file__))
_library_path: Optional[str] = None
_load_error: Optional[str] = None


def token_rounding_capacity(num_tokens, num_experts, top_k, tile_m):
    """Most (token, expert) entries token rounding can produce: min(T*K + E*(tile_m-1), T*E).

    Works on Python ints and on symbolic sizes (torch.compile)."""
    return torch.sym_min(num_tokens * top_k + num_experts * (tile_m - 1), num_tokens * num_experts)


def routed_capacity(routing, num_tokens, num_experts, top_k, tile_m, general_num_routed=None):
    """Rows of H and length of the routing arrays the forward returns (see ops.cpp)."""
    if routing == "top_k":
        return num_tokens * top_k
    if routing == "token_rounding":
        return token_rounding_capacity(num_tokens, num_experts, top_k, tile_m)
    if routing == "general":
        return general_num_routed
    raise ValueError(f"routing must be one of {ROUTING_KINDS} (got {routing!r})")


def _find_library() -> Optional[str]:
    override = os.environ.get("SONICMOE_TORCH_LIBRARY")
    if override:
        return override
    found = sorted(glob.glob(os.path.join(_HERE, "_sonicmoe_torch*.so")))
    return found[0] if found else None


def _built_torch_version(path: str) -> Optional[str]:
    stamp = os.path.splitext(path)[0] + ".torch_version"
    if not os.path.exists(stamp):
        return None
    with open(stamp) as f:
        return f.read().strip()


def _load() -> None:
    global _library_path, _load_error
    path = _find_library()
    if path is None:
        _load_error = ("the extension library _sonicmoe_torch.so is not installed next to "
                       f"{_HERE}; build it with `pip install --no-build-isolation .` or scripts/install_python.sh")
        return
    built = _built_torch_version(path)
    if built is not None and built != torch.__version__:
        _load_error = (f"{path} was built against torch {built} but torch {torch.__version__} is imported; the "
                       "library uses libtorch's C++ ABI, rebuild it (scripts/install_python.sh)")
        return
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as exc:
        _load_error = f"loading {path} failed: {exc}"
        return
    _library_path = path
    _register_fakes()


def extension_available() -> bool:
    """True when the compiled ops are loaded (they still need a Hopper GPU to run)."""
    return _library_path is not None


def extension_error() -> Optional[str]:
    """Why the extension is not available, or None."""
    return _load_error


def extension_path() -> Optional[str]:
    return _library_path


def require_extension() -> None:
    if _library_path is None:
        raise RuntimeError(f"sonicmoe: the sonicmoe backend is not available: {_load_error}. "
                           "The pure-PyTorch backend (backend='torch') needs no extension.")


def _register_fakes() -> None:
    @torch.library.register_fake("sonicmoe::moe_forward")
    def _moe_forward_fake(x, router_weight, w1, b1, w2, b2, token_idx, expert_idx, scores, top_k, routing, tile_m,
                          rounding_mode, inference, check_routing):
        torch._check(x.dim() == 2, lambda: "sonicmoe::moe_forward: 'x' must be 2-D [T, d]")
        torch._check(w1.dim() == 3, lambda: "sonicmoe::moe_forward: 'w1' must be 3-D [E, 2n, d]")
        num_tokens, hidden = x.shape
        num_experts, h_cols, _ = w1.shape
        listed = token_idx.shape[0] if token_idx is not None else None
        capacity = routed_capacity(routing, num_tokens, num_experts, top_k, tile_m, listed)
        rows = 0 if inference else capacity
        index = dict(dtype=torch.int32, device=x.device)
        return (
            x.new_empty(num_tokens, hidden),
            x.new_empty(rows, h_cols),
            torch.empty(rows, **index),
            torch.empty(rows, **index),
            torch.empty(rows, dtype=torch.float32, device=x.device),
            torch.empty(0 if inference else num_experts + 1, **index),
            torch.empty(rows, **index),
            torch.empty(rows, **index),
            torch.empty(rows, **index),
        )

    @torch.library.register_fake("sonicmoe::moe_backward")
    def _moe_backward_fake(grad_out, x, router_weight, w1, b1, w2, b2, h, token_idx, expert_idx, scores,
                           expert_offsets, gather_idx, scatter_idx, reverse_idx, top_k, routing, tile_m,
                           rounding_mode):
        capacity = h.shape[0]
        return (
            x.new_empty(x.shape),
            w1.new_empty(w1.shape),
            b1.new_empty(b1.shape) if b1 is not None else x.new_empty(0),
            w2.new_empty(w2.shape),
            b2.new_empty(b2.shape) if b2 is not None else x.new_empty(0),
            router_weight.new_empty(router_weight.shape) if routing != "general" else x.new_empty(0),
            torch.empty(capacity, dtype=torch.float32, device=x.device),
        )


_load()
