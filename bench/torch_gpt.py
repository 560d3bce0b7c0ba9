"""PyTorch eager twin of femto's GPT, for side-by-side benchmarks only (torch is never a femto dependency).

Same architecture as femto/model.py and nanoGPT (fused qkv, GELU tanh, tied lm_head, pre-LayerNorm
blocks), the same AdamW settings, and a KV-cache generation loop like femto's sampler, so that the
benchmarks compare kernels and overhead, not different models. tests/test_torch_twin.py loads
femto's weights into it and checks that loss and gradients agree.

Without targets, forward computes the last position only, as femto's
forward_cached(last_only=True) does: nanoGPT's head (lm_head(x[:, [-1], :])) and, beyond nanoGPT,
the last block after attention and ln_f on that one row too (every position's keys and values are
still computed and cached), so that the sampling benchmark times equal work on both sides.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool = True):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.attn_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def attention(
        self, x: torch.Tensor, cache: dict | None, pos: int, last_only: bool
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), or (B, 1, C) for the last query alone when last_only."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        keys, values = k, v
        if cache is not None:
            cache["k"][:, :, pos : pos + T] = k
            cache["v"][:, :, pos : pos + T] = v
            keys, values = cache["k"][:, :, : pos + T], cache["v"][:, :, : pos + T]
        if last_only and T > 1:
            # the last query sees every key, so it needs no mask
            q, T = q[:, :, -1:], 1
            y = F.scaled_dot_product_attention(q, keys, values)
        else:
            # T > 1 only at position 0 (a fresh window), where the causal mask is the usual one
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=(T > 1))
        return self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def forward(
        self, x: torch.Tensor, cache: dict | None = None, pos: int = 0, last_only: bool = False
    ) -> torch.Tensor:
        y = self.attention(self.ln_1(x), cache, pos, last_only)
        x = (x[:, -1:] if last_only else x) + y
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.block_size, self.n_head, self.n_embd = block_size, n_head, n_embd
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets=None, caches=None, pos: int = 0, last_only: bool | None = None):
        """Logits (B, T, V) and the loss given targets; without targets (or with last_only), the
        last position's logits (B, 1, V) only, with the last block trimmed to that row."""
        if last_only is None:
            last_only = targets is None
        if last_only and targets is not None:
            raise ValueError("a loss needs every position's logits: last_only with targets")
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + T, device=idx.device))
        for i, block in enumerate(self.h):
            trim = last_only and i == len(self.h) - 1
            x = block(x, caches[i] if caches is not None else None, pos, trim)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def optimizer(self, lr: float = 1e-3) -> torch.optim.AdamW:
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), foreach=True)

    def new_caches(self, batch: int) -> list[dict]:
        hs = self.n_embd // self.n_head
        shape, device = (batch, self.n_head, self.block_size, hs), self.wte.weight.device
        return [
            {"k": torch.zeros(shape, device=device), "v": torch.zeros(shape, device=device)}
            for _ in self.h
        ]

    def load_femto(self, arrays: dict) -> None:
        """Copy femto's parameters (nanoGPT's names, femto.model.GPT.to_numpy()) into this model."""
        own = dict(self.named_parameters())
        with torch.no_grad():
            for name, array in arrays.items():
                target = own[femto_to_twin_name(name)]
                if tuple(target.shape) != array.shape:
                    shape = tuple(target.shape)
                    raise ValueError(f"{name}: shape {array.shape}, the twin has {shape}")
                target.copy_(torch.from_numpy(array))

    @torch.inference_mode()
    def generate(self, idx: torch.Tensor, new_tokens: int, use_cache: bool) -> torch.Tensor:
        """Multinomial sampling at temperature 1; with a cache, one position per step. Like femto's
        sampler, the cached loop computes the last position's logits only, and the uncached one
        every position's (femto's graph forward has no last-only form)."""
        generator = torch.Generator(device=idx.device).manual_seed(0)
        caches, pos = None, 0
        for _ in range(new_tokens):
            if use_cache:
                if caches is None or pos + 1 > self.block_size:
                    context = idx[:, -self.block_size :]
                    caches, pos = self.new_caches(idx.shape[0]), 0
                    logits, _ = self(context, caches=caches, pos=0)
                    pos = context.shape[1]
                else:
                    logits, _ = self(idx[:, -1:], caches=caches, pos=pos)
                    pos += 1
            else:
                logits, _ = self(idx[:, -self.block_size :], last_only=False)
            probs = F.softmax(logits[:, -1, :], dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return idx


def femto_to_twin_name(name: str) -> str:
    """femto's (nanoGPT's) parameter name -> this module's: transformer.h.0.attn.c_proj.weight ->
    h.0.attn_proj.weight."""
    name = name.removeprefix("transformer.")
    return name.replace("attn.c_proj", "attn_proj").replace("mlp.c_proj", "mlp_proj").replace(
        "attn.c_attn", "c_attn"
    ).replace("mlp.c_fc", "c_fc")
