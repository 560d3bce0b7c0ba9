"""PyTorch eager twin of femto's GPT, for side-by-side benchmarks only (torch is never a femto dependency).

Same architecture as femto/model.py and nanoGPT (fused qkv, GELU tanh, tied lm_head, pre-LayerNorm
blocks), the same AdamW settings, and a KV-cache generation loop like femto's sampler, so that the
benchmarks compare kernels and overhead, not different models.
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

    def attention(self, x: torch.Tensor, cache: dict | None, pos: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            cache["k"][:, :, pos : pos + T] = k
            cache["v"][:, :, pos : pos + T] = v
            keys, values = cache["k"][:, :, : pos + T], cache["v"][:, :, : pos + T]
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=(T > 1))
        return self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def forward(self, x: torch.Tensor, cache: dict | None = None, pos: int = 0) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), cache, pos)
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

    def forward(self, idx, targets=None, caches=None, pos: int = 0):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + T, device=idx.device))
        for i, block in enumerate(self.h):
            x = block(x, caches[i] if caches is not None else None, pos)
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

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int, use_cache: bool) -> torch.Tensor:
        """Greedy-free multinomial sampling at temperature 1; with a cache, one position per step."""
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
                logits, _ = self(idx[:, -self.block_size :])
            probs = F.softmax(logits[:, -1, :], dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return idx
