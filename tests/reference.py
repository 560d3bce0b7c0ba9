"""The oracle: float64 numpy forward and backward of every femto op, plus the optimizer kernels.

Written from the math (shape contracts in femto/ops/<op>.py), not from csrc/: vectorised numpy, no
loops over elements. Each backward is itself checked against central differences in the op tests.
Not fast and not float32: nothing here ever runs inside femto.
"""

from __future__ import annotations

import numpy as np

GELU_SCALE = np.sqrt(2.0 / np.pi)
LAYERNORM_EPS = 1e-5


# --- matmul: inp (..., C), weight (OC, C), bias (OC) or None -> (..., OC)
def matmul_forward(inp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    out = inp @ weight.T
    return out + bias if bias is not None else out


def matmul_backward(dout, inp, weight, bias):
    """-> dinp (..., C), dweight (OC, C), dbias (OC) or None."""
    OC, C = weight.shape
    g = dout.reshape(-1, OC)  # (N, OC)
    x = inp.reshape(-1, C)  # (N, C)
    dbias = g.sum(axis=0) if bias is not None else None
    return (g @ weight).reshape(inp.shape), g.T @ x, dbias


# --- embedding: ids (...) int, weight (V, C) -> (..., C)
def embedding_forward(ids: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return weight[ids]


def embedding_backward(dout: np.ndarray, ids: np.ndarray, V: int) -> np.ndarray:
    """-> dweight (V, C): every occurrence of an id adds its row (np.add.at does not drop repeats)."""
    C = dout.shape[-1]
    dweight = np.zeros((V, C))
    np.add.at(dweight, ids.reshape(-1), dout.reshape(-1, C))
    return dweight


# --- add: a (..., *S), b (*S) -> shaped like a
def add_forward(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def add_backward(dout: np.ndarray, b_shape: tuple[int, ...]):
    """-> da shaped like a, db (*S): b's gradient sums over every axis it was broadcast along."""
    return dout.copy(), dout.reshape(-1, *b_shape).sum(axis=0)


# --- layernorm over the last axis: inp (..., C), weight (C), bias (C) or None
def _normalise(inp: np.ndarray):
    mean = inp.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((inp - mean) ** 2).mean(axis=-1, keepdims=True) + LAYERNORM_EPS)
    return (inp - mean) * rstd, rstd


def layernorm_forward(inp, weight, bias):
    norm, _ = _normalise(inp)
    out = norm * weight
    return out + bias if bias is not None else out


def layernorm_backward(dout, inp, weight, bias):
    """-> dinp, dweight (C), dbias (C) or None. y = w * xhat + b, xhat = (x - mean) * rstd; the
    Jacobian of xhat is rstd * (I - 1/C - xhat xhat^T / C) per row."""
    C = inp.shape[-1]
    norm, rstd = _normalise(inp)
    dnorm = dout * weight
    dinp = rstd * (
        dnorm
        - dnorm.mean(axis=-1, keepdims=True)
        - norm * (dnorm * norm).mean(axis=-1, keepdims=True)
    )
    dweight = (dout * norm).reshape(-1, C).sum(axis=0)
    dbias = dout.reshape(-1, C).sum(axis=0) if bias is not None else None
    return dinp, dweight, dbias


# --- gelu, tanh approximation, elementwise
def gelu_forward(inp: np.ndarray) -> np.ndarray:
    return 0.5 * inp * (1.0 + np.tanh(GELU_SCALE * (inp + 0.044715 * inp**3)))


def gelu_backward(dout: np.ndarray, inp: np.ndarray) -> np.ndarray:
    t = np.tanh(GELU_SCALE * (inp + 0.044715 * inp**3))
    du = GELU_SCALE * (1.0 + 3 * 0.044715 * inp**2)
    return dout * (0.5 * (1.0 + t) + 0.5 * inp * (1.0 - t * t) * du)


# --- causal self-attention: qkv (B, T, 3C) -> out (B, T, C), NH heads
def _split_heads(qkv: np.ndarray, n_head: int):
    B, T, C3 = qkv.shape
    HS = C3 // 3 // n_head
    # (B, T, 3, NH, HS) -> three (B, NH, T, HS)
    parts = qkv.reshape(B, T, 3, n_head, HS).transpose(2, 0, 3, 1, 4)
    return parts[0], parts[1], parts[2], HS


def attention_forward(qkv: np.ndarray, n_head: int):
    """-> out (B, T, C), att (B, NH, T, T) (zero above the diagonal)."""
    B, T, _ = qkv.shape
    q, k, v, HS = _split_heads(qkv, n_head)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HS)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    att = np.exp(scores - scores.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)
    out = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, n_head * HS)
    return out, att


