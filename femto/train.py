"""Training: TrainConfig, preparing or resuming a run, and the loop (AdamW, warm-up + cosine, eval, saves).

`prepare_run` does every check that can fail on user input before anything is written; `train` then
runs on the backend the config names and reports through a callback, never by printing. It knows one
process: the single place where gradients are complete (before `optimizer.step`) is where a
data-parallel all-reduce belongs.
"""

from __future__ import annotations

import logging
import math
import pathlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from femto import checkpoint as ckpt
from femto.backend.base import get_backend, parse_device_spec
from femto.data import (
    check_windows,
    encode_corpus,
    get_batch,
    resolve_corpus,
    train_tokenizer,
    train_val_split,
)
from femto.errors import CheckpointError, ConfigError, TokenizerError
from femto.finetune import load_init_source
from femto.graph import Tensor, no_grad
from femto.model import GPT, GPTConfig
from femto.optim import AdamW
from femto.schedule_notice import schedule_notice
from femto.tokenizers.base import Tokenizer, load_tokenizer, save_tokenizer

logger = logging.getLogger(__name__)

VAL_FRACTION = 0.1
# options that define what a run is: changing them on resume would silently train something else
RUN_IDENTITY = ("data", "tokenizer", "vocab", "sp_model_type", "seed", "init_from")


