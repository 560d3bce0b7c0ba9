"""The GPT-2 model as nanoGPT defines it, built from femto.ops: config, parameters, forward passes.

Parameters live in a dict under nanoGPT's state_dict names and PyTorch layouts, so checkpoints need no
renaming. This file holds no arithmetic of its own (only weight initialisation draws numbers on the host)
and knows nothing about files, tokenizers or data; see checkpoint.py, train.py and sample.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from femto.errors import CheckpointError, ConfigError
from femto.graph import Tensor, grad_enabled
from femto.ops import (
    add,
    attention,
    attention_cached,
    cross_entropy,
    dropout,
    embedding,
    gelu,
    layernorm,
    matmul,
)

# Parameter names, following nanoGPT's GPT.state_dict(); {i} is the block index.
BLOCK_PARAMS = (
    "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
    "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)  # fmt: skip
TIED_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class GPTConfig:
    """Model shape, with nanoGPT's field names. Defaults are femto's Shakespeare model (2.7M
    parameters: about seven minutes of training on 2 cores to a validation loss near 1.60)."""

    vocab_size: int = 65
    block_size: int = 128
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 192
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd {self.n_embd} must be divisible by n_head {self.n_head} "
                f"(head size = n_embd / n_head)"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, bool):
            raise ConfigError(f"bias must be true or false, got {self.bias!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """Build from config.json's "model" object; unknown or missing keys are a ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(names - set(d))
        if unknown or missing:
            raise ConfigError(f"model config has unknown keys {unknown} / lacks keys {missing}")
        return cls(**d)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in nanoGPT's order (PyTorch layouts: nn.Linear is (out, in))."""
        V, T, C = self.vocab_size, self.block_size, self.n_embd
        shapes: dict[str, tuple[int, ...]] = {
            "transformer.wte.weight": (V, C),
            "transformer.wpe.weight": (T, C),
        }
        per_block = {
            "ln_1.weight": (C,), "ln_1.bias": (C,),
            "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
            "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
            "ln_2.weight": (C,), "ln_2.bias": (C,),
            "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,),
            "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,),
        }  # fmt: skip
        for i in range(self.n_layer):
            for name in BLOCK_PARAMS:
                if self.bias or not name.endswith(".bias"):
                    shapes[f"transformer.h.{i}.{name}"] = per_block[name]
        shapes["transformer.ln_f.weight"] = (C,)
        if self.bias:
            shapes["transformer.ln_f.bias"] = (C,)
        return shapes

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; like nanoGPT, non_embedding leaves out wpe (wte is the tied head)."""
        total = sum(math.prod(s) for s in self.param_shapes().values())
        return total - self.block_size * self.n_embd if non_embedding else total


class KVCache:
    """Per-layer key and value caches for generation, each (B, NH, TMAX, HS) with TMAX = block_size."""

    def __init__(self, config: GPTConfig, backend, batch_size: int):
        HS = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, HS)
        self.batch_size = batch_size
        self.length = 0  # positions 0..length-1 hold valid keys and values
        self.layers = [
            (Tensor.zeros(shape, backend), Tensor.zeros(shape, backend))
            for _ in range(config.n_layer)
        ]


def checked_weights(
    config: GPTConfig, arrays: dict[str, np.ndarray], source: str
) -> dict[str, np.ndarray]:
    """`arrays` less a tied lm_head, after checking they are exactly the config's parameters: every
    name, no other, each shape. The one check for weights from any source (a checkpoint,
    --init-from, a nanoGPT state_dict); `source` names it in the CheckpointError."""
    arrays = dict(arrays)
    head = arrays.pop(TIED_HEAD, None)
    expected = config.param_shapes()
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise CheckpointError(
            f"{source} lacks tensor {missing[0]} that the model config needs (missing tensors "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; the config has "
            f"n_layer={config.n_layer}, bias={config.bias})"
        )
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise CheckpointError(
            f"{source} holds tensors the model config does not have: {', '.join(unknown[:4])}"
            f"{' ...' if len(unknown) > 4 else ''}"
        )
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {list(arrays[name].shape)}, the model config "
                f"needs {list(shape)} (weights from a different model config?)"
            )
    if head is not None and not np.array_equal(head, arrays["transformer.wte.weight"]):
        raise CheckpointError(
            f"{source}: {TIED_HEAD} differs from transformer.wte.weight; femto's lm_head is tied"
        )
    return arrays


class GPT:
    """nanoGPT's GPT: wte + wpe -> n_layer pre-LN blocks -> ln_f -> lm_head tied to wte.

    nanoGPT also drops out attention probabilities (attn_dropout); the fused attention kernel keeps no
    mask for that, so here dropout acts on the embeddings and on both residual branches only.
    """

    def __init__(self, config: GPTConfig, backend, rng: np.random.Generator | None = None):
        self.config = config
        self.backend = backend
        # device-resident index tensors, made once: (pos, T) -> position ids (T,), and
        # (B, T) -> flat row ids (B, 1) of each sequence's last position
        self._positions: dict[tuple[int, int], Tensor] = {}
        self._last_rows: dict[tuple[int, int], Tensor] = {}
        self.params: dict[str, Tensor] = {}
        self.step_seeds: Tensor | None = None  # the dropout seeds of the last training forward
        for name, array in self.init_weights(config, rng or np.random.default_rng(0)).items():
            self.params[name] = Tensor.from_numpy(array, backend, requires_grad=True)

    @staticmethod
    def init_weights(config: GPTConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """GPT-2 initialisation: normal(0, 0.02) for matrices and embeddings, 0.02 / sqrt(2 n_layer)
        for the two residual projections (attn.c_proj, mlp.c_proj), biases 0, LayerNorm weights 1."""
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        weights: dict[str, np.ndarray] = {}
        for name, shape in config.param_shapes().items():
            if name.endswith(".bias"):
                weights[name] = np.zeros(shape, np.float32)
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                weights[name] = np.ones(shape, np.float32)
            else:
                std = residual_std if name.endswith("c_proj.weight") else 0.02
                weights[name] = (rng.standard_normal(shape) * std).astype(np.float32)
        return weights

    # ---- parameters ----

    def p(self, name: str) -> Tensor | None:
        """Parameter `name`, or None for a bias the config leaves out (bias=False)."""
        return self.params.get(name)

    def zero_grad(self) -> None:
        for t in self.params.values():
            t.zero_grad()

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Every parameter as a host float32 array under its nanoGPT name (lm_head is tied: omitted)."""
        return {name: t.numpy() for name, t in self.params.items()}

    def load_numpy(self, arrays: dict[str, np.ndarray], source: str = "weights") -> None:
        """Overwrite every parameter; names and shapes must match the config exactly.

        A tied `lm_head.weight` (as nanoGPT's own state_dict has) is accepted when it equals wte.
        """
        arrays = checked_weights(self.config, arrays, source)
        for name, t in self.params.items():
            t.copy_from_numpy(np.asarray(arrays[name], np.float32))

    # ---- forward passes ----

    def _ids(self, idx: np.ndarray | Tensor) -> Tensor:
        if isinstance(idx, Tensor):
            return idx
        return Tensor.from_numpy(np.ascontiguousarray(idx, np.int32), self.backend)

    def _position_ids(self, pos: int, T: int) -> Tensor:
        """Position ids pos .. pos+T-1 (T,) on the device."""
        if pos + T > self.config.block_size:
            raise ConfigError(
                f"sequence of {T} tokens at position {pos} exceeds block_size {self.config.block_size}"
            )
        pos_ids = self._positions.get((pos, T))
        if pos_ids is None:  # uploaded once per (pos, T): a training step then sends only its batch
            pos_ids = Tensor.from_numpy(np.arange(pos, pos + T, dtype=np.int32), self.backend)
            self._positions[(pos, T)] = pos_ids  # (T,)
        return pos_ids

    def _embed(self, ids: Tensor, pos_ids: Tensor, seeds: Tensor | None) -> Tensor:
        tok_emb = embedding(ids, self.p("transformer.wte.weight"))  # (B, T, C)
        pos_emb = embedding(pos_ids, self.p("transformer.wpe.weight"))  # (T, C)
        return self._dropout(add(tok_emb, pos_emb), seeds, 0)  # (B, T, C), pos_emb over B

    def dropout_seeds(self, rng: np.random.Generator | None) -> np.ndarray | None:
        """The seeds of one training forward's dropout sites (the embeddings', then each block's
        attention and MLP branch), drawn from rng; None when dropout is off (no rng, or p 0)."""
        if rng is None or self.config.dropout == 0.0:
            return None
        return rng.integers(0, 2**31 - 1, size=1 + 2 * self.config.n_layer).astype(np.int32)

    def _dropout(self, x: Tensor, seeds: Tensor | None, site: int) -> Tensor:
        if seeds is None:
            return x
        return dropout(x, self.config.dropout, seeds, site)

    def _last_row(self, x: Tensor) -> Tensor:
        """x (B, T, C) -> its last position (B, 1, C), forward only: an embedding lookup of rows
        b*T + T-1 in x viewed as a (B*T, C) table (the view shares x's buffer, so nothing is copied
        but the rows kept)."""
        B, T, C = x.shape
        if T == 1:
            return x
        ids = self._last_rows.get((B, T))
        if ids is None:
            rows = np.arange(1, B + 1, dtype=np.int32).reshape(B, 1) * T - 1  # (B, 1)
            ids = self._last_rows[(B, T)] = Tensor.from_numpy(rows, self.backend)
        return embedding(ids, x.reshaped((B * T, C)))  # (B, 1, C)

    def _block(
        self,
        i: int,
        x: Tensor,
        seeds: Tensor | None,
        cache: KVCache | None = None,
        last_only: bool = False,
        pos_ids: Tensor | None = None,
    ) -> Tensor:
        """One pre-LN transformer block on x (B, T, C); with a cache, attention continues it.

        last_only (cached, forward only) returns just the last position (B, 1, C): every position's
        keys and values still go into the cache, but nothing after attention mixes positions, so the
        rest of the block runs on one row per sequence.
        """
        h = f"transformer.h.{i}."
        p = self.p
        y = layernorm(x, p(h + "ln_1.weight"), p(h + "ln_1.bias"))
        qkv = matmul(y, p(h + "attn.c_attn.weight"), p(h + "attn.c_attn.bias"))  # (B, T, 3C)
        if cache is None:
            y = attention(qkv, self.config.n_head)  # (B, T, C)
        else:
            kcache, vcache = cache.layers[i]
            n_head = self.config.n_head
            y = attention_cached(qkv, kcache, vcache, n_head, cache.length, pos_ids, last_only)
            if last_only:
                x = self._last_row(x)  # (B, 1, C), beside attention's last row
        y = matmul(y, p(h + "attn.c_proj.weight"), p(h + "attn.c_proj.bias"))  # (B, T, C)
        x = add(x, self._dropout(y, seeds, 1 + 2 * i))
        y = layernorm(x, p(h + "ln_2.weight"), p(h + "ln_2.bias"))
        y = gelu(matmul(y, p(h + "mlp.c_fc.weight"), p(h + "mlp.c_fc.bias")))  # (B, T, 4C)
        y = matmul(y, p(h + "mlp.c_proj.weight"), p(h + "mlp.c_proj.bias"))  # (B, T, C)
        return add(x, self._dropout(y, seeds, 2 + 2 * i))

    def _head(self, x: Tensor) -> Tensor:
        x = layernorm(x, self.p("transformer.ln_f.weight"), self.p("transformer.ln_f.bias"))
        # lm_head is tied to wte and has no bias: (B, T, C) @ wte^T -> (B, T, V)
        return matmul(x, self.p("transformer.wte.weight"))

    def forward(
        self,
        idx: np.ndarray | Tensor,
        targets: np.ndarray | Tensor | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) int32 token ids -> logits (B, T, V) and, given targets (B, T), the mean loss ().

        `rng` switches dropout on: each dropout site's seed is drawn from it (training), and the
        seeds go to the device in one tensor, left in `self.step_seeds` for a caller that replays a
        captured step and rewrites them (femto/train.py, TrainStep). None is eval mode, and with
        dropout 0 the two are the same graph.
        """
        ids = self._ids(idx)
        if ids.ndim != 2:
            raise ConfigError(f"forward needs token ids of shape (B, T), got {ids.shape}")
        draws = self.dropout_seeds(rng)
        seeds = None if draws is None else Tensor.from_numpy(draws, self.backend)
        self.step_seeds = seeds
        x = self._embed(ids, self._position_ids(0, ids.shape[1]), seeds)
        for i in range(self.config.n_layer):
            x = self._block(i, x, seeds)
        logits = self._head(x)
        if targets is None:
            return logits, None
        targets_t = self._ids(targets)
        return logits, cross_entropy(logits, targets_t)

    def __call__(self, idx, targets=None, rng=None) -> tuple[Tensor, Tensor | None]:
        return self.forward(idx, targets, rng)

    def new_cache(self, batch_size: int) -> KVCache:
        return KVCache(self.config, self.backend, batch_size)

    def forward_cached(
        self,
        idx: np.ndarray | Tensor,
        cache: KVCache,
        last_only: bool = False,
        positions: Tensor | None = None,
    ) -> Tensor:
        """idx (B, T) continuing the sequence held in `cache` -> logits (B, T, V); forward only.

        The new tokens sit at positions cache.length .. cache.length + T - 1; their keys and values
        are written into the cache, so the next call costs T positions, not the whole context.
        last_only returns only the last position's logits (B, 1, V), which is all generation needs:
        the last block after its attention, ln_f and the lm_head then run on one row per sequence.
        positions: the new tokens' position ids (T,) as a device tensor holding cache.length.. (by
        default the model's own); a caller that captures this forward to replay it at other positions
        passes its own tensor and rewrites it between replays (femto/sample.py).
        """
        if grad_enabled():
            raise RuntimeError(
                "forward_cached runs without autograd: call it under femto.graph.no_grad()"
            )
        ids = self._ids(idx)
        if ids.ndim != 2 or ids.shape[0] != cache.batch_size:
            raise ConfigError(
                f"forward_cached needs ids (B={cache.batch_size}, T) for this cache, got {ids.shape}"
            )
        T = ids.shape[1]
        if positions is None:
            positions = self._position_ids(cache.length, T)
        else:
            want = (cache.length, cache.length + T - 1)
            if positions.shape != (T,) or positions.value_range != want:
                raise ConfigError(
                    f"forward_cached: positions must hold {want[0]}..{want[1]} as ({T},), got "
                    f"{positions.shape} holding {positions.value_range}"
                )
            if want[1] >= self.config.block_size:
                raise ConfigError(
                    f"sequence of {T} tokens at position {cache.length} exceeds block_size "
                    f"{self.config.block_size}"
                )
        x = self._embed(ids, positions, None)
        for i in range(self.config.n_layer):
            last = last_only and i == self.config.n_layer - 1
            x = self._block(i, x, None, cache, last, positions)
        cache.length += T
        return self._head(x)
