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
from dataclasses import asdict, dataclass, fields, replace

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
from femto.divergence import DivergenceGuard
from femto.errors import CheckpointError, ConfigError, TrainingDiverged
from femto.fileio import remove_stale_temporaries
from femto.graph import Tensor, no_grad
from femto.memory_estimate import check_fits, training_bytes
from femto.model import GPT, GPTConfig
from femto.optim import AdamW
from femto.timing import RunTimer
from femto.tokenizers.base import Tokenizer, load_tokenizer, save_tokenizer

logger = logging.getLogger(__name__)

VAL_FRACTION = 0.1
# options that define what a run is: changing them on resume would silently train something else
RUN_IDENTITY = ("data", "tokenizer", "vocab", "sp_model_type", "seed")


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

    def __post_init__(self) -> None:
        # config.json may hold anything: types first, then ranges
        for name in ("data", "tokenizer", "device", "sp_model_type"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name == "sp_model_type")):
                raise ConfigError(f"{_flag(name)} must be a string, got {value!r}")
        for name in ("lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{_flag(name)} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{_flag(name)} must be finite, got {value!r}")
        positive = ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "save_every")
        for name in (*positive, "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{_flag(name)} must be a positive integer, got {value!r}")
        for name in ("warmup", "sample_tokens", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{_flag(name)} must be a non-negative integer, got {value!r}")
        if self.vocab is not None and (
            isinstance(self.vocab, bool) or not isinstance(self.vocab, int) or self.vocab < 1
        ):
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


def lr_at(it: int, cfg: TrainConfig) -> float:
    """nanoGPT's schedule for iteration `it` (0-based): linear warm-up, then cosine to min_lr at the
    last step."""
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / (cfg.warmup + 1)
    if it >= cfg.steps or cfg.steps <= cfg.warmup:
        return cfg.min_lr
    ratio = (it - cfg.warmup) / (cfg.steps - cfg.warmup)
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
    tokenizer_progress: Callable[[int, int], None] | None = None,
) -> Run:
    """Build or resume the run in `run_dir`. Options are the ones the user gave (None = not given).

    Resuming: model options and the run's identity (RUN_IDENTITY: data, tokenizer, vocab,
    sp_model_type, seed) must match the saved run; other training options may change. Nothing is
    written into run_dir here (the token cache under cache_dir may be filled). data_home holds
    downloaded corpora (None: femto.data's default). `tokenizer_progress` hears the corpus being
    read to train a new run's tokenizer, `progress` it being encoded (not on a token cache hit).
    """
    run_dir = pathlib.Path(run_dir)
    model_options = {k: v for k, v in model_options.items() if v is not None}
    train_options = {k: v for k, v in train_options.items() if v is not None}
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a run directory")
    ckpt.check_run_files(run_dir)
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
        tokenizer = load_tokenizer(run_dir, state.tokenizer)
        if tokenizer.vocab_size != state.model.vocab_size:
            raise ConfigError(
                f"{run_dir}: the tokenizer has {tokenizer.vocab_size} symbols but the model's "
                f"vocab_size is {state.model.vocab_size}"
            )
        _check_training_fits(state.model, config)
        weights = ckpt.load_weights(run_dir, state)
        optimizer_state = ckpt.load_optimizer_state(run_dir, state)
        corpus = resolve_corpus(config.data, data_home)
        model_config = state.model
    else:
        config = TrainConfig(**train_options)
        # fail on bad sizes before any slow work; the vocabulary is not known yet, so its least
        # plausible size (--vocab, else one symbol) stands in until the tokenizer is trained
        sizes = GPTConfig(**{"vocab_size": config.vocab or 1, **model_options})
        _check_training_fits(sizes, config, vocab_known=config.vocab is not None)
        corpus = resolve_corpus(config.data, data_home)
        options = {"model_type": config.sp_model_type} if config.sp_model_type else {}
        tokenizer = train_tokenizer(
            corpus, config.tokenizer, config.vocab, tokenizer_progress, **options
        )
        model_config = GPTConfig(**{**model_options, "vocab_size": tokenizer.vocab_size})
        _check_training_fits(model_config, config)
        state = ckpt.RunState(model=model_config, train=config.to_dict())
        weights = optimizer_state = None
    tokens = encode_corpus(corpus, tokenizer, cache_dir, progress)
    train_tokens, val_tokens = train_val_split(tokens, VAL_FRACTION)
    T = model_config.block_size
    check_windows(train_tokens, T, f"the training split of {corpus.name!r}")
    check_windows(val_tokens, T, f"the validation split of {corpus.name!r}")
    state.train = config.to_dict()
    return Run(
        run_dir, state, config, tokenizer, train_tokens, val_tokens, weights, optimizer_state
    )


