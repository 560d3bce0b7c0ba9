"""femto's weights in the PyTorch twin of bench/torch_gpt.py: the model the speed benchmarks time
against must compute what femto computes, so loss, gradients and the last-position logits of
generation agree. Runs where torch is installed (the `bench` extra); CI, without it, skips."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

from femto.graph import no_grad
from femto.model import GPT, GPTConfig

torch = pytest.importorskip("torch", reason="torch is optional (the bench extra)")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
from torch_gpt import TorchGPT, femto_to_twin_name  # noqa: E402

CFG = GPTConfig(vocab_size=29, block_size=16, n_layer=2, n_head=2, n_embd=24)


@pytest.fixture
def pair(cpu_backend):
    """femto's model with non-trivial weights, and the twin holding the same weights."""
    rng = np.random.default_rng(5)
    model = GPT(CFG, cpu_backend, rng)
    # random LayerNorm gains and biases too, so a swapped or dropped parameter shows
    weights = {
        name: (a + 0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        for name, a in model.to_numpy().items()
    }
    model.load_numpy(weights)
    twin = TorchGPT(CFG.vocab_size, CFG.block_size, CFG.n_layer, CFG.n_head, CFG.n_embd).double()
    twin.load_femto(weights)
    assert sum(p.numel() for p in twin.parameters()) == sum(a.size for a in weights.values())
    return model, twin


def test_loss_and_gradients_agree(pair):
    model, twin = pair
    rng = np.random.default_rng(6)
    idx = rng.integers(0, CFG.vocab_size, (3, CFG.block_size)).astype(np.int32)
    targets = rng.integers(0, CFG.vocab_size, (3, CFG.block_size)).astype(np.int32)
    _, loss = model(idx, targets)
    loss.backward()
    _, twin_loss = twin(torch.from_numpy(idx).long(), torch.from_numpy(targets).long())
    twin_loss.backward()
    assert loss.item() == pytest.approx(twin_loss.item(), rel=1e-5)
    twin_params = dict(twin.named_parameters())
    for name, p in model.params.items():
        expected = twin_params[femto_to_twin_name(name)].grad.numpy()
        np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-3, atol=1e-6, err_msg=name)


def test_last_position_logits_agree_with_femtos_cached_window(pair):
    """The twin's last-only forward (what the sampling benchmark times) is the full forward's last
    row, and femto's forward_cached(last_only=True) gives the same logits."""
    model, twin = pair
    idx = np.random.default_rng(7).integers(0, CFG.vocab_size, (1, CFG.block_size))
    ids = torch.from_numpy(idx).long()
    with torch.inference_mode():
        full, _ = twin(ids, last_only=False)
        last, _ = twin(ids)
        caches = twin.new_caches(1)
        for c in caches:
            c["k"], c["v"] = c["k"].double(), c["v"].double()
        cached, _ = twin(ids, caches=caches)
    assert last.shape == (1, 1, CFG.vocab_size)
    np.testing.assert_allclose(last.numpy()[0, 0], full.numpy()[0, -1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cached.numpy(), last.numpy(), rtol=1e-9, atol=1e-12)
    with no_grad():
        femto_last = model.forward_cached(idx.astype(np.int32), model.new_cache(1), last_only=True)
    np.testing.assert_allclose(femto_last.numpy()[0, 0], last.numpy()[0, 0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="last_only with targets"):
        twin(ids, ids, last_only=True)
