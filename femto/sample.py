"""Text generation: prompt handling, temperature / top-k sampling, a key/value cache, streaming output.

Each new token costs one position of model compute while the context fits in block_size (the cache
holds every earlier key and value). Past block_size the window slides and is recomputed whole for
every token. Both kinds of forward run the same kernels on the same shapes every time (the position
is read on the device), so each is captured once and then replayed (Backend.capture), skipping the
graph's per-op Python, most of a small model's time. Picking a token from the final logits
(V floats) happens on the host; the model itself runs on its backend. Nothing here prints: text goes
to a callback.
"""

from __future__ import annotations

import logging
import math
import pathlib
import threading
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from femto import checkpoint as ckpt
from femto.backend.base import get_backend
from femto.errors import ConfigError, TokenizerError
from femto.graph import Tensor, no_grad
from femto.model import GPT
from femto.runlock import checkpoint_lock
from femto.tokenizers.base import Tokenizer, load_tokenizer
from femto.tokenizers.special import encode_text

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A trained model and its tokenizer, read from a run directory (for sample, eval, tokenize)."""

    model: GPT
    tokenizer: Tokenizer
    state: ckpt.RunState


def load_tokenizer_of(run_dir: pathlib.Path) -> tuple[Tokenizer, ckpt.RunState]:
    """The tokenizer and state of a run, read as one checkpoint even while a trainer saves."""
    with checkpoint_lock(run_dir, exclusive=False):
        state = ckpt.load_state(run_dir)
        return load_tokenizer(pathlib.Path(run_dir), state.tokenizer), state


def load_run(run_dir: pathlib.Path, device: str = "cpu") -> LoadedRun:
    """The model (weights checked against config.json) and tokenizer of a run; read-only, and
    consistent while a trainer saves (its commit waits for this read, and this read for it)."""
    with checkpoint_lock(run_dir, exclusive=False):
        state = ckpt.load_state(run_dir)
        tokenizer = load_tokenizer(pathlib.Path(run_dir), state.tokenizer)
        weights = ckpt.load_weights(run_dir, state)
    if tokenizer.vocab_size != state.model.vocab_size:
        raise ckpt.CheckpointError(
            f"{run_dir}: the tokenizer has {tokenizer.vocab_size} symbols but the model's vocab_size "
            f"is {state.model.vocab_size}"
        )
    model = GPT(state.model, get_backend(device))
    model.load_numpy(weights, str(pathlib.Path(run_dir) / ckpt.MODEL_FILE))
    return LoadedRun(model, tokenizer, state)


def encode_prompt(
    tokenizer: Tokenizer, text: str, block_size: int, allow_special: bool = False
) -> tuple[list[int], str | None]:
    """Prompt ids (an empty prompt starts from a newline) cut to the last block_size tokens, and a
    notice when they were cut. Text the tokenizer cannot encode raises its TokenizerError. The
    end-of-text marker in the text is ordinary text unless allow_special."""
    if text:
        ids = encode_text(tokenizer, text, allow_special)
    else:
        try:
            ids = tokenizer.encode("\n")
        except TokenizerError:
            raise TokenizerError(
                "an empty prompt starts from a newline, which this run's tokenizer cannot encode: "
                "give a prompt (--prompt TEXT)"
            ) from None
    if not ids:
        raise TokenizerError(f"the prompt {text!r} encodes to no tokens")
    notice = None
    if len(ids) > block_size:
        notice = (
            f"prompt is {len(ids)} tokens, longer than block_size {block_size}: "
            f"keeping its last {block_size}"
        )
        ids = ids[-block_size:]
    return ids, notice


def check_sampling(temperature: float, top_k: int | None, max_new_tokens: int) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k must be a positive integer, got {top_k}")
    if max_new_tokens < 0:
        raise ConfigError(f"--tokens must be >= 0, got {max_new_tokens}")


def pick_token(
    logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator
) -> int:
    """One token id from logits (V,): argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top_k largest logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits / temperature
    if top_k is not None and top_k < scaled.size:
        kth = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    cdf = np.cumsum(probs)
    # inverse-CDF draw: one uniform per token, so a seed fixes the whole sequence
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), cdf.size - 1))


