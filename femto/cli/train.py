"""`femto train`: its options (and --config files), start-up, and the training loop's signals."""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import click

from femto.cli import main, mpi, paths, progress, user_errors

# the train options that are the model's shape (GPTConfig); the others are TrainConfig's
MODEL_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")


def _config_value_kind(param: click.Parameter):
    """What a config-file value for this click option must be: bool, int, float, str or choices."""
    if isinstance(param, click.Option) and param.is_flag:
        return bool
    if isinstance(param.type, click.Choice):
        return tuple(param.type.choices)
    return {click.INT: int, click.FLOAT: float}.get(param.type, str)


def _apply_config_file(ctx: click.Context, path: str, out: str, options: dict) -> str:
    """Fill `options` (and return --out) from the TOML file, except where the command line gave a
    value: the command line wins."""
    from femto.config_file import read_config_file

    kinds = {
        p.name: _config_value_kind(p)
        for p in ctx.command.params
        if p.name not in ("config_file", "help") and isinstance(p, click.Option)
    }
    values = read_config_file(pathlib.Path(path), kinds)
    for name, value in values.items():
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
            continue
        if name == "out":
            out = value
        else:
            options[name] = value
    return out


def _default_of(field_name: str) -> str:
    from femto.model import GPTConfig
    from femto.train import TrainConfig

    for cls in (GPTConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name == field_name:
                return f"[default: {f.default}]"
    raise KeyError(field_name)


def _option(flag: str, field: str, text: str, **kwargs):
    """An option that defaults to None (so a resumed run can tell "not given") and shows the default."""
    return click.option(flag, help=f"{text} {_default_of(field)}", **kwargs)


@main.command(short_help="Train a GPT, or resume the run in --out.")
@_option("--data", "data", "Corpus: a bundled name or a path.")
@_option("--tokenizer", "tokenizer", "Tokenizer by name (char, byte, ...).")
@click.option(
    "--vocab", type=int,
    help="Vocabulary size for trainable tokenizers. sentencepiece: the total, including 256 "
    "byte-fallback pieces, <unk>, the newline and (for corpora with document breaks) "
    "<|endoftext|>, so --vocab 500 learns 241 or 242 pieces.",
)  # fmt: skip
@click.option(
    "--sp-model-type",
    type=click.Choice(["unigram", "bpe"]),
    help="sentencepiece's algorithm. [default: unigram]",
)
@click.option(
    "--out", default="out", show_default=True, help="Run directory (resumed if it holds a run)."
)
@_option("--device", "device", "cpu, opencl or opencl:P:D.")
@_option("--steps", "steps", "Total optimizer steps.", type=int)
@_option("--batch-size", "batch_size", "Sequences per micro-batch.", type=int)
@_option("--block-size", "block_size", "Context length T.", type=int)
@_option("--n-layer", "n_layer", "Transformer blocks.", type=int)
@_option("--n-head", "n_head", "Attention heads.", type=int)
@_option("--n-embd", "n_embd", "Embedding width C.", type=int)
@_option("--dropout", "dropout", "Dropout probability.", type=float)
@click.option(
    "--bias/--no-bias", default=None, help="Biases in linears and LayerNorms. [default: bias]"
)
@_option("--lr", "lr", "Peak learning rate.", type=float)
@_option("--min-lr", "min_lr", "Learning rate after cosine decay.", type=float)
@_option("--warmup", "warmup", "Linear warm-up steps.", type=int)
@_option("--grad-accum", "grad_accum", "Micro-batches per step.", type=int)
@_option("--weight-decay", "weight_decay", "AdamW decay on matrices.", type=float)
@_option("--eval-every", "eval_every", "Steps between val losses.", type=int)
@_option("--eval-batches", "eval_batches", "Batches per val loss.", type=int)
@_option("--save-every", "save_every", "Steps between checkpoints.", type=int)
@_option("--log-every", "log_every", "Steps between metrics lines.", type=int)
@_option("--sample-tokens", "sample_tokens", "Sample length at checkpoints.", type=int)
@_option("--seed", "seed", "Seed for init, batches and dropout.", type=int)
@click.option(
    "--lr-decay-steps", type=int,
    help="Step at which the cosine decay reaches --min-lr (min-lr after it); extend a run with a "
    "larger --steps without re-stretching its schedule. [default: --steps]",
)  # fmt: skip
@click.option(
    "--keep-best/--no-keep-best", default=None,
    help="Also keep the checkpoint with the lowest val loss, in OUT/best/ (sample or eval it with "
    "--checkpoint best).",
)  # fmt: skip
@click.option(
    "--init-from", metavar="RUN",
    help="Start a new run from the weights of the run in directory RUN (fine-tuning): its model "
    "shape and tokenizer, this run's corpus and schedule.",
)  # fmt: skip
@click.option(
    "--config", "config_file", metavar="FILE",
    help="TOML file of train options (keys are the option names, e.g. batch-size = 32); options "
    "given on the command line win. The resolved options are stored in OUT/config.json.",
)  # fmt: skip
@click.pass_context
@user_errors
def train(ctx: click.Context, out: str, config_file: str | None, **options) -> None:
    """Train a GPT, or resume the run in --out. Ctrl-C (or SIGTERM) finishes the step, saves and
    exits."""
    from femto import train as training
    from femto.distributed import PeerFailed

    if config_file is not None:
        out = _apply_config_file(ctx, config_file, out, options)
    model_options = {k: options.pop(k) for k in MODEL_FIELDS}
    run_dir = pathlib.Path(out)
    cache_root = paths.cache_root()
    try:
        comm = mpi.communicator()
    except PeerFailed:
        sys.exit(1)  # rank 0 says why
    run, lock = _start_run(comm, run_dir, model_options, options, cache_root)
    try:
        _run_training(training, comm, run, run_dir, cache_root)
    finally:
        if lock is not None:  # a run that failed before writing leaves no trace
            lock.release(remove_dir_if_empty=True)


def _start_run(comm, run_dir: pathlib.Path, model_options: dict, options: dict, cache_root):
    """The run and (on rank 0, which alone writes) the lock that makes it the directory's only
    trainer. SIGTERM counts as Ctrl-C here, and an interrupted start-up is one clean line that
    leaves the directory as it was."""
    import signal
    import threading

    from femto.distributed import PeerFailed
    from femto.runlock import TrainerLock

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # signal handlers can only be set from the main thread (a test may run the command in another)
    main_thread = threading.current_thread() is threading.main_thread()
    startup_sigterm = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
    lock = None
    try:
        with mpi.fail_fast(comm):  # the other ranks would wait forever for a rank 0 that stopped
            lock = TrainerLock(run_dir) if comm.rank == 0 else None
        return _prepare_run(comm, run_dir, model_options, options, cache_root), lock
    except BaseException as exc:
        if lock is not None:
            lock.release(remove_dir_if_empty=True)
        if isinstance(exc, KeyboardInterrupt):
            raise click.ClickException(
                f"interrupted during start-up: nothing trained, {run_dir} left as it was"
            ) from None
        if isinstance(exc, PeerFailed):
            sys.exit(1)  # the rank that failed has said why
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, startup_sigterm)


