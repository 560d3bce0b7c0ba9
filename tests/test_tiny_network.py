"""A two-layer network made of femto ops (embedding -> matmul -> gelu -> matmul -> crossentropy)
learns a fixed batch: 60 AdamW steps, through the adamw_update kernel, must cut the loss well below
its start. This exercises forward, backward and the optimizer together on every backend."""

from __future__ import annotations

import numpy as np

from femto.graph import Tensor
from femto.ops import cross_entropy, embedding, gelu, matmul

V, C, H, N = 11, 16, 32, 24
HYPER = {
    "lr": 1e-2,
    "beta1": 0.9,
    "beta2": 0.99,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "grad_clip": 0.0,
    "grad_divisor": 1.0,
}


def test_two_layer_network_learns_a_batch(backend):
    rng = np.random.default_rng(0)
    params = [
        Tensor.from_numpy(a.astype(np.float32), backend, requires_grad=True)
        for a in (
            rng.standard_normal((V, C)) * 0.5,  # wte
            rng.standard_normal((H, C)) / np.sqrt(C),  # w1
            np.zeros(H),  # b1
            rng.standard_normal((V, H)) / np.sqrt(H),  # w2
            np.zeros(V),  # b2
        )
    ]
    moments = [(backend.zeros(p.size), backend.zeros(p.size)) for p in params]
    id_array = rng.integers(0, V, (2, N // 2))  # (B, T)
    ids = Tensor.from_numpy(id_array, backend)
    # each id has one target, so the batch is learnable to ~0 loss by a per-token network
    targets = Tensor.from_numpy((3 * id_array + 1) % V, backend)

    def loss_fn() -> Tensor:
        wte, w1, b1, w2, b2 = params
        hidden = gelu(matmul(embedding(ids, wte), w1, b1))  # (B, T, H)
        return cross_entropy(matmul(hidden, w2, b2), targets)  # logits (B, T, V)

    losses = []
    for step in range(1, 61):
        for p in params:
            p.zero_grad()
        loss = loss_fn()
        losses.append(loss.item())
        loss.backward()
        for p, (m, v) in zip(params, moments):
            backend.run(
                "adamw_update", p.data, m, v, p.grad.data, None, N=p.size, **HYPER, step=step
            )
    assert np.isfinite(losses).all()
    assert abs(losses[0] - np.log(V)) < 1.0  # starts near uniform
    assert losses[-1] < 0.25 * losses[0], f"loss went {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert losses[-1] < min(losses[:10])