def _check_training_fits(model: GPTConfig, config: TrainConfig, vocab_known: bool = True) -> None:
    vocab = f"vocab {model.vocab_size:,}" if vocab_known else "before its vocabulary"
    what = (
        f"training {model.n_layer} layers x {model.n_embd} wide ({vocab}, "
        f"block {model.block_size:,}) at batch {config.batch_size:,}"
    )
    check_fits(training_bytes(model, config.batch_size), what, ConfigError)


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
    model: GPT, tokens: np.ndarray, cfg: TrainConfig, block_size: int, seed_offset: int = 2,
    what: str = "the validation split",
) -> float:  # fmt: skip
    """Mean loss over cfg.eval_batches random batches drawn from a generator seeded afresh each time:
    every evaluation of a run sees the same windows, so successive values are comparable."""
    rng = np.random.default_rng([cfg.seed, seed_offset])
    total = 0.0
    with no_grad():
        for _ in range(cfg.eval_batches):
            x, y = get_batch(tokens, cfg.batch_size, block_size, rng, what)
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

    Events: "start" (device, params, step, steps, resumed, elapsed_s of earlier sessions); "step"
    after each step (step, steps, loss, lr, dt_ms, tokens, tokens_per_s, elapsed_s and eta_s over
    every session, val_loss = the last measured, and grad_norm on logged steps); "eval" (step,
    train_loss and val_loss, each the mean of eval_batches batches, avg_tokens_per_s, eval_s);
    "checkpoint" after each save (step, model, tokenizer, for a sample); "done" (step, stopped,
    timing: femto.timing.Totals over every session, tokens_seen). Setting `stop` ends the loop after
    the current step with a checkpoint. Evaluation and checkpoint durations (with whatever the
    checkpoint callback does, such as sampling) are measured and counted in the ETA.
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
    if run.resumed:
        model.load_numpy(run.weights, str(run_dir / ckpt.MODEL_FILE))
        optimizer.load_state_arrays(
            run.optimizer_state, state.step, str(run_dir / ckpt.OPTIMIZER_FILE)
        )
        if "data" in state.rng:
            data_rng.bit_generator.state = state.rng["data"]
    # ---- timing (issue 13): totals carried over from earlier sessions of this run ----
    timer = RunTimer(state.timing if run.resumed else None)
    emit({
        "kind": "start", "device": backend.device_name, "params": state.model.num_params(),
        "step": state.step, "steps": cfg.steps, "resumed": run.resumed,
        "elapsed_s": timer.before.wall_s,
    })  # fmt: skip
    remove_stale_temporaries(run_dir)  # left by a femto killed while writing here
    ckpt.truncate_metrics(run_dir, state.step)
    tokenizer_description = save_tokenizer(run.tokenizer, run_dir)

    B, T, accum = cfg.batch_size, state.model.block_size, cfg.grad_accum
    tokens_per_step = B * T * accum
    last_val = state.best_val_loss if run.resumed else None
    saved_step = state.step if run.resumed else -1
    t_start = time.perf_counter()

    # ---- divergence guard (femto/divergence.py): skip bad steps, never save a diverged state ----
    guard = DivergenceGuard(model, optimizer, run.train_tokens, B, cfg.seed)

    def save() -> None:
        nonlocal saved_step
        t_save = time.perf_counter()
        problem = guard.state_problem()
        if problem is not None:
            kept = f"step {saved_step}" if saved_step >= 0 else "no checkpoint"
            raise TrainingDiverged(
                f"training diverged at step {state.step}: {problem}; not saved, {run_dir} keeps "
                f"{kept} (lower --lr, now {cfg.lr})"
            )
        state.rng = {"data": data_rng.bit_generator.state}
        state.tokenizer = tokenizer_description
        state.train = cfg.to_dict()
        state.timing = timer.to_dict(time.perf_counter() - t_start)
        ckpt.save_checkpoint(run_dir, model.to_numpy(), optimizer.state_arrays(), state)
        saved_step = state.step
        emit({"kind": "checkpoint", "step": state.step, "model": model, "tokenizer": run.tokenizer})
        timer.add_checkpoint(time.perf_counter() - t_save)

    while state.step < cfg.steps:
        t0 = time.perf_counter()
        lr = lr_at(state.step, cfg)
        loss_sum = 0.0
        for _ in range(accum):
            x, y = get_batch(run.train_tokens, B, T, data_rng)  # (B, T) each
            loss_sum += micro_step(x, y, data_rng)
        loss_value = loss_sum / accum
        # gradients are complete here: a data-parallel run would all-reduce them at this point and
        # pass grad_divisor = accum * world_size
        problem = guard.loss_problem(loss_value)
        if problem is None and not optimizer.step(lr, grad_divisor=accum, skip_nonfinite=True):
            problem = "gradient norm is not finite"
        model.zero_grad()
        if problem is None:
            guard.accepted(loss_value)
        else:
            optimizer.skip()
            guard.skipped(state.step + 1, problem)  # raises after several in a row
            emit({"kind": "skip", "step": state.step + 1, "reason": problem})
        backend.synchronize()
        dt = time.perf_counter() - t0
        timer.add_step(dt)
        state.step += 1
        state.tokens_seen += tokens_per_step
        avg_step = timer.step_s()

        val_loss = train_loss = None
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            t_eval = time.perf_counter()
            # the training split measured like the validation split (same batches each time, no
            # dropout): the two losses compare, which the noisy per-step loss does not
            train_loss = estimate_loss(model, run.train_tokens, cfg, T, 3, "the training split")
            val_loss = estimate_loss(model, run.val_tokens, cfg, T)
            timer.add_eval(time.perf_counter() - t_eval)
            last_val = val_loss
            if state.best_val_loss is None or val_loss < state.best_val_loss:
                state.best_val_loss = val_loss
            emit({
                "kind": "eval", "step": state.step, "train_loss": train_loss, "val_loss": val_loss,
                "avg_tokens_per_s": tokens_per_step / avg_step if avg_step > 0 else 0.0,
                "eval_s": time.perf_counter() - t_eval,
            })  # fmt: skip

        record = {
            "step": state.step,
            "tokens": state.tokens_seen,
            "loss": loss_value,
            "lr": lr,
            "dt_ms": dt * 1000.0,
            "tokens_per_s": tokens_per_step / dt if dt > 0 else 0.0,
        }
        if val_loss is not None:
            record["train_loss"] = train_loss
            record["val_loss"] = val_loss
        if problem is not None:
            record["skipped"] = True
        logged = state.step % cfg.log_every == 0 or val_loss is not None or state.step == cfg.steps
        if logged or problem is not None:
            if problem is None:
                record["grad_norm"] = optimizer.grad_norm()  # read back on logged steps only
            finite = math.isfinite(loss_value)  # JSON has no NaN: a skipped bad loss is null
            ckpt.append_metrics(run_dir, record if finite else {**record, "loss": None})
        emit({
            "kind": "step", **record, "steps": cfg.steps, "val_loss": last_val,
            "elapsed_s": timer.before.wall_s + time.perf_counter() - t_start,
            "eta_s": timer.eta(
                state.step, cfg.steps, cfg.eval_every, cfg.save_every, cfg.eval_batches, accum
            ),
            "avg_tokens_per_s": tokens_per_step / avg_step if avg_step > 0 else 0.0,
        })  # fmt: skip

        stopping = stop is not None and stop.is_set()
        if state.step % cfg.save_every == 0 or state.step == cfg.steps or stopping:
            save()
        if stopping:
            break
    if saved_step != state.step:
        save()  # e.g. resumed a finished run: make sure the files say what the state says
    emit({
        "kind": "done", "step": state.step, "stopped": stop is not None and stop.is_set(),
        "timing": timer.total(time.perf_counter() - t_start), "tokens_seen": state.tokens_seen,
    })  # fmt: skip
    return state
