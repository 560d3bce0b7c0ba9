"""Preparing one run on every rank of a data-parallel job.

Rank 0 alone reads the run directory and does the checks (train.prepare_run); it sends the others
the run's state, its tokenizer (as files) and, when resuming, the saved arrays, so only rank 0 needs
the run directory. The token cache is built by rank 0 first, then by the first rank of every other
host, then by the rest: on a shared filesystem the later ones find it cached. A user error is
reported once, by the rank that met it, and every rank stops.
"""

from __future__ import annotations

import base64
import json
import pathlib
import tempfile
from collections.abc import Callable

from femto import checkpoint as ckpt
from femto import train as training
from femto.data import check_windows, encode_corpus, resolve_corpus, train_val_split
from femto.distributed import Communicator, PeerFailed
from femto.errors import FemtoError
from femto.model import GPTConfig
from femto.tokenizers.base import Tokenizer, load_tokenizer


def prepare_run(
    comm: Communicator,
    run_dir: pathlib.Path,
    model_options: dict,
    train_options: dict,
    cache_dir: pathlib.Path,
    data_home: pathlib.Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    tokenizer_progress: Callable[[int, int], None] | None = None,
) -> training.Run:
    """train.prepare_run on rank 0, and the same Run on every other rank (see the module's doc)."""
    if comm.size == 1:
        return training.prepare_run(
            run_dir, model_options, train_options, cache_dir, data_home, progress, tokenizer_progress
        )
    run, failure, manifest = None, None, None
    if comm.rank == 0:
        try:
            run = training.prepare_run(
                run_dir, model_options, train_options, cache_dir, data_home, progress, tokenizer_progress
            )
            manifest = _manifest(run)
        except FemtoError as exc:
            failure = exc
    message = json.loads(
        comm.bcast_bytes(
            None if comm.rank else json.dumps({"ok": failure is None, **(manifest or {})}).encode()
        )
    )
    if failure is not None:
        raise failure
    if not message["ok"]:
        raise PeerFailed("rank 0 stopped this run (its error is above)")

    if comm.rank != 0:
        try:
            run = _run_from(message, pathlib.Path(run_dir), data_home)
        except FemtoError as exc:
            failure = exc
    # the token cache: rank 0 built it above; now the first rank of each other host, then the rest
    for phase in (1, 2):
        comm.barrier()
        mine = 1 if comm.local_rank == 0 else 2
        if comm.rank != 0 and mine == phase and failure is None:
            try:
                _load_tokens(run, cache_dir, data_home)
            except FemtoError as exc:
                failure = exc
    failed = comm.allreduce_sum([float(failure is not None)])[0]
    if failure is not None:
        raise _naming_rank(failure, comm) from None
    if failed:
        raise PeerFailed("another rank stopped this run (its error is above)")

    if message["resumed"]:
        run.weights = comm.bcast_arrays(run.weights if comm.rank == 0 else None)
        run.optimizer_state = comm.bcast_arrays(run.optimizer_state if comm.rank == 0 else None)
    if message["initialised"]:
        run.init_weights = comm.bcast_arrays(run.init_weights if comm.rank == 0 else None)
    return run


def _naming_rank(exc: FemtoError, comm: Communicator) -> FemtoError:
    """The same error with 'rank R of N: ' in front, so the user knows which host to look at."""
    try:
        return type(exc)(f"{comm.name}: {exc}")
    except TypeError:  # an error class that takes more than a message
        return exc


def _manifest(run: training.Run) -> dict:
    """What the other ranks need to rebuild rank 0's Run: JSON, the tokenizer's files inside."""
    with tempfile.TemporaryDirectory(prefix="femto-tokenizer-") as tmp:
        description = run.tokenizer.save(pathlib.Path(tmp))
        files = {
            path.name: base64.b64encode(path.read_bytes()).decode("ascii")
            for path in sorted(pathlib.Path(tmp).iterdir())
            if path.is_file()
        }
    return {
        "state": run.state.to_json(),
        "resumed": run.resumed,
        "initialised": run.init_weights is not None,  # --init-from: the start comes from rank 0
        "tokenizer": {"description": description, "files": files},
    }


def _run_from(message: dict, run_dir: pathlib.Path, data_home: pathlib.Path | None) -> training.Run:
    raw = message["state"]
    state = ckpt.RunState(
        model=GPTConfig.from_dict(raw["model"]),
        train=raw["train"],
        step=raw["step"],
        tokens_seen=raw["tokens_seen"],
        best_val_loss=raw["best_val_loss"],
        rng=raw["rng"],
        tokenizer=raw["tokenizer"],
        timing=raw.get("timing") or {},
    )
    config = training.TrainConfig.from_dict(state.train)
    tokenizer = _tokenizer_from(message["tokenizer"])
    resolve_corpus(config.data, data_home)  # fails here, on this host, if the corpus is missing
    # the arrays come later, from rank 0; {} marks the run as resumed meanwhile
    arrays = {} if message["resumed"] else None
    return training.Run(run_dir, state, config, tokenizer, None, None, arrays, arrays)


def _tokenizer_from(shipped: dict) -> Tokenizer:
    with tempfile.TemporaryDirectory(prefix="femto-tokenizer-") as tmp:
        for name, data in shipped["files"].items():
            (pathlib.Path(tmp) / pathlib.Path(name).name).write_bytes(base64.b64decode(data))
        return load_tokenizer(pathlib.Path(tmp), shipped["description"])


def _load_tokens(run: training.Run, cache_dir: pathlib.Path, data_home) -> None:
    """Fill run's token splits from this host's token cache (encoding the corpus if missing)."""
    corpus = resolve_corpus(run.config.data, data_home)
    tokens = encode_corpus(corpus, run.tokenizer, cache_dir)
    run.train_tokens, run.val_tokens = train_val_split(tokens, training.VAL_FRACTION)
    T = run.state.model.block_size
    check_windows(run.train_tokens, T, f"the training split of {corpus.name!r}")
    check_windows(run.val_tokens, T, f"the validation split of {corpus.name!r}")
