"""Train a tiny character-level MoE language model with ``sonicmoe.MoE`` — the smallest complete
use of the PyTorch layer, and a smoke test (exit code 1 unless the loss falls).

The model: byte embedding -> N blocks of [RMSNorm -> causal depthwise token mixing -> RMSNorm ->
MoE (SwiGLU experts, top-K or token-rounding routing)] with residuals -> byte logits. The token
mixer is a learned causal convolution over the last few positions, so the example needs nothing
but the MoE layer to learn something (attention would only add code). The text is a few lines
shipped below, repeated.

    python3 examples/train_tiny_moe_lm.py                      # sonicmoe backend on a Hopper GPU
    python3 examples/train_tiny_moe_lm.py --backend torch      # pure PyTorch, any device (CPU too)
    python3 examples/train_tiny_moe_lm.py --routing token_rounding --steps 200

Without the extension (or without a Hopper GPU) the sonicmoe backend is unavailable: the script
says why and stops with exit code 2, unless --backend torch is given.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import sonicmoe  # noqa: E402  (the installed package when there is one)

TEXT = (
    "Mixture-of-experts layers route every token to a few experts out of many. "
    "SonicMoE keeps only the input, the pre-activation and the routing for the backward pass, "
    "fuses the gathers into the grouped GEMMs, and rounds each expert's token count to the tile. "
)


class CausalMixer(nn.Module):
    """out[t] = Σ_{j < width} w_j ⊙ x[t - j]: a causal depthwise convolution over positions."""

    def __init__(self, dim: int, width: int = 4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, dim) / width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, S, D]
        out = torch.zeros_like(x)
        for j in range(self.weight.shape[0]):
            out[:, j:] = out[:, j:] + self.weight[j] * x[:, : x.shape[1] - j]
        return out


class Block(nn.Module):
    def __init__(self, dim: int, args: argparse.Namespace) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.mix = CausalMixer(dim)
        self.moe = sonicmoe.MoE(num_experts=args.experts, num_experts_per_tok=args.top_k, hidden_size=dim,
                                intermediate_size=args.intermediate, backend=args.backend, routing=args.routing,
                                tile_m=args.tile_m)

    def forward(self, x: torch.Tensor):
        x = x + self.mix(self.norm1(x))
        out, aux = self.moe(self.norm2(x))
        return x + out, aux


class TinyMoELM(nn.Module):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, args.dim)
        self.blocks = nn.ModuleList(Block(args.dim, args) for _ in range(args.layers))
        self.head = nn.Linear(args.dim, 256, bias=False)

    def forward(self, tokens: torch.Tensor):
        x = self.embed(tokens)
        aux_total = x.new_zeros((), dtype=torch.float32)
        for block in self.blocks:
            x, aux = block(x)
            if aux is not None:
                aux_total = aux_total + aux.float()
        return self.head(x).float(), aux_total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("sonicmoe", "torch"), default="sonicmoe")
    p.add_argument("--routing", choices=("top_k", "token_rounding"), default="top_k")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=64)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tile-m", type=int, default=16, help="token rounding's M tile (small for this tiny batch)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.backend == "sonicmoe" and not sonicmoe.extension_available():
        print(f"train_tiny_moe_lm: the sonicmoe backend is unavailable here ({sonicmoe.extension_error()}); "
              "use --backend torch", file=sys.stderr)
        return 2
    # The kernels take bf16; the torch backend trains in fp32 here (any dtype works).
    dtype = torch.bfloat16 if args.backend == "sonicmoe" else torch.float32
    torch.manual_seed(args.seed)
    model = TinyMoELM(args).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    data = torch.tensor(list(TEXT.encode()) * 8, dtype=torch.long, device=device)

    losses = []
    start = time.time()
    for step in range(args.steps):
        idx = torch.randint(0, data.numel() - args.seq - 1, (args.batch,), device=device)
        window = torch.stack([data[i : i + args.seq + 1] for i in idx.tolist()])
        logits, aux = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        (loss + 0.01 * aux).backward()
        opt.step()
        losses.append(loss.item())
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  aux {aux.item():.3f}")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"{args.backend} backend, {args.routing} routing, {device}: loss {first:.3f} -> {last:.3f} "
          f"in {args.steps} steps ({time.time() - start:.1f} s)")
    if not last < 0.8 * first:
        print("train_tiny_moe_lm: the loss did not fall by 20%: something is wrong", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