def generate(
    model: GPT,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    rng: np.random.Generator | None = None,
    on_token: Callable[[int], None] | None = None,
    use_cache: bool = True,
    stop_ids: Collection[int] = (),
) -> list[int]:
    """Continue prompt_ids (1..block_size ids) by max_new_tokens tokens; returns only the new ones.
    Generation ends early after a token in stop_ids (e.g. the end-of-text id), which is returned.

    use_cache=False recomputes the whole window for every token (the reference the cache is tested
    against, and a benchmark baseline).
    """
    check_sampling(temperature, top_k, max_new_tokens)
    block_size = model.config.block_size
    ids = [int(i) for i in prompt_ids]
    if not 1 <= len(ids) <= block_size:
        raise ConfigError(f"generate needs 1..{block_size} prompt tokens, got {len(ids)}")
    if temperature > 0 and rng is None:
        raise ConfigError("sampling with temperature > 0 needs a seeded np.random.Generator")
    if not use_cache:
        with no_grad():
            return _generate(
                model, ids, max_new_tokens, temperature, top_k, rng, on_token, None, stop_ids
            )
    generation = _generation_of(model)
    if not generation.lock.acquire(blocking=False):
        # the model's kept state is in use (another thread, or a generate() from an on_token
        # callback): this call gets a state of its own rather than waiting or sharing its cache
        generation = _Generation(model)
        generation.lock.acquire()
    try:
        with no_grad():
            return _generate(
                model, ids, max_new_tokens, temperature, top_k, rng, on_token, generation, stop_ids
            )
    finally:
        generation.lock.release()


def _generate(
    model: GPT,
    ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    rng: np.random.Generator | None,
    on_token: Callable[[int], None] | None,
    generation: _Generation | None,
    stop_ids: Collection[int] = (),
) -> list[int]:
    """generate()'s loop, under no_grad; without a generation state, every token recomputes the
    window through the graph."""
    block_size = model.config.block_size
    new: list[int] = []
    if generation is None:
        logits = _window_logits(model, ids, None)
    else:
        cache, window, one_token = generation.cache, generation.window, generation.one_token
        V = model.config.vocab_size
        if len(ids) in (1, block_size) and all(0 <= i < V for i in ids):
            # the captured forwards start a prompt of one token or a full window; an id outside
            # the vocabulary goes to the graph instead, whose embedding names it
            logits = (one_token if len(ids) == 1 else window).logits(model, ids, 0)
        else:
            logits = _window_logits(model, ids, cache)
    for _ in range(max_new_tokens):
        token = pick_token(logits, temperature, top_k, rng)
        ids.append(token)
        new.append(token)
        if on_token is not None:
            on_token(token)
        if len(new) == max_new_tokens or token in stop_ids:
            break
        if generation is not None and cache.length < block_size:
            logits = one_token.logits(model, [token], cache.length)
        elif generation is not None:
            # The window is full, so it slides: every token moves to a new position, and the
            # positions are learned absolute embeddings, so every cached key and value is stale.
            # Recompute the cache from the last block_size tokens (what nanoGPT's crop does).
            logits = window.logits(model, ids[-block_size:], 0)
        else:
            logits = _window_logits(model, ids[-block_size:], None)
    return new


def _window_logits(model: GPT, ids: Sequence[int], cache) -> np.ndarray:
    """Logits (V,) after `ids` (at most block_size), refilling `cache` from position 0 if given."""
    x = np.array([ids], dtype=np.int32)  # (1, T)
    if cache is None:
        logits, _ = model(x)
    else:
        cache.length = 0
        logits = model.forward_cached(x, cache, last_only=True)  # (1, 1, V)
    return logits.numpy()[0, -1]  # (V,): the last position predicts the next token


class _CapturedForward:
    """forward_cached of T new ids at a given position, on input buffers of its own: the first call
    runs the graph under Backend.capture, later calls write the new ids and positions into those
    buffers and replay the plan, skipping the graph's per-op Python. The ids need no range check on
    replay: the first call's were checked by the captured forward, and every later id is a
    pick_token index into V logits (or a prompt id generate() checked)."""

    def __init__(self, backend, cache, T: int):
        self.cache = cache
        self.ids = Tensor.from_numpy(np.zeros((1, T), np.int32), backend)
        self.positions = Tensor.from_numpy(np.arange(T, dtype=np.int32), backend)
        self.plan = None
        self.out: Tensor | None = None

    def logits(self, model: GPT, ids: Sequence[int], pos: int) -> np.ndarray:
        """Logits (V,) after `ids` placed at positions pos.., which the cache must already hold
        everything before."""
        T = self.ids.shape[1]
        self.ids.copy_from_numpy(np.array([ids], dtype=np.int32))
        if self.positions.value_range[0] != pos:
            self.positions.copy_from_numpy(np.arange(pos, pos + T, dtype=np.int32))
        self.cache.length = pos
        backend = model.backend
        if self.plan is None:
            with backend.capture() as plan:
                self.out = model.forward_cached(
                    self.ids, self.cache, last_only=True, positions=self.positions
                )
            self.plan = plan
        else:
            backend.replay(self.plan)
            self.cache.length = pos + T  # what forward_cached would have advanced it to
        return self.out.numpy()[0, -1]


