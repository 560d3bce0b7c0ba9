"""`femto export --hf DIR`: a run as a Hugging Face transformers GPT-2 folder.

The folder holds config.json (GPT2Config), model.safetensors (GPT2LMHeadModel's names and Conv1D
layouts: femto's (out, in) linear weights transposed), tokenizer.json (built with the `tokenizers`
library, imported lazily) and tokenizer_config.json, so `pipeline("text-generation", DIR)` of
transformers runs the model. femto's model is nanoGPT's GPT-2: pre-LN blocks, LayerNorm eps 1e-5, the tanh GELU
(transformers' "gelu_new"), lm_head tied to wte. Nothing here needs torch.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from femto import checkpoint as ckpt
from femto.errors import ConfigError
from femto.fileio import fsync_directory, write_atomic
from femto.model import GPTConfig
from femto.tokenizers.base import Tokenizer, load_tokenizer

LAYER_NORM_EPS = 1e-5  # femto's layernorm kernels (PyTorch's default, as GPT-2 uses)
GELU = "gelu_new"  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): femto's gelu kernels
# femto's nn.Linear-layout (out, in) weights that GPT-2's Conv1D stores as (in, out)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
INSTALL_HINT = "install the Hugging Face extra: pip install 'femto[hf]'"


def gpt2_config(model: GPTConfig, eot_id: int | None) -> dict:
    """transformers' GPT2Config for femto's model shape, as config.json's dictionary."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": model.vocab_size,
        "n_positions": model.block_size,
        "n_ctx": model.block_size,
        "n_embd": model.n_embd,
        "n_layer": model.n_layer,
        "n_head": model.n_head,
        "n_inner": 4 * model.n_embd,
        "activation_function": GELU,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": model.dropout,
        "embd_pdrop": model.dropout,
        "attn_pdrop": 0.0,  # femto's fused attention kernel drops no attention probabilities
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


def gpt2_weights(model: GPTConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel's state dict (tied lm_head left out, as transformers saves it): Conv1D
    weights transposed to (in, out); a --no-bias model gets zero biases, which GPT-2 always has."""
    out = {}
    for name, shape in model.param_shapes().items():
        array = weights[name]
        out[name] = np.ascontiguousarray(array.T if name.endswith(CONV1D) else array)
    if not model.bias:
        C = model.n_embd
        zeros = {
            "ln_1.bias": C, "attn.c_attn.bias": 3 * C, "attn.c_proj.bias": C, "ln_2.bias": C,
            "mlp.c_fc.bias": 4 * C, "mlp.c_proj.bias": C,
        }  # fmt: skip
        for i in range(model.n_layer):
            for name, size in zeros.items():
                out[f"transformer.h.{i}.{name}"] = np.zeros(size, np.float32)
        out["transformer.ln_f.bias"] = np.zeros(C, np.float32)
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, which the tokenizers ByteLevel pieces use."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _sentencepiece_merges(pieces: list[str]) -> list[tuple[str, str]]:
    """BPE merges implied by a sentencepiece BPE vocabulary: each piece that two pieces join into,
    in the order of the joined piece's id (its merge priority), as transformers' converter does."""
    ids = {p: i for i, p in enumerate(pieces)}
    merges = []
    for piece, rank in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                merges.append((rank, ids[left], ids[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def hf_tokenizer(tokenizer: Tokenizer):
    """A `tokenizers.Tokenizer` that gives the same ids as femto's char, byte or sentencepiece
    tokenizer (the end-of-text marker, if any, as a special token)."""
    try:
        from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise ConfigError(
            f"femto export --hf needs the tokenizers package: {INSTALL_HINT}"
        ) from None
    eot = getattr(tokenizer, "eot", None)
    if tokenizer.name == "char":
        vocab = {piece: i for i, piece in enumerate(tokenizer.chars)}
        if eot is not None:
            vocab[eot] = tokenizer.eot_id
        # no merges and no pre-tokenizer: the text splits into its characters, each one token
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.decoder = decoders.Fuse()
    elif tokenizer.name == "byte":
        table = _bytes_to_unicode()
        hf = HFTokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
    elif tokenizer.name == "sentencepiece":
        scores = tokenizer.piece_scores()
        pieces = [p for p, _ in scores]
        if tokenizer.model_type == "bpe":
            vocab = {p: i for i, p in enumerate(pieces)}
            model = models.BPE(
                vocab=vocab, merges=_sentencepiece_merges(pieces), unk_token=pieces[0],
                byte_fallback=True, fuse_unk=True,
            )  # fmt: skip
        else:
            model = models.Unigram(scores, unk_id=0, byte_fallback=True)
        hf = HFTokenizer(model)
        # femto trains with identity normalisation and no dummy prefix: spaces are U+2581 in pieces
        hf.normalizer = normalizers.Replace(" ", "\u2581")
        hf.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        hf.add_tokens([AddedToken("\n", normalized=False, special=False)])  # a user symbol
    else:
        raise ConfigError(
            f"femto export --hf knows the char, byte and sentencepiece tokenizers, not "
            f"{tokenizer.name!r} (a plugin)"
        )
    if eot is not None:
        hf.add_special_tokens([AddedToken(eot, normalized=False, special=True)])
    return hf


def export_hf(run_dir: pathlib.Path, out_dir: pathlib.Path, checkpoint_dir: pathlib.Path) -> dict:
    """Write the run in checkpoint_dir (the run itself or its best/) as a transformers folder
    out_dir, which must not exist or be empty; built under a temporary name and renamed into place,
    so a failure leaves nothing half-written. Returns the GPT-2 config written."""
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(
            f"--hf {out_dir} already exists and is not an empty directory: pick a new folder "
            "(nothing is overwritten)"
        )
    if not out_dir.parent.is_dir():
        raise ConfigError(f"--hf {out_dir}: directory {out_dir.parent} does not exist")
    state = ckpt.load_state(checkpoint_dir)
    tokenizer = load_tokenizer(pathlib.Path(checkpoint_dir), state.tokenizer)
    weights = ckpt.load_weights(checkpoint_dir, state)
    hf_tok = hf_tokenizer(tokenizer)
    eot_id = tokenizer.eot_id
    config = gpt2_config(state.model, eot_id)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": state.model.block_size,
        "clean_up_tokenization_spaces": False,
        "femto_tokenizer": tokenizer.name,
    }
    if eot_id is not None:
        tokenizer_config.update(eos_token=tokenizer.eot, bos_token=tokenizer.eot)
    # generation stops at end-of-text, as `femto sample --stop-at-eot` does
    generation = {}
    if eot_id is not None:
        generation.update(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        meta = {"format": "pt", "femto_step": str(state.step), "femto_run": str(run_dir)}
        tensors = gpt2_weights(state.model, weights)
        ckpt.save_safetensors(staging / "model.safetensors", tensors, meta)
        for name, content in (
            ("config.json", config),
            ("generation_config.json", generation),
            ("tokenizer_config.json", tokenizer_config),
        ):
            if not content:
                continue
            write_atomic(staging / name, (json.dumps(content, indent=2) + "\n").encode("utf-8"))
        write_atomic(staging / "tokenizer.json", hf_tok.to_str(pretty=True).encode("utf-8"))
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
        fsync_directory(out_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return config
