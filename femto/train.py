"""Training: TrainConfig, preparing or resuming a run, and the loop (AdamW, warm-up + cosine, eval, saves).

`prepare_run` does every check that can fail on user input before anything is written; `train` then
runs on the backend the config names and reports through a callback, never by printing. Given a
communicator of several ranks (femto.distributed), `train` is data-parallel: each rank takes its share
of every step's micro-batches from one global stream, gradients are summed over ranks before the
update, and rank 0 alone writes the run directory.
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
from femto.backend.base import KernelPlan, parse_device_spec
from femto.data import (
    check_windows,
    encode_corpus,
    get_batch,
    micro_batch_rng,
    resolve_corpus,
    train_tokenizer,
    train_val_split,
)
from femto.distributed import Communicator, SingleProcess
from femto.divergence import DivergenceGuard
from femto.errors import CheckpointError, ConfigError, TokenizerError, TrainingDiverged
from femto.fileio import remove_stale_temporaries
from femto.finetune import load_init_source
from femto.graph import Tensor, backward, no_grad
from femto.memory_estimate import check_fits, training_bytes
from femto.model import GPT, GPTConfig
from femto.optim import AdamW
from femto.schedule_notice import schedule_notice
from femto.timing import RunTimer
from femto.tokenizers.base import Tokenizer, load_tokenizer, save_tokenizer

logger = logging.getLogger(__name__)

VAL_FRACTION = 0.1
# options that define what a run is: changing them on resume would silently train something else
RUN_IDENTITY = ("data", "tokenizer", "vocab", "sp_model_type", "seed", "init_from")
# config.json's "train" also records what a run's rank count made of the options (not options)
DERIVED = ("ranks", "global_batch")


@dataclass(frozen=True)
class TrainConfig:
    """Training options; the CLI's options map one-to-one onto these fields. Defaults train the
    Shakespeare character model (nanoGPT's CPU 'baby GPT' schedule, longer) in about seven minutes on
    2 cores (measured in the README's Benchmarks section)."""

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
        unknown = sorted(set(d) - names - set(DERIVED))
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
        notice = schedule_notice(saved_train, config, state.step, lr_at, decay_steps)
        notices = [notice] if notice else []
        init_weights = None
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
        if config.init_from is None:
            # fail on bad sizes before any slow work; the vocabulary is not known yet, so its least
            # plausible size (--vocab, else one symbol) stands in until the tokenizer is trained
            sizes = GPTConfig(**{"vocab_size": config.vocab or 1, **model_options})
            _check_training_fits(sizes, config, vocab_known=config.vocab is not None)
        corpus = resolve_corpus(config.data, data_home)
        weights = optimizer_state = init_weights = None
        notices = []
        if config.init_from is None:
            options = {"model_type": config.sp_model_type} if config.sp_model_type else {}
            tokenizer = train_tokenizer(
                corpus, config.tokenizer, config.vocab, tokenizer_progress, **options
            )
            model_config = GPTConfig(**{**model_options, "vocab_size": tokenizer.vocab_size})
        else:
            source = load_init_source(
                pathlib.Path(config.init_from), model_options, train_options.get("tokenizer"),
                config.vocab,
            )  # fmt: skip
            tokenizer, model_config, init_weights = source.tokenizer, source.model, source.weights
            # the new run's config.json names the tokenizer it really uses: the source's
            config = replace(config, **source.tokenizer_options)
        _check_training_fits(model_config, config)
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


def _check_training_fits(model: GPTConfig, config: TrainConfig, vocab_known: bool = True) -> None:
    vocab = f"vocab {model.vocab_size:,}" if vocab_known else "before its vocabulary"
    what = (
        f"training {model.n_layer} layers x {model.n_embd} wide ({vocab}, "
        f"block {model.block_size:,}) at batch {config.batch_size:,}"
    )
    check_fits(training_bytes(model, config.batch_size), what, ConfigError)


@dataclass
class CapturedPass:
    """One (B, T) shape's recorded forward and backward: the input buffers a replay writes the
    next batch into, the loss it leaves, and the recording itself."""

    ids: Tensor
    targets: Tensor
    seeds: Tensor | None  # the dropout sites' seeds, None without dropout
    loss: Tensor
    plan: KernelPlan
    # parameter name -> how many of the plan's calls had run when its gradient became final
    ready: dict[str, int]


class TrainStep:
    """Forward and backward of one micro-batch, adding its gradients into the parameters' .grad
    (the gradient half of a training step; the optimizer's update, `opt.step()`, is the other).

    A training step runs the same kernels on the same shapes every time; only the batch (and, with
    dropout, the sites' seeds) changes. So the first batch of a shape runs the graph under
    Backend.capture(), and later ones are written into that capture's input buffers, with fresh
    dropout seeds drawn from `rng` as the graph would draw them, and replayed: the graph's per-op
    Python (a tenth of a small model's step) is paid once. The optimizer stays outside, since its
    learning rate and step count change every step.

    The capture also notes, per parameter, how many launches it had made when that parameter's
    gradient became final. Given a reducer (femto.distributed.GradientReducer), a replay is cut
    there: each gradient bucket's all-reduce starts as soon as the launches that write it are done,
    while the rest of backward still runs.
    """

    def __init__(self, model: GPT):
        self.model = model
        self._captures: dict[tuple[int, ...], CapturedPass] = {}
        # (B, T) -> (reducer, [(part of the plan, buckets final after it)]) for reducing replays
        self._schedules: dict[tuple[int, ...], tuple] = {}
        self._buffers: list = []  # the parameters' data and gradient buffers the captures use

    def _parameter_buffers(self) -> list:
        return [b for p in self.model.params.values() for b in (p.data, p.grad)]

    def __call__(
        self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, reducer=None
    ) -> float:
        """The mean loss of batch x (B, T) against targets y, after adding its gradients; with a
        reducer, every gradient bucket's all-reduce has been started when it returns."""
        model, backend = self.model, self.model.backend
        buffers = self._parameter_buffers()
        if len(buffers) != len(self._buffers) or any(
            a is not b for a, b in zip(buffers, self._buffers)
        ):
            # new parameter or gradient buffers (an optimizer packed them after a capture, or a
            # gradient was dropped): the plans would update the old ones, so capture afresh
            self._captures.clear()
            self._schedules.clear()
        captured = self._captures.get(x.shape)
        if captured is not None:
            ids, targets = captured.ids, captured.targets
            ids.copy_from_numpy(x)
            targets.copy_from_numpy(y)
            V = model.config.vocab_size
            if all(0 <= t.value_range[0] and t.value_range[1] < V for t in (ids, targets)):
                draws = model.dropout_seeds(rng)
                if captured.seeds is not None:
                    captured.seeds.copy_from_numpy(draws)
                if reducer is None:
                    backend.replay(captured.plan)
                else:
                    schedule = self._schedule(x.shape, captured.plan, captured.ready, reducer)
                    for part, buckets in schedule:
                        backend.replay(part)
                        for index in buckets:
                            reducer.start(index)
                        reducer.progress()
                return captured.loss.item()
            # an id out of range: the graph's ops reject it, with the message that names it
            _, loss = model(x, y, rng)
            loss.backward()
            return loss.item()
        ids, targets = Tensor.from_numpy(x, backend), Tensor.from_numpy(y, backend)
        names = {id(p): name for name, p in model.params.items()}
        ready: dict[str, int] = {}
        with backend.capture() as plan:
            _, loss = model(ids, targets, rng)
            backward(loss, on_leaf_grad=lambda leaf: ready.update({names.get(id(leaf)): len(plan)}))
        self._captures[x.shape] = CapturedPass(ids, targets, model.step_seeds, loss, plan, ready)
        self._buffers = self._parameter_buffers()  # after backward: it may have made gradients
        if reducer is not None:
            reducer.start_all()
        return loss.item()

    def _schedule(self, shape: tuple[int, ...], plan: KernelPlan, ready: dict, reducer) -> list:
        """The capture cut into consecutive parts, each with the buckets final after it."""
        cached = self._schedules.get(shape)
        if cached is not None and cached[0] is reducer:
            return cached[1]
        final_at: dict[int, list[int]] = {}
        for index, bucket in enumerate(reducer.buckets):
            at = max(ready.get(name, len(plan)) for name in bucket.names)
            final_at.setdefault(at, []).append(index)
        schedule, begin = [], 0
        for end in sorted(final_at):
            part = KernelPlan()  # a slice of the calls; `plan` itself keeps their buffers alive
            part.calls = plan.calls[begin:end]
            schedule.append((part, final_at[end]))
            begin = end
        if begin < len(plan):
            tail = KernelPlan()
            tail.calls = plan.calls[begin:]
            schedule.append((tail, []))
        self._schedules[shape] = (reducer, schedule)
        return schedule


def estimate_loss(
    model: GPT, tokens: np.ndarray, cfg: TrainConfig, block_size: int, seed_offset: int = 2,
    what: str = "the validation split", comm: Communicator | None = None,
) -> float:  # fmt: skip
    """Mean loss over cfg.eval_batches random batches drawn from a generator seeded afresh each time:
    every evaluation of a run sees the same windows, so successive values are comparable. With
    several ranks each evaluates every size-th batch (all draw all of them, so the windows do not
    depend on the rank count) and the sum goes round."""
    comm = comm or SingleProcess()
    rng = np.random.default_rng([cfg.seed, seed_offset])
    total = 0.0
    with no_grad():
        for index in range(cfg.eval_batches):
            x, y = get_batch(tokens, cfg.batch_size, block_size, rng, what)
            if index % comm.size == comm.rank:
                _, loss = model(x, y)
                total += loss.item()
    if comm.size > 1:
        total = float(comm.allreduce_sum(np.array([total]))[0])
    return total / cfg.eval_batches


def stream_position(state: ckpt.RunState) -> int:
    """The global index of the run's next micro-batch. A run saved before the stream was global
    (its "rng" holds a generator state) continues after the micro-batches its tokens_seen counts."""
    position = state.rng.get("micro_batches")
    if isinstance(position, int) and not isinstance(position, bool) and position >= 0:
        return position
    B = TrainConfig.from_dict(state.train).batch_size
    return state.tokens_seen // (B * state.model.block_size)


Event = dict  # {"kind": "step" | "eval" | "checkpoint" | "done", ...}; see train()


def train(
    run: Run,
    on_event: Callable[[Event], None] | None = None,
    stop: threading.Event | None = None,
    comm: Communicator | None = None,
    overlap: bool = True,
) -> ckpt.RunState:
    """Train run.config.steps steps in total (resuming at run.state.step); returns the final state.

    Events: "start" (device, params, step, steps, resumed, elapsed_s of earlier sessions, ranks,
    global_batch, processes: 'pid@host' per rank); "step" after each step (step, steps, loss, lr,
    dt_ms, tokens, tokens_per_s, elapsed_s and eta_s over every session, val_loss = the last
    measured, and grad_norm on logged steps); "eval" (step, train_loss and val_loss, each the mean
    of eval_batches batches, avg_tokens_per_s, eval_s); "checkpoint" after each save (step, model,
    tokenizer, for a sample); "skip" (step, reason) when the divergence guard skipped an update;
    "done" (step, stopped, timing: femto.timing.Totals over every session, tokens_seen). Setting
    `stop` ends the loop after the current step with a checkpoint. Evaluation and checkpoint
    durations (with whatever the checkpoint callback does, such as sampling) are measured and
    counted in the ETA. "best" after --keep-best saved a new best (step, val_loss,
    dir). A state that diverged is never saved: TrainingDiverged says which step and
    why.

    With `comm` of N ranks (every rank calls train with the same run): the global batch is
    batch_size x grad_accum x N micro-batches; rank r takes micro-batches r*grad_accum ..
    (r+1)*grad_accum - 1 of each step; gradients are summed over ranks (`overlap`: bucket by bucket
    during backward, else in one blocking all-reduce at the end) and divided by the micro-batch
    count; the loss is the global mean; a stop on any rank stops all after the same step. Rank 0
    alone writes files and emits events; the others wait for it at each save.
    """
    cfg, state, run_dir = run.config, run.state, run.run_dir
    comm = comm or SingleProcess()
    root, ranks = comm.rank == 0, comm.size
    emit = on_event if on_event is not None and root else (lambda event: None)
    backend = comm.backend(cfg.device)
    model = GPT(state.model, backend, np.random.default_rng(cfg.seed))
    optimizer = AdamW(
        model.params, cfg.lr, (cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
    )  # fmt: skip
    micro_step = TrainStep(model)
    if run.init_weights is not None:
        model.load_numpy(run.init_weights, f"--init-from {cfg.init_from}")
    if run.resumed:
        model.load_numpy(run.weights, str(run_dir / ckpt.MODEL_FILE))
        optimizer.load_state_arrays(
            run.optimizer_state, state.step, str(run_dir / ckpt.OPTIMIZER_FILE)
        )
    # the global index of the next micro-batch: where the stream resumes, whatever the rank count
    next_micro_batch = stream_position(state)
    reducer = comm.gradient_reducer(backend, optimizer.packed(), overlap)
    B, T, accum = cfg.batch_size, state.model.block_size, cfg.grad_accum
    derived = {"ranks": ranks, "global_batch": B * accum * ranks}
    _check_identical(comm, optimizer, f"at the start (step {state.step})")
    # ---- timing (issue 13): totals carried over from earlier sessions of this run ----
    timer = RunTimer(state.timing if run.resumed else None)
    emit({
        "kind": "start", "device": backend.device_name, "params": state.model.num_params(),
        "step": state.step, "steps": cfg.steps, "resumed": run.resumed, **derived,
        "processes": comm.processes(), "elapsed_s": timer.before.wall_s,
    })  # fmt: skip
    if root:
        remove_stale_temporaries(run_dir)  # left by a femto killed while writing here
        ckpt.truncate_metrics(run_dir, state.step)
        tokenizer_description = save_tokenizer(run.tokenizer, run_dir)

    tokens_per_step = B * T * accum * ranks
    last_val = state.best_val_loss if run.resumed else None
    saved_step = state.step if run.resumed else -1
    t_start = time.perf_counter()
    stopped = False

    # ---- divergence guard (femto/divergence.py): skip bad steps, never save a diverged state ----
    guard = DivergenceGuard(model, optimizer, run.train_tokens, B, cfg.seed)

    def save() -> None:
        nonlocal saved_step
        t_save = time.perf_counter()
        problem = guard.state_problem()  # every rank holds the same state, so all agree here
        if problem is not None:
            kept = f"step {saved_step}" if saved_step >= 0 else "no checkpoint"
            raise TrainingDiverged(
                f"training diverged at step {state.step}: {problem}; not saved, {run_dir} keeps "
                f"{kept} (lower --lr, now {cfg.lr})"
            )
        _check_identical(comm, optimizer, f"at step {state.step}")
        state.rng = {"micro_batches": next_micro_batch}
        state.train = {**cfg.to_dict(), **derived}
        state.timing = timer.to_dict(time.perf_counter() - t_start)
        if root:
            state.tokenizer = tokenizer_description
            ckpt.save_checkpoint(run_dir, model.to_numpy(), optimizer.state_arrays(), state)
            emit({
                "kind": "checkpoint", "step": state.step, "model": model, "tokenizer": run.tokenizer
            })  # fmt: skip
        comm.barrier()  # the others wait for the files (and the sample) before going on
        saved_step = state.step
        timer.add_checkpoint(time.perf_counter() - t_save)

    def save_best() -> None:
        # a whole checkpoint of its own (a run directory femto can sample, evaluate or resume),
        # committed like the main one, so a crash mid-save leaves the previous best readable
        state.rng = {"micro_batches": next_micro_batch}
        state.tokenizer = tokenizer_description
        state.train = {**cfg.to_dict(), **derived}
        best_dir = run_dir / ckpt.BEST_DIR
        save_tokenizer(run.tokenizer, best_dir)  # first: the committed config.json names its files
        ckpt.save_checkpoint(best_dir, model.to_numpy(), optimizer.state_arrays(), state)
        emit({"kind": "best", "step": state.step, "val_loss": state.best_val_loss, "dir": best_dir})

    while state.step < cfg.steps:
        t0 = time.perf_counter()
        lr = lr_at(state.step, cfg)
        loss_sum = 0.0
        first = next_micro_batch + comm.rank * accum
        for i in range(accum):
            rng = micro_batch_rng(cfg.seed, first + i)  # its windows, then its dropout seeds
            x, y = get_batch(run.train_tokens, B, T, rng)  # (B, T) each
            # the last micro-batch completes this rank's gradients: reduce them as they finish
            loss_sum += micro_step(x, y, rng, reducer if i == accum - 1 else None)
        next_micro_batch += accum * ranks
        stopping = stop is not None and stop.is_set()
        if reducer is not None:
            # one small collective per step: the global loss, and whether any rank was asked to stop
            loss_sum, votes = comm.allreduce_sum(np.array([loss_sum, float(stopping)]))
            stopping = votes > 0
            reducer.finish()
        loss_value = loss_sum / (accum * ranks)
        # the loss and the reduced gradients are the same on every rank: so is the guard's verdict
        problem = guard.loss_problem(loss_value)
        if problem is None and not optimizer.step(
            lr, grad_divisor=accum * ranks, skip_nonfinite=True
        ):
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
            train_loss = estimate_loss(
                model, run.train_tokens, cfg, T, 3, "the training split", comm=comm
            )
            val_loss = estimate_loss(model, run.val_tokens, cfg, T, comm=comm)
            timer.add_eval(time.perf_counter() - t_eval)
            last_val = val_loss
            if state.best_val_loss is None or val_loss < state.best_val_loss:
                state.best_val_loss = val_loss
                if cfg.keep_best and root:
                    save_best()
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
        if (logged or problem is not None) and root:
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

        if ranks == 1:
            stopping = stop is not None and stop.is_set()  # one process: a stop during eval counts
        if state.step % cfg.save_every == 0 or state.step == cfg.steps or stopping:
            save()
        if stopping:
            stopped = True
            break
    if saved_step != state.step:
        save()  # e.g. resumed a finished run: make sure the files say what the state says
    emit({
        "kind": "done", "step": state.step, "stopped": stopped,
        "timing": timer.total(time.perf_counter() - t_start), "tokens_seen": state.tokens_seen,
    })  # fmt: skip
    return state


def _check_identical(comm: Communicator, optimizer: AdamW, when: str) -> None:
    """Stop the run if the ranks' parameters differ (they are updated identically, so they never
    should: a difference means hosts whose femto builds or devices compute differently)."""
    if comm.size > 1:
        backend = optimizer.params[next(iter(optimizer.params))].backend
        comm.check_identical([backend.to_numpy(g["param"]) for g in optimizer.packed()], when)
