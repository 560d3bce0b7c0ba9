"""Starting a new run from another run's weights (`femto train --init-from RUN`), for fine-tuning.

The source run fixes the model's shape and the tokenizer (its ids are what the weights mean); the
new run brings its own corpus, schedule and seed. Nothing in the source run is written.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, replace

import numpy as np

from femto import checkpoint as ckpt
from femto.errors import ConfigError
from femto.model import GPTConfig
from femto.tokenizers.base import Tokenizer, load_tokenizer

# model options a fine-tuning run may change: everything else is the shape of the source's weights
TUNABLE_MODEL_OPTIONS = ("dropout",)


@dataclass
class InitSource:
    model: GPTConfig
    tokenizer: Tokenizer
    weights: dict[str, np.ndarray]
    tokenizer_options: dict  # the source's tokenizer, vocab and sp_model_type training options


def load_init_source(
    source: pathlib.Path, model_options: dict, tokenizer: str | None, vocab: int | None
) -> InitSource:
    """The source run's model config (with `dropout` overridable), tokenizer and weights.

    `model_options` and `tokenizer` / `vocab` are what the user gave for the new run (None or
    absent: not given); any that contradict the source are one error naming them all.
    """
    source = pathlib.Path(source)
    if not ckpt.has_checkpoint(source):
        raise ConfigError(
            f"--init-from {source}: no run there (no {ckpt.CONFIG_FILE}); give the directory of a "
            "run made by `femto train --out DIR`"
        )
    state = ckpt.load_state(source)
    saved_model = state.model.to_dict()
    problems = [
        f"--{k.replace('_', '-')} {v!r} (the source has {saved_model[k]!r})"
        for k, v in model_options.items()
        if v is not None and k not in TUNABLE_MODEL_OPTIONS and saved_model.get(k) != v
    ]
    saved_kind = state.train.get("tokenizer", state.tokenizer.get("kind"))
    if tokenizer is not None and tokenizer != saved_kind:
        problems.append(f"--tokenizer {tokenizer!r} (the source uses {saved_kind!r})")
    if vocab is not None and vocab != state.model.vocab_size:
        problems.append(f"--vocab {vocab} (the source's vocabulary has {state.model.vocab_size})")
    if problems:
        raise ConfigError(
            f"--init-from {source} fixes the model and its tokenizer, and these options contradict "
            f"it: {'; '.join(problems)}. Drop them to fine-tune the source's model"
        )
    tok = load_tokenizer(source, state.tokenizer)
    if tok.vocab_size != state.model.vocab_size:
        raise ConfigError(
            f"--init-from {source}: the tokenizer has {tok.vocab_size} symbols but the model's "
            f"vocab_size is {state.model.vocab_size}"
        )
    weights = ckpt.load_weights(source, state)
    model = state.model
    if model_options.get("dropout") is not None:
        model = replace(model, dropout=model_options["dropout"])
    tokenizer_options = {
        "tokenizer": saved_kind,
        "vocab": state.train.get("vocab"),
        "sp_model_type": state.train.get("sp_model_type"),
    }
    return InitSource(model, tok, weights, tokenizer_options)
