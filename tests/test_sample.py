"""Generation: seeded reproducibility, the key/value cache against full recomputation (also past
block_size, where the window slides), temperature / top-k, prompts, and streaming decode."""

from __future__ import annotations

import numpy as np
import pytest

from femto.errors import ConfigError, ShapeError, TokenIdError, TokenizerError
from femto.graph import Tensor, no_grad
from femto.model import GPT, GPTConfig
from femto.ops import attention_cached
from femto.sample import TextStream, encode_prompt, generate, pick_token
from femto.tokenizers.char import CharTokenizer

CFG = GPTConfig(vocab_size=17, block_size=12, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture
def model(backend) -> GPT:
    rng = np.random.default_rng(0)
    model = GPT(CFG, backend, rng)
    # larger weights than GPT-2 init so the distribution is far from uniform and ties are unlikely
    model.load_numpy(
        {
            n: (a + rng.standard_normal(a.shape) * 0.5).astype(np.float32)
            for n, a in model.to_numpy().items()
        }
    )
    return model


def test_seeded_sampling_is_reproducible(model):
    a = generate(model, [1, 2, 3], 20, 1.0, None, np.random.default_rng(5))
    b = generate(model, [1, 2, 3], 20, 1.0, None, np.random.default_rng(5))
    c = generate(model, [1, 2, 3], 20, 1.0, None, np.random.default_rng(6))
    assert a == b and a != c and len(a) == 20
    assert all(0 <= t < CFG.vocab_size for t in a)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_kv_cache_gives_the_tokens_of_full_recomputation(model, temperature):
    # 3 prompt tokens + 25 new ones: the window (12) fills and then slides 16 times
    cached = generate(model, [4, 5, 6], 25, temperature, 5, np.random.default_rng(1))
    full = generate(model, [4, 5, 6], 25, temperature, 5, np.random.default_rng(1), use_cache=False)
    assert cached == full


def test_streaming_callback_sees_every_token_in_order(model):
    seen = []
    out = generate(model, [0], 7, 0.0, on_token=seen.append)
    assert seen == out
    assert generate(model, [0], 0, 0.0) == []


def test_pick_token_greedy_top_k_and_temperature():
    logits = np.array([0.0, 3.0, 1.0, 2.9])
    rng = np.random.default_rng(0)
    assert pick_token(logits, 0.0, None, rng) == 1
    assert pick_token(logits, 1.0, 1, rng) == 1
    draws = [pick_token(logits, 1.0, 2, rng) for _ in range(400)]
    assert set(draws) == {1, 3}  # top-2 never picks the others
    hot = [pick_token(logits, 100.0, None, rng) for _ in range(400)]
    assert set(hot) == {0, 1, 2, 3}  # a high temperature flattens the distribution
    cold = [pick_token(logits, 0.05, None, rng) for _ in range(100)]
    assert cold.count(1) > 80


def test_sampling_option_errors(model):
    with pytest.raises(ConfigError, match="--temperature must be >= 0"):
        generate(model, [1], 3, -1.0, None, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="--top-k must be a positive integer"):
        generate(model, [1], 3, 1.0, 0, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="1..12 prompt tokens"):
        generate(model, list(range(13)), 3, 0.0)


def test_prompts():
    tok = CharTokenizer(sorted(set("\nabc ")))
    ids, notice = encode_prompt(tok, "", 8)
    assert ids == tok.encode("\n") and notice is None
    ids, notice = encode_prompt(tok, "abcabcabc a", 8)
    assert (
        tok.decode(ids) == "abcabc a" and "11 tokens" in notice and "keeping its last 8" in notice
    )
    with pytest.raises(TokenizerError, match="'z'"):
        encode_prompt(tok, "abz", 8)


def test_text_stream_waits_for_whole_characters():
    class Bytes:
        """A byte-level stand-in: ids are UTF-8 bytes."""

        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    pieces = []
    stream = TextStream(Bytes(), pieces.append, context=list(b"a"))
    for b in "é!".encode():
        stream(b)
    stream.flush()
    assert pieces == ["é", "!"]


def test_attention_cached_checks_shapes(cpu_backend):
    qkv = Tensor.zeros((1, 2, 12), cpu_backend)
    cache = Tensor.zeros((1, 2, 4, 2), cpu_backend)
    with no_grad():
        with pytest.raises(ShapeError, match="pos \\+ T <= TMAX=4"):
            attention_cached(qkv, cache, cache, 2, 3)
        with pytest.raises(ShapeError, match=r"needs kcache \(B=1, NH=2, TMAX, HS=2\)"):
            attention_cached(qkv, Tensor.zeros((1, 2, 4, 3), cpu_backend), cache, 2, 0)
        out = attention_cached(qkv, cache, cache, 2, 2)
    assert out.shape == (1, 2, 4)


@pytest.mark.parametrize("prompt_length", [1, CFG.block_size])  # the captured forwards start these
def test_captured_prompts_give_the_tokens_of_full_recomputation(model, prompt_length):
    prompt = [int(i) % CFG.vocab_size for i in range(3, 3 + prompt_length)]
    cached = generate(model, prompt, 20, 0.9, None, np.random.default_rng(2))
    full = generate(model, prompt, 20, 0.9, None, np.random.default_rng(2), use_cache=False)
    assert cached == full


def test_generation_state_is_reused_and_renewed_when_parameters_move(cpu_backend):
    from femto.optim import AdamW
    from femto.sample import _GENERATIONS

    model = GPT(CFG, cpu_backend, np.random.default_rng(0))
    first = generate(model, [1, 2], 30, 0.0)
    state = _GENERATIONS[model]
    assert generate(model, [1, 2], 30, 0.0) == first and _GENERATIONS[model] is state
    AdamW(model.params)  # packs the parameters into new buffers: the captures would read the old
    assert generate(model, [1, 2], 30, 0.0) == first
    assert _GENERATIONS[model] is not state


def test_a_prompt_id_outside_the_vocabulary_is_named(model):
    with pytest.raises(TokenIdError, match=f"token id {CFG.vocab_size}"):
        generate(model, [CFG.vocab_size], 3, 0.0)


def test_generate_from_inside_a_generation_gets_its_own_state(model):
    # an on_token callback that samples too: the inner call must not wait for the outer one's
    # lock, nor share its cache
    inner: list[list[int]] = []
    alone = generate(model, [2], 5, 0.0)

    def on_token(token: int) -> None:
        if not inner:
            inner.append(generate(model, [2], 5, 0.0))

    outer = generate(model, [1, 2], 20, 0.0, on_token=on_token)
    assert inner == [alone]
    assert outer == generate(model, [1, 2], 20, 0.0)