@dataclass(frozen=True)
class TrainConfig:
    """Training options; the CLI's options map one-to-one onto these fields. Defaults train the
    Shakespeare character model (nanoGPT's CPU 'baby GPT' schedule, longer) in about ten minutes on
    2 cores."""

    data: str = "shakespeare"
    tokenizer: str = "char"
    vocab: int | None = None
    sp_model_type: str | None = None
    device: str = "cpu"
    steps: int = 2500
    lr_decay_steps: int | None = None  # None: --steps (the cosine ends at the last step)
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 20
    save_every: int = 500
    log_every: int = 10
    sample_tokens: int = 200
    seed: int = 1337
    keep_best: bool = False
    init_from: str | None = None

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "save_every")
        for name in (*positive, "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{_flag(name)} must be a positive integer, got {value!r}")
        for name in ("warmup", "sample_tokens", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{_flag(name)} must be a non-negative integer, got {value!r}")
        if self.lr_decay_steps is not None and (
            isinstance(self.lr_decay_steps, bool)
            or not isinstance(self.lr_decay_steps, int)
            or self.lr_decay_steps < 1
        ):
            raise ConfigError(
                f"--lr-decay-steps must be a positive integer, got {self.lr_decay_steps!r}"
            )
        if not isinstance(self.keep_best, bool):
            raise ConfigError(f"--keep-best must be true or false, got {self.keep_best!r}")
        if self.vocab is not None and (not isinstance(self.vocab, int) or self.vocab < 1):
            raise ConfigError(f"--vocab must be a positive integer, got {self.vocab!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.min_lr, (int, float)) and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"--min-lr must be in [0, --lr={self.lr}], got {self.min_lr!r}")
        if not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            raise ConfigError(f"betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError(
                f"weight decay and grad clip must be >= 0, got {self.weight_decay}, {self.grad_clip}"
            )
        if not self.data:
            raise ConfigError("--data must name a corpus or a path")
        parse_device_spec(self.device)  # a bad --device fails before any work, resumed runs too
        if self.sp_model_type is not None:
            if self.tokenizer != "sentencepiece":
                raise ConfigError(
                    f"--sp-model-type applies to --tokenizer sentencepiece, not {self.tokenizer!r}"
                )
            if self.sp_model_type not in ("unigram", "bpe"):
                raise ConfigError(
                    f"--sp-model-type must be unigram or bpe, got {self.sp_model_type!r}"
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From config.json's "train"; keys this version does not know are ignored with a warning."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            logger.warning("ignoring unknown training options in config.json: %s", unknown)
        return cls(**{k: v for k, v in d.items() if k in names})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def decay_steps(cfg: TrainConfig) -> int:
    """The step at which the cosine reaches min_lr: --lr-decay-steps, else the last step."""
    return cfg.steps if cfg.lr_decay_steps is None else cfg.lr_decay_steps


def lr_at(it: int, cfg: TrainConfig) -> float:
    """nanoGPT's schedule for iteration `it` (0-based): linear warm-up, then cosine to min_lr at
    decay_steps(cfg) (the last step unless --lr-decay-steps says otherwise), then min_lr."""
    end = decay_steps(cfg)
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / (cfg.warmup + 1)
    if it >= end or end <= cfg.warmup:
        return cfg.min_lr
    ratio = (it - cfg.warmup) / (end - cfg.warmup)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


@dataclass
class Run:
    """A run ready to train: validated configs, tokenizer, token splits and saved arrays if resuming."""

    run_dir: pathlib.Path
    state: ckpt.RunState
    config: TrainConfig
    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    weights: dict[str, np.ndarray] | None = None  # None: a new run, initialised from the seed
    optimizer_state: dict[str, np.ndarray] | None = None
    init_weights: dict[str, np.ndarray] | None = None  # a new run's start (--init-from)
    notices: list[str] = field(default_factory=list)  # for the user, before training starts

    @property
    def resumed(self) -> bool:
        return self.weights is not None


def _conflicts(given: dict, saved: dict) -> list[str]:
    return [
        f"{_flag(k)} {v!r} (the run has {saved[k]!r})"
        for k, v in given.items()
        if v is not None and k in saved and saved[k] != v
    ]


def prepare_run(
    run_dir: pathlib.Path,
    model_options: dict,
    train_options: dict,
    cache_dir: pathlib.Path,
    data_home: pathlib.Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Run:
    """Build or resume the run in `run_dir`. Options are the ones the user gave (None = not given).

    Resuming: model options and the run's identity (RUN_IDENTITY: data, tokenizer, vocab,
    sp_model_type, seed) must match the saved run; other training options may change. Nothing is
    written into run_dir here (the token cache under cache_dir may be filled). data_home holds
    downloaded corpora (None: femto.data's default).
    """
    run_dir = pathlib.Path(run_dir)
    model_options = {k: v for k, v in model_options.items() if v is not None}
    train_options = {k: v for k, v in train_options.items() if v is not None}
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a run directory")
    if ckpt.has_checkpoint(run_dir):
        state = ckpt.load_state(run_dir)
        try:
            saved_train = TrainConfig.from_dict(state.train)
        except (ConfigError, TypeError) as exc:
            raise CheckpointError(
                f'{run_dir / ckpt.CONFIG_FILE}: invalid "train" options ({exc})'
            ) from None
        problems = _conflicts(model_options, state.model.to_dict())
        identity = {k: v for k, v in train_options.items() if k in RUN_IDENTITY}
        problems += _conflicts(identity, saved_train.to_dict())
        if problems:
            raise ConfigError(
                f"{run_dir} holds a run that these options contradict: {'; '.join(problems)}. "
                "Drop them to resume, or pick another --out for a new run"
            )
        config = replace(saved_train, **train_options)
        notice = schedule_notice(saved_train, config, state.step, lr_at, decay_steps)
        notices = [notice] if notice else []
        init_weights = None
        tokenizer = load_tokenizer(run_dir, state.tokenizer)
        if tokenizer.vocab_size != state.model.vocab_size:
            raise ConfigError(
                f"{run_dir}: the tokenizer has {tokenizer.vocab_size} symbols but the model's "
                f"vocab_size is {state.model.vocab_size}"
            )
        weights = ckpt.load_weights(run_dir, state)
        optimizer_state = ckpt.load_optimizer_state(run_dir, state)
        corpus = resolve_corpus(config.data, data_home)
        model_config = state.model
    else:
        config = TrainConfig(**train_options)
        if config.init_from is None:  # fail on bad sizes before any slow work
            GPTConfig(**{"vocab_size": 1, **model_options})
        corpus = resolve_corpus(config.data, data_home)
        weights = optimizer_state = init_weights = None
        notices = []
        if config.init_from is None:
            options = {"model_type": config.sp_model_type} if config.sp_model_type else {}
            tokenizer = train_tokenizer(corpus, config.tokenizer, config.vocab, **options)
            model_config = GPTConfig(**{**model_options, "vocab_size": tokenizer.vocab_size})
        else:
            source = load_init_source(
                pathlib.Path(config.init_from), model_options, train_options.get("tokenizer"),
                config.vocab,
            )  # fmt: skip
            tokenizer, model_config, init_weights = source.tokenizer, source.model, source.weights
            # the new run's config.json names the tokenizer it really uses: the source's
            config = replace(config, **source.tokenizer_options)
        state = ckpt.RunState(model=model_config, train=config.to_dict())
    try:
        tokens = encode_corpus(corpus, tokenizer, cache_dir, progress)
    except TokenizerError as exc:
        if init_weights is None:
            raise
        raise TokenizerError(
            f"--init-from {config.init_from} keeps the source run's tokenizer, which cannot encode "
            f"--data {config.data}: {exc}"
        ) from None
    summary = corpus.summary()
    if summary:
        notices.append(summary)
    train_tokens, val_tokens = train_val_split(tokens, VAL_FRACTION)
    T = model_config.block_size
    check_windows(train_tokens, T, f"the training split of {corpus.name!r}")
    check_windows(val_tokens, T, f"the validation split of {corpus.name!r}")
    state.train = config.to_dict()
    return Run(
        run_dir, state, config, tokenizer, train_tokens, val_tokens, weights, optimizer_state,
        init_weights, notices,
    )  # fmt: skip


class TrainStep:
    """Forward and backward of one micro-batch, adding its gradients into the parameters' .grad.

    A training step runs the same kernels on the same shapes every time; only the batch (and, with
    dropout, the sites' seeds) changes. So the first batch of a shape runs the graph under
    Backend.capture(), and later ones are written into that capture's input buffers, with fresh
    dropout seeds drawn from `rng` as the graph would draw them, and replayed: the graph's per-op
    Python (a tenth of a small model's step) is paid once. The optimizer stays outside, since its
    learning rate and step count change every step.
    """

    def __init__(self, model: GPT):
        self.model = model
        # (B, T) -> (ids, targets, dropout seeds or None, loss, plan) of that shape's capture
        self._captures: dict[tuple[int, ...], tuple] = {}
        self._buffers: list = []  # the parameters' data and gradient buffers the captures use

    def _parameter_buffers(self) -> list:
        return [b for p in self.model.params.values() for b in (p.data, p.grad)]

    def __call__(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
        """The mean loss of batch x (B, T) against targets y, after adding its gradients."""
        model, backend = self.model, self.model.backend
        buffers = self._parameter_buffers()
        if len(buffers) != len(self._buffers) or any(
            a is not b for a, b in zip(buffers, self._buffers)
        ):
            # new parameter or gradient buffers (an optimizer packed them after a capture, or a
            # gradient was dropped): the plans would update the old ones, so capture afresh
            self._captures.clear()
        captured = self._captures.get(x.shape)
        if captured is not None:
            ids, targets, seeds, loss, plan = captured
            ids.copy_from_numpy(x)
            targets.copy_from_numpy(y)
            V = model.config.vocab_size
            if all(0 <= t.value_range[0] and t.value_range[1] < V for t in (ids, targets)):
                draws = model.dropout_seeds(rng)
                if seeds is not None:
                    seeds.copy_from_numpy(draws)
                backend.replay(plan)
                return loss.item()
            # an id out of range: the graph's ops reject it, with the message that names it
            _, loss = model(x, y, rng)
            loss.backward()
            return loss.item()
        ids, targets = Tensor.from_numpy(x, backend), Tensor.from_numpy(y, backend)
        with backend.capture() as plan:
            _, loss = model(ids, targets, rng)
            loss.backward()
        self._captures[x.shape] = (ids, targets, model.step_seeds, loss, plan)
        self._buffers = self._parameter_buffers()  # after backward: it may have made gradients
        return loss.item()


def estimate_loss(
    model: GPT, tokens: np.ndarray, cfg: TrainConfig, block_size: int, seed_offset: int = 2
) -> float:
    """Mean loss over cfg.eval_batches random batches drawn from a generator seeded afresh each time:
    every evaluation of a run sees the same windows, so successive values are comparable."""
    rng = np.random.default_rng([cfg.seed, seed_offset])
    total = 0.0
    with no_grad():
        for _ in range(cfg.eval_batches):
            x, y = get_batch(tokens, cfg.batch_size, block_size, rng, "the validation split")
            _, loss = model(x, y)
            total += loss.item()
    return total / cfg.eval_batches


Event = dict  # {"kind": "step" | "eval" | "checkpoint" | "done", ...}; see train()


def train(
    run: Run,
    on_event: Callable[[Event], None] | None = None,
    stop: threading.Event | None = None,
) -> ckpt.RunState:
    """Train run.config.steps steps in total (resuming at run.state.step); returns the final state.

    Events: "start" (device, params, step, steps, resumed); "step" after each step (step, steps, loss,
    lr, dt_ms, tokens_per_s, elapsed_s, eta_s, val_loss = the last measured, and grad_norm on logged
    steps); "eval" with val_loss; "best" after --keep-best saved a new best (step, val_loss, dir);
    "checkpoint" after each save (step, model, tokenizer, for a sample); "done". Setting `stop`
    ends the loop after the current step with a checkpoint.
    """
    cfg, state, run_dir = run.config, run.state, run.run_dir
    emit = on_event or (lambda event: None)
    backend = get_backend(cfg.device)
    model = GPT(state.model, backend, np.random.default_rng(cfg.seed))
    optimizer = AdamW(
        model.params, cfg.lr, (cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
    )  # fmt: skip
    micro_step = TrainStep(model)
    # one generator drives the batches and dropout seeds; its state is saved with each checkpoint
    data_rng = np.random.default_rng([cfg.seed, 1])
    if run.init_weights is not None:
        model.load_numpy(run.init_weights, f"--init-from {cfg.init_from}")
    if run.resumed:
        model.load_numpy(run.weights, str(run_dir / ckpt.MODEL_FILE))
        optimizer.load_state_arrays(
            run.optimizer_state, state.step, str(run_dir / ckpt.OPTIMIZER_FILE)
        )
        if "data" in state.rng:
            data_rng.bit_generator.state = state.rng["data"]
    emit({
        "kind": "start", "device": backend.device_name, "params": state.model.num_params(),
        "step": state.step, "steps": cfg.steps, "resumed": run.resumed,
    })  # fmt: skip
    ckpt.truncate_metrics(run_dir, state.step)
    tokenizer_description = save_tokenizer(run.tokenizer, run_dir)

    B, T, accum = cfg.batch_size, state.model.block_size, cfg.grad_accum
    tokens_per_step = B * T * accum
    last_val = state.best_val_loss if run.resumed else None
    saved_step = state.step if run.resumed else -1
    start_step = state.step
    t_start = time.perf_counter()
    train_time = 0.0

    def save() -> None:
        nonlocal saved_step
        state.rng = {"data": data_rng.bit_generator.state}
        state.tokenizer = tokenizer_description
        state.train = cfg.to_dict()
        ckpt.save_checkpoint(run_dir, model.to_numpy(), optimizer.state_arrays(), state)
        saved_step = state.step
        emit({"kind": "checkpoint", "step": state.step, "model": model, "tokenizer": run.tokenizer})

    def save_best() -> None:
        # a whole checkpoint of its own (a run directory femto can sample, evaluate or resume),
        # committed like the main one, so a crash mid-save leaves the previous best readable
        state.rng = {"data": data_rng.bit_generator.state}
        state.tokenizer = tokenizer_description
        state.train = cfg.to_dict()
        best_dir = run_dir / ckpt.BEST_DIR
        save_tokenizer(run.tokenizer, best_dir)  # first: the committed config.json names its files
        ckpt.save_checkpoint(best_dir, model.to_numpy(), optimizer.state_arrays(), state)
        emit({"kind": "best", "step": state.step, "val_loss": state.best_val_loss, "dir": best_dir})

    while state.step < cfg.steps:
        t0 = time.perf_counter()
        lr = lr_at(state.step, cfg)
        loss_sum = 0.0
        for _ in range(accum):
            x, y = get_batch(run.train_tokens, B, T, data_rng)  # (B, T) each
            loss_sum += micro_step(x, y, data_rng)
        loss_value = loss_sum / accum
        if not math.isfinite(loss_value):
            raise ConfigError(
                f"training diverged at step {state.step + 1}: loss is {loss_value} "
                f"(lower --lr, now {cfg.lr})"
            )
        # gradients are complete here: a data-parallel run would all-reduce them at this point and
        # pass grad_divisor = accum * world_size
        optimizer.step(lr, grad_divisor=accum)
        model.zero_grad()
        backend.synchronize()
        dt = time.perf_counter() - t0
        train_time += dt
        state.step += 1
        state.tokens_seen += tokens_per_step

        val_loss = None
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            val_loss = estimate_loss(model, run.val_tokens, cfg, T)
            last_val = val_loss
            if state.best_val_loss is None or val_loss < state.best_val_loss:
                state.best_val_loss = val_loss
                if cfg.keep_best:
                    save_best()
            emit({"kind": "eval", "step": state.step, "val_loss": val_loss})

        done_steps = state.step - start_step
        avg_step = train_time / done_steps
        record = {
            "step": state.step,
            "loss": loss_value,
            "lr": lr,
            "dt_ms": dt * 1000.0,
            "tokens_per_s": tokens_per_step / dt if dt > 0 else 0.0,
        }
        if val_loss is not None:
            record["val_loss"] = val_loss
        if state.step % cfg.log_every == 0 or val_loss is not None or state.step == cfg.steps:
            record["grad_norm"] = optimizer.grad_norm()  # read back on logged steps only
            ckpt.append_metrics(run_dir, record)
        emit({
            "kind": "step", **record, "steps": cfg.steps, "val_loss": last_val,
            "elapsed_s": time.perf_counter() - t_start,
            "eta_s": avg_step * (cfg.steps - state.step),
            "avg_tokens_per_s": tokens_per_step / avg_step if avg_step > 0 else 0.0,
        })  # fmt: skip

        stopping = stop is not None and stop.is_set()
        if state.step % cfg.save_every == 0 or state.step == cfg.steps or stopping:
            save()
        if stopping:
            break
    if saved_step != state.step:
        save()  # e.g. resumed a finished run: make sure the files say what the state says
    emit({"kind": "done", "step": state.step, "stopped": stop is not None and stop.is_set()})
    return state