class _Generation:
    """What generate() keeps for a model between calls: a batch-1 cache and the captured forwards
    of a full window and of one token, valid while the model's parameters keep the buffers they
    were captured with. It holds no reference to the model (it is kept in a weak mapping by it)."""

    def __init__(self, model: GPT):
        self.buffers = [p.data for p in model.params.values()]
        self.cache = model.new_cache(1)
        self.window = _CapturedForward(model.backend, self.cache, model.config.block_size)
        self.one_token = _CapturedForward(model.backend, self.cache, 1)
        self.lock = threading.Lock()  # one generation at a time uses the cache

    def is_current(self, model: GPT) -> bool:
        params = model.params.values()
        return len(params) == len(self.buffers) and all(
            p.data is b for p, b in zip(params, self.buffers)
        )


_GENERATIONS: weakref.WeakKeyDictionary[GPT, _Generation] = weakref.WeakKeyDictionary()


def _generation_of(model: GPT) -> _Generation:
    generation = _GENERATIONS.get(model)
    if generation is None or not generation.is_current(model):
        generation = _GENERATIONS[model] = _Generation(model)
    return generation


def show_text(tokenizer: Tokenizer, ids: Sequence[int], eot_text: str = "\n\n") -> str:
    """The text of `ids` for a reader: each end-of-text id as `eot_text` (a document break)."""
    eot_id = getattr(tokenizer, "eot_id", None)
    ids = [int(i) for i in ids]
    if eot_id is None or eot_id not in ids:
        return tokenizer.decode(ids)
    documents, current = [], []
    for token in ids:
        if token == eot_id:
            documents.append(current)
            current = []
        else:
            current.append(token)
    return eot_text.join(tokenizer.decode(d) for d in [*documents, current])


class TextStream:
    """Turns a stream of ids into text pieces for `write`, incrementally: each token is decoded with
    a few ids before it (CONTEXT_IDS, for tokenizers whose pieces read differently at a boundary)
    and only the text past theirs is written. A trailing U+FFFD is held back until a later token
    completes the character (or MAX_PENDING ids show it never will). An end-of-text id is written
    as `eot_text` (a document break), not as its marker."""

    CONTEXT_IDS = 8
    MAX_PENDING = 8  # UTF-8 needs at most 4 bytes; a longer wait is an invalid sequence

    def __init__(
        self,
        tokenizer: Tokenizer,
        write: Callable[[str], None],
        context: Sequence[int] = (),
        eot_text: str = "\n\n",
    ):
        self.tokenizer, self.write, self.eot_text = tokenizer, write, eot_text
        self.eot_id = getattr(tokenizer, "eot_id", None)
        context = [int(i) for i in context]
        if self.eot_id in context:  # only the document being written matters
            context = context[len(context) - context[::-1].index(self.eot_id) :]
        self.context = context[-self.CONTEXT_IDS :]
        self.pending: list[int] = []
        # a context that ends mid-character (at most 3 of its 4 bytes): the first new tokens may
        # complete it, so its last ids wait with them and the character is written whole
        for _ in range(3):
            if not self.context or not tokenizer.decode(self.context).endswith("\ufffd"):
                break
            self.pending.insert(0, self.context.pop())

    def _emit(self, final: bool) -> None:
        before = self.tokenizer.decode(self.context) if self.context else ""
        text = self.tokenizer.decode(self.context + self.pending)
        if not final and text.endswith("\ufffd") and len(self.pending) < self.MAX_PENDING:
            return  # an incomplete UTF-8 sequence: wait for the next token
        new = text[len(before) :] if text.startswith(before) else self.tokenizer.decode(self.pending)
        if new:
            self.write(new)
        self.context = (self.context + self.pending)[-self.CONTEXT_IDS :]
        self.pending = []

    def __call__(self, token: int) -> None:
        if self.eot_id is not None and int(token) == self.eot_id:
            self.flush()
            self.write(self.eot_text)
            self.context, self.pending = [], []
            return
        self.pending.append(int(token))
        self._emit(final=False)

    def flush(self) -> None:
        if self.pending:
            self._emit(final=True)