def _prepare_run(comm, run_dir: pathlib.Path, model_options: dict, options: dict, cache_root):
    """The run on every rank (femto/parallel_run.py), with rank 0's progress lines."""
    from femto import parallel_run

    if comm.rank != 0:
        return parallel_run.prepare_run(
            comm, run_dir, model_options, options, cache_root / "tokens", cache_root / "datasets"
        )  # fmt: skip
    encoding_bar = progress.encoding_progress(options.get("data") or "the corpus")
    tokenizer_progress = progress.stderr_progress(
        f"reading {options.get('data') or 'the corpus'} for the tokenizer", "B",
        then=f"training the {options.get('tokenizer') or 'char'} tokenizer",
    )  # fmt: skip

    def encoding(done: int, total: int) -> None:
        tokenizer_progress.close()  # the tokenizer is trained once encoding starts
        encoding_bar(done, total)

    try:
        return parallel_run.prepare_run(
            comm, run_dir, model_options, options, cache_root / "tokens", cache_root / "datasets",
            encoding, tokenizer_progress,
        )  # fmt: skip
    finally:
        tokenizer_progress.close()
        encoding_bar.close()


def _run_training(training, comm, run, run_dir: pathlib.Path, cache_root: pathlib.Path) -> None:
    """The training loop of `femto train`, its progress lines and its Ctrl-C / SIGTERM handling."""
    import signal
    import threading

    from femto.cli.progress import StatusLine
    from femto.cli.train_report import TrainReport, peak_flops_of, train_summary
    from femto.throughput import flops_per_token

    root = comm.rank == 0
    if root:
        for notice in run.notices:
            click.echo(f"notice: {notice}", err=True)
    cfg, state = run.config, run.state
    if state.step >= cfg.steps:
        if not root:
            return
        click.echo(
            f"{run_dir} is at step {state.step} of --steps {cfg.steps}: nothing to train "
            f"(pass a larger --steps to continue)"
        )
        return
    # only rank 0 reports MFU: the others need no probe of the machine's peak
    peak, peak_source = peak_flops_of(cfg.device, cache_root) if root else (None, "")
    flops_token = flops_per_token(state.model)
    status = StatusLine(sys.stdout, sys.stdout.isatty())
    report = TrainReport(run, run_dir, status, flops_token, peak, peak_source, root)
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, the last checkpoint stays
        stop.set()
        name = "SIGTERM" if signum == signal.SIGTERM else "interrupted"
        if root:
            click.echo(
                f"\n{name}: finishing this step and saving (Ctrl-C again to abort)", err=True
            )

    previous = signal.signal(signal.SIGINT, on_sigint)
    previous_term = signal.signal(signal.SIGTERM, on_sigint)  # schedulers and `docker stop`
    try:
        with mpi.fail_fast(comm):
            final = training.train(run, report, stop, comm)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        status.close()
    if not root:
        return
    for line in train_summary(run_dir, final, report.done, flops_token, peak):
        click.echo(line)