def attention_backward(dout: np.ndarray, qkv: np.ndarray, n_head: int) -> np.ndarray:
    """-> dqkv (B, T, 3C)."""
    B, T, C3 = qkv.shape
    q, k, v, HS = _split_heads(qkv, n_head)
    _, att = attention_forward(qkv, n_head)
    dout_h = dout.reshape(B, T, n_head, HS).transpose(0, 2, 1, 3)  # (B, NH, T, HS)
    dv = att.transpose(0, 1, 3, 2) @ dout_h
    datt = dout_h @ v.transpose(0, 1, 3, 2)
    # softmax backward, row by row: ds_j = p_j (dp_j - sum_i p_i dp_i); masked entries have p = 0
    dscores = att * (datt - (att * datt).sum(axis=-1, keepdims=True)) / np.sqrt(HS)
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    stacked = np.stack([dq, dk, dv])  # (3, B, NH, T, HS)
    return stacked.transpose(1, 3, 0, 2, 4).reshape(B, T, C3)


# --- dropout: the keep mask is the counter hash femto documents (csrc/femto.h, femto/ops/dropout.py)
def dropout_keep(seed: int, N: int, p: float) -> np.ndarray:
    """Boolean keep mask of N elements: uniform(seed, i) >= p, uniform from a 32-bit integer hash."""
    i = np.arange(N, dtype=np.uint32)
    s = np.uint32(seed)
    with np.errstate(over="ignore"):
        x = (i * np.uint32(0x9E3779B9)) ^ (s * np.uint32(0x85EBCA6B) + np.uint32(0x632BE59B))
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    uniform = (x >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return uniform >= np.float32(p)


def dropout_forward(inp: np.ndarray, p: float, seed: int) -> np.ndarray:
    keep = dropout_keep(seed, inp.size, p).reshape(inp.shape)
    return np.where(keep, inp / (1.0 - p), 0.0)


def dropout_backward(dout: np.ndarray, p: float, seed: int) -> np.ndarray:
    keep = dropout_keep(seed, dout.size, p).reshape(dout.shape)
    return np.where(keep, dout / (1.0 - p), 0.0)


# --- cross-entropy: logits (..., V), targets (...) -> mean over rows of -log softmax[target]
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def crossentropy_forward(logits: np.ndarray, targets: np.ndarray) -> float:
    V = logits.shape[-1]
    logp = _log_softmax(logits.reshape(-1, V))
    return float(-logp[np.arange(logp.shape[0]), targets.reshape(-1)].mean())


def crossentropy_backward(dloss: float, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    V = logits.shape[-1]
    probs = np.exp(_log_softmax(logits.reshape(-1, V)))
    N = probs.shape[0]
    probs[np.arange(N), targets.reshape(-1)] -= 1.0
    return (probs * (dloss / N)).reshape(logits.shape)


# --- optimizer kernels (no backward): AdamW as in PyTorch, decoupled decay applied to the weights
def adamw_update(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, grad_scale, step):
    """-> new (param, m, v)."""
    g = grad * grad_scale
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    mhat = m / (1.0 - beta1**step)
    vhat = v / (1.0 - beta2**step)
    param = param * (1.0 - lr * weight_decay) - lr * mhat / (np.sqrt(vhat) + eps)
    return param, m, v


def clip_grad_scale(grad_sumsq, grad_clip, grad_divisor):
    """The factor adamw_update applies to raw gradients: 1 / grad_divisor, times clip_grad_norm_'s
    min(1, grad_clip / (norm + 1e-6)) with norm = sqrt(grad_sumsq) / grad_divisor (no clip if None)."""
    scale = 1.0 / grad_divisor
    if grad_sumsq is not None and grad_clip > 0:
        scale *= min(1.0, grad_clip / (np.sqrt(grad_sumsq) / grad_divisor + 1e-6))
    return scale


def sum_squares(inp: np.ndarray) -> float:
    return float(np.dot(inp.reshape(-1), inp.reshape(-1)))


def nonfinite_forward(*inputs: np.ndarray) -> np.ndarray:
    """(1,) flag: 1.0 when any element of any input is NaN or +-inf (tested in float64)."""
    found = any(not np.isfinite(np.asarray(x, np.float64)).all() for x in inputs)
    return np.array([1.0 if found else 0.0])
