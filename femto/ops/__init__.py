"""The ops a GPT is built from, one module each; model code calls these functions."""

from femto.ops.add import Add, add
from femto.ops.attention import Attention, AttentionCached, attention, attention_cached
from femto.ops.crossentropy import CrossEntropy, cross_entropy
from femto.ops.dropout import Dropout, dropout
from femto.ops.embedding import Embedding, embedding
from femto.ops.gelu import GELU, gelu
from femto.ops.layernorm import LayerNorm, layernorm
from femto.ops.matmul import Matmul, matmul
from femto.ops.nonfinite import NonFinite, nonfinite

ALL_OPS = (
    Add,
    Attention,
    AttentionCached,
    CrossEntropy,
    Dropout,
    Embedding,
    GELU,
    LayerNorm,
    Matmul,
    NonFinite,
)

__all__ = [
    "ALL_OPS",
    "GELU",
    "Add",
    "Attention",
    "AttentionCached",
    "CrossEntropy",
    "Dropout",
    "Embedding",
    "LayerNorm",
    "Matmul",
    "NonFinite",
    "add",
    "attention",
    "attention_cached",
    "cross_entropy",
    "dropout",
    "embedding",
    "gelu",
    "layernorm",
    "matmul",
    "nonfinite",
]
