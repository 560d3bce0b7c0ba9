"""The command line: the only module that prints, reads the environment, or picks exit codes.

A FemtoError becomes one clean line and exit status 1; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import pathlib
import sys
import time

import click

from femto.errors import FemtoError

_WRITE_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
}  # fmt: skip


def user_errors(func):
    """Turn a FemtoError (a user mistake, described) into click's one-line error and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FemtoError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            # a full, read-only or failing disk is the machine's state, not a bug: one line
            if exc.errno not in _WRITE_ERRNOS:
                raise
            from femto.fileio import write_failed

            raise click.ClickException(str(write_failed(exc.filename or "a file", exc))) from None

    return wrapper


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--version: femto's version and the CPU kernel path this machine runs (or why FEMTO_CPU can't)."""
    if not value or ctx.resilient_parsing:
        return
    from femto import __version__
    from femto.backend import cpu

    error = cpu.cpu_path_error()
    if error is not None:
        raise click.ClickException(error)
    click.echo(f"femto {__version__}; CPU: {cpu.cpu_summary()}")
    ctx.exit()


@click.group(invoke_without_command=True)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and the CPU kernel path, then exit.",
)
@click.pass_context
def main(ctx: click.Context) -> None:
    """femto: train and sample small GPT language models on C/OpenMP or OpenCL kernels."""
    from femto.backend import cpu

    error = cpu.cpu_path_error()  # a bad FEMTO_CPU stops every command before it does any work
    if error is not None:
        raise click.ClickException(error)
    if ctx.invoked_subcommand is None:  # `femto` alone: the help, as a success
        click.echo(ctx.get_help())


@main.group()
def tokenize() -> None:
    """Train, inspect and run tokenizers."""


@main.group(short_help="List and fetch corpora.")
def data() -> None:
    """List and fetch corpora."""


# ---- config files, best checkpoints, exact bytes, export (the trainer-UX issue, part B) ----


def _ux_option_kind(param: click.Parameter):
    """What a config-file value for this click option must be: bool, int, float, str or choices."""
    if isinstance(param, click.Option) and param.is_flag:
        return bool
    if isinstance(param.type, click.Choice):
        return tuple(param.type.choices)
    return {click.INT: int, click.FLOAT: float}.get(param.type, str)


def _ux_apply_config_file(ctx: click.Context, path: str, out: str, options: dict) -> str:
    """Fill `options` (and return --out) from the TOML file, except where the command line gave a
    value: the command line wins."""
    from femto.config_file import read_config_file

    kinds = {
        p.name: _ux_option_kind(p)
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


def _ux_run_checkpoint(out: str, checkpoint: str) -> pathlib.Path:
    """The run directory of --checkpoint latest (the run itself) or best (its --keep-best copy)."""
    from femto.checkpoint import BEST_DIR, CONFIG_FILE
    from femto.errors import CheckpointError

    run_dir = pathlib.Path(out)
    if checkpoint == "latest":
        return run_dir
    best = run_dir / BEST_DIR
    if not (best / CONFIG_FILE).is_file() and (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} has no best checkpoint ({best} is missing): train it with --keep-best, "
            "or use --checkpoint latest"
        )
    return best


_ux_checkpoint_option = click.option(
    "--checkpoint",
    type=click.Choice(["latest", "best"]),
    default="latest",
    show_default=True,
    help="The run's last checkpoint, or the lowest-val-loss one that --keep-best kept in "
    "OUT/best/.",
)


def _ux_write_text(text: str, output: str | None) -> None:
    """Decoded text to --output (atomically, exact bytes) or to stdout (with a newline only on a
    terminal)."""
    from femto.errors import ConfigError
    from femto.fileio import write_atomic

    data = text.encode("utf-8", "surrogatepass")
    if output is None:
        newline = b"\n" if sys.stdout.isatty() else b""
        sys.stdout.flush()
        sys.stdout.buffer.write(data + newline)  # the bytes, not text-mode's newline translation
        sys.stdout.buffer.flush()
        return
    path = pathlib.Path(output)
    if path.is_dir():
        raise ConfigError(f"--output {path} is a directory: give a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {path}: directory {path.parent} does not exist")
    write_atomic(path, data)


def _ux_read_prompt_file(path: str) -> str:
    from femto.errors import ConfigError

    try:
        raw = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--prompt-file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--prompt-file {path} is a directory, not a text file") from None
    except OSError as exc:
        raise ConfigError(f"--prompt-file {path} cannot be read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")  # bytes exactly: no newline translation
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--prompt-file {path} is not UTF-8 (byte {exc.start:,})") from None


@main.command(name="export", short_help="Export a run as a Hugging Face transformers GPT-2 folder.")
@click.option("--out", default="out", show_default=True, help="Run directory to export.")
@click.option(
    "--hf", "hf_dir", required=True, metavar="DIR",
    help="Write a Hugging Face transformers GPT-2 folder (GPT2LMHeadModel + tokenizer.json) here; "
    "it must not exist yet or be empty.",
)  # fmt: skip
@_ux_checkpoint_option
@user_errors
def export_command(out: str, hf_dir: str, checkpoint: str) -> None:
    """Export a run for Hugging Face transformers: load it with GPT2LMHeadModel.from_pretrained(DIR)
    or transformers.pipeline("text-generation", DIR)."""
    from femto.export_hf import export_hf

    config = export_hf(pathlib.Path(out), pathlib.Path(hf_dir), _ux_run_checkpoint(out, checkpoint))
    click.echo(
        f"exported {out} ({checkpoint} checkpoint) to {hf_dir}: GPT-2 with n_layer "
        f"{config['n_layer']}, n_head {config['n_head']}, n_embd {config['n_embd']}, "
        f"n_positions {config['n_positions']}, vocab {config['vocab_size']}"
    )
    click.echo(
        f"use it: transformers.pipeline(\"text-generation\", \"{hf_dir}\") "
        "(pip install 'femto[hf]')"
    )


# ---- train / sample / eval / tokenize encode|decode (the GPT issue) ----


def _gpt_cache_root() -> pathlib.Path:
    """FEMTO_CACHE_DIR, else ~/.cache/femto: token caches and downloaded corpora live under it."""
    root = os.environ.get("FEMTO_CACHE_DIR")
    return pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "femto"


def _gpt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _gpt_default(field_name: str) -> str:
    from femto.model import GPTConfig
    from femto.train import TrainConfig

    for cls in (GPTConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name == field_name:
                return f"[default: {f.default}]"
    raise KeyError(field_name)


def _gpt_option(flag: str, field: str, text: str, **kwargs):
    """An option that defaults to None (so a resumed run can tell "not given") and shows the default."""
    return click.option(flag, help=f"{text} {_gpt_default(field)}", **kwargs)


# ---- progress and the training log (issue 13): every report goes through femto.progress ----


def _progress(label: str, unit: str = "", then: str | None = None):
    """Progress on stderr: a bar on a terminal, a plain line every few seconds in a log or a pipe
    (and nothing at all for work that took under a second there)."""
    from femto.progress import Progress

    return Progress(label, sys.stderr, sys.stderr.isatty(), unit, then)


def _gpt_encoding_progress(what: str):
    """Encoding a corpus into the token cache (a cache hit reports nothing)."""
    return _progress(f"encoding {what}", "B")


def _peak_flops(device: str, cache_root: pathlib.Path) -> tuple[float | None, str]:
    """The device's peak FLOP/s for MFU, and where it came from: FEMTO_PEAK_FLOPS (a number, e.g. a
    datasheet's) or femto's matmul probe, measured once per device and cached in the cache dir."""
    from femto.errors import ConfigError
    from femto.throughput import PEAK_FILE, peak_flops

    given = os.environ.get("FEMTO_PEAK_FLOPS")
    if given:
        try:
            value = float(given)
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise ConfigError(
                f"FEMTO_PEAK_FLOPS must be a positive number of FLOP/s, got {given!r}"
            )
        return value, "FEMTO_PEAK_FLOPS"
    flops, key, measured = peak_flops(device, cache_root)
    how = "measured now" if measured else "measured earlier"
    return flops, f"{key}, femto's matmul peak, {how}, cached in {cache_root / PEAK_FILE}"


def _train_summary(run_dir: pathlib.Path, final, done: dict, flops_token: float, peak) -> list[str]:
    """The lines `femto train` ends with: where the time went, speed, losses, files."""
    from femto.runlog import load_run_log

    timing = done["timing"]
    lines = [
        f"done: step {final.step} of {final.train['steps']} in {_gpt_duration(timing.wall_s)} "
        f"({_gpt_duration(timing.train_s)} training, {_gpt_duration(timing.eval_s)} evaluating, "
        f"{_gpt_duration(timing.checkpoint_s)} saving and sampling)"
        + (" (stopped early: resume with the same command)" if done["stopped"] else "")
    ]
    # the rate the eval lines show: steady steps, without a session's first (graph capture)
    tokens_per_s = done.get("session_tokens_per_s", 0.0)
    if tokens_per_s > 0:
        mfu = f", MFU {100 * flops_token * tokens_per_s / peak:.1f}%" if peak else ""
        overall = ""
        if timing.steps >= final.step and timing.train_s > 0:  # every session was timed
            rate = final.tokens_seen / timing.train_s
            if abs(rate - tokens_per_s) > 0.1 * tokens_per_s:
                overall = f" ({rate:,.0f} counting the first step, which records the graph)"
        lines.append(
            f"  throughput  {tokens_per_s:,.0f} tokens/s{mfu}{overall}, "
            f"{final.tokens_seen:,} tokens in all"
        )
    log = load_run_log(run_dir)
    last = log.last_eval()
    if last is not None:
        train = f"train {last['train_loss']:.4f}, " if "train_loss" in last else ""
        at = "" if last["step"] == final.step else f" (at step {last['step']}, the last evaluation)"
        lines.append(f"  final loss  {train}val {last['val_loss']:.4f}{at}")
        best, best_step = log.best_val()
        lines.append(f"  best val    {best:.4f} at step {best_step}")
    files = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    lines.append(f"  files       {run_dir}: {', '.join(files)}")
    lines.append(f"  look at it  femto plot {run_dir} / femto sample --out {run_dir}")
    return lines


_GPT_MODEL_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")


# ---- data-parallel runs under mpiexec (issue 10) ----


def _mpi_communicator():
    """This process's communicator: MPI's world under `mpiexec -n N>1` (mpi4py imported only
    then), else one process. Without OMP_NUM_THREADS, ranks on one host share its cores."""
    from femto import distributed

    comm = distributed.connect(os.environ)
    if comm.size > 1 and "OMP_NUM_THREADS" not in os.environ:
        comm.cpu_threads = max(1, len(os.sched_getaffinity(0)) // comm.local_size)
    return comm


# time for mpiexec to forward a failing rank's last output before MPI_Abort ends the job
ABORT_GRACE_S = 0.5


@contextlib.contextmanager
def _mpi_fail_fast(comm):
    """With several ranks, an exception on one must end them all: the others would wait for it in
    their next collective forever. It prints one line naming the rank, then MPI_Abort ends the job."""
    if comm.size == 1:
        yield
        return
    try:
        yield
    except BaseException as exc:
        bug = not isinstance(exc, (FemtoError, KeyboardInterrupt))
        if isinstance(exc, FemtoError):
            what = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            what = "interrupted twice: stopping now, the last checkpoint stays"
        else:
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # the line first: MPI_Abort may end the job before mpiexec has forwarded all of the output
        click.echo(f"Error: {comm.name} failed: {what}", err=True)
        if bug:
            import traceback

            traceback.print_exc()  # a bug keeps its traceback
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        comm.abort(1)
        raise


@main.command(short_help="Train a GPT, or resume the run in --out.")
@_gpt_option("--data", "data", "Corpus: a bundled name or a path.")
@_gpt_option("--tokenizer", "tokenizer", "Tokenizer by name (char, byte, ...).")
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
@_gpt_option("--device", "device", "cpu, opencl or opencl:P:D.")
@_gpt_option("--steps", "steps", "Total optimizer steps.", type=int)
@_gpt_option("--batch-size", "batch_size", "Sequences per micro-batch.", type=int)
@_gpt_option("--block-size", "block_size", "Context length T.", type=int)
@_gpt_option("--n-layer", "n_layer", "Transformer blocks.", type=int)
@_gpt_option("--n-head", "n_head", "Attention heads.", type=int)
@_gpt_option("--n-embd", "n_embd", "Embedding width C.", type=int)
@_gpt_option("--dropout", "dropout", "Dropout probability.", type=float)
@click.option(
    "--bias/--no-bias", default=None, help="Biases in linears and LayerNorms. [default: bias]"
)
@_gpt_option("--lr", "lr", "Peak learning rate.", type=float)
@_gpt_option("--min-lr", "min_lr", "Learning rate after cosine decay.", type=float)
@_gpt_option("--warmup", "warmup", "Linear warm-up steps.", type=int)
@_gpt_option("--grad-accum", "grad_accum", "Micro-batches per step.", type=int)
@_gpt_option("--weight-decay", "weight_decay", "AdamW decay on matrices.", type=float)
@_gpt_option("--eval-every", "eval_every", "Steps between val losses.", type=int)
@_gpt_option("--eval-batches", "eval_batches", "Batches per val loss.", type=int)
@_gpt_option("--save-every", "save_every", "Steps between checkpoints.", type=int)
@_gpt_option("--log-every", "log_every", "Steps between metrics lines.", type=int)
@_gpt_option("--sample-tokens", "sample_tokens", "Sample length at checkpoints.", type=int)
@_gpt_option("--seed", "seed", "Seed for init, batches and dropout.", type=int)
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
    import signal
    import threading

    from femto import train as training
    from femto.distributed import PeerFailed
    from femto.runlock import TrainerLock

    if config_file is not None:
        out = _ux_apply_config_file(ctx, config_file, out, options)
    model_options = {k: options.pop(k) for k in _GPT_MODEL_FIELDS}
    run_dir = pathlib.Path(out)
    cache_root = _gpt_cache_root()
    try:
        comm = _mpi_communicator()
    except PeerFailed:
        sys.exit(1)  # rank 0 says why
    root = comm.rank == 0  # under mpiexec, rank 0 alone prints and writes

    # one trainer per run directory; SIGTERM is Ctrl-C; start-up interrupts are one clean line
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # signal handlers can only be set from the main thread (a test may run the command in another)
    main_thread = threading.current_thread() is threading.main_thread()
    startup_sigterm = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
    lock = None
    try:
        with _mpi_fail_fast(comm):  # the other ranks would wait forever for a rank 0 that stopped
            lock = TrainerLock(run_dir) if root else None
        run = _gpt_prepare(comm, run_dir, model_options, options, cache_root)
    except KeyboardInterrupt:
        if lock is not None:
            lock.release(remove_dir_if_empty=True)
        raise click.ClickException(
            f"interrupted during start-up: nothing trained, {run_dir} left as it was"
        ) from None
    except PeerFailed:
        if lock is not None:
            lock.release(remove_dir_if_empty=True)
        sys.exit(1)  # the rank that failed has said why
    except BaseException:
        if lock is not None:
            lock.release(remove_dir_if_empty=True)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, startup_sigterm)
    try:
        _gpt_train(training, comm, run, run_dir, cache_root)
    finally:
        if lock is not None:  # a run that failed before writing leaves no trace
            lock.release(remove_dir_if_empty=True)


def _gpt_prepare(comm, run_dir: pathlib.Path, model_options: dict, options: dict, cache_root):
    """The run on every rank (femto/parallel_run.py), with rank 0's progress lines."""
    from femto import parallel_run

    if comm.rank != 0:
        return parallel_run.prepare_run(
            comm, run_dir, model_options, options, cache_root / "tokens", cache_root / "datasets"
        )  # fmt: skip
    progress = _gpt_encoding_progress(options.get("data") or "the corpus")
    tokenizer_progress = _progress(
        f"reading {options.get('data') or 'the corpus'} for the tokenizer", "B",
        then=f"training the {options.get('tokenizer') or 'char'} tokenizer",
    )  # fmt: skip

    def encoding(done: int, total: int) -> None:
        tokenizer_progress.close()  # the tokenizer is trained once encoding starts
        progress(done, total)

    try:
        return parallel_run.prepare_run(
            comm, run_dir, model_options, options, cache_root / "tokens", cache_root / "datasets",
            encoding, tokenizer_progress,
        )  # fmt: skip
    finally:
        tokenizer_progress.close()
        progress.close()


def _gpt_train(training, comm, run, run_dir: pathlib.Path, cache_root: pathlib.Path) -> None:
    """The training loop of `femto train`, its progress lines and its Ctrl-C / SIGTERM handling."""
    import signal
    import threading

    import numpy as np

    from femto.errors import TokenizerError
    from femto.progress import StatusLine
    from femto.sample import encode_prompt, generate, show_text
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
    peak, peak_source = _peak_flops(cfg.device, cache_root) if root else (None, "")
    flops_token = flops_per_token(state.model)
    tty = sys.stdout.isatty()
    status = StatusLine(sys.stdout, tty)
    stop = threading.Event()
    try:
        prompt, _ = encode_prompt(run.tokenizer, "", state.model.block_size)
    except TokenizerError as exc:
        prompt = None  # a vocabulary without a newline: checkpoints then come without samples
        if root:
            click.echo(f"notice: no samples at checkpoints ({exc})", err=True)

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, the last checkpoint stays
        stop.set()
        name = "SIGTERM" if signum == signal.SIGTERM else "interrupted"
        if root:
            click.echo(
                f"\n{name}: finishing this step and saving (Ctrl-C again to abort)", err=True
            )

    done: dict = {}

    def on_event(event: dict) -> None:
        kind = event["kind"]
        if kind == "start":
            what = f"resuming at step {event['step']}" if event["resumed"] else "new run"
            if event["resumed"] and event["elapsed_s"] > 0:
                what += f" ({_gpt_duration(event['elapsed_s'])} spent so far)"
            status.line(
                f"{what} in {run_dir}: {event['params'] / 1e6:.2f}M parameters, "
                f"vocab {state.model.vocab_size} ({run.tokenizer.name}), "
                f"{len(run.train_tokens):,} train / {len(run.val_tokens):,} val tokens, "
                f"on {event['device']}"
            )
            status.line(
                f"MFU: {flops_token / 1e6:,.2f} MFLOP per token (6N + 12LCT) against "
                f"{peak / 1e9:,.1f} GFLOP/s ({peak_source})"
            )
            if event["ranks"] > 1:
                status.line(
                    f"{event['ranks']} ranks: global batch {event['global_batch']} sequences = "
                    f"{cfg.batch_size} x --grad-accum {cfg.grad_accum} x {event['ranks']} ranks; "
                    + ", ".join(f"rank {r} pid {p}" for r, p in enumerate(event["processes"]))
                )
        elif kind == "step":
            val = f"{event['val_loss']:.4f}" if event["val_loss"] is not None else "-"
            line = (
                f"step {event['step']}/{event['steps']} | loss {event['loss']:.4f} | val {val} | "
                f"{event['avg_tokens_per_s']:,.0f} tok/s | {_gpt_duration(event['elapsed_s'])} "
                f"elapsed | ETA {_gpt_duration(event['eta_s'])}"
            )
            done["session_tokens_per_s"] = event["avg_tokens_per_s"]
            if tty:
                status.live(line)
            elif event["step"] % cfg.log_every == 0 or event["step"] == event["steps"]:
                status.line(line)
        elif kind == "eval":
            mfu = 100 * flops_token * event["avg_tokens_per_s"] / peak
            status.line(
                f"eval step {event['step']}: train {event['train_loss']:.4f} | "
                f"val {event['val_loss']:.4f} | {event['avg_tokens_per_s']:,.0f} tok/s | "
                f"MFU {mfu:.1f}% | eval {event['eval_s']:.1f} s"
            )
        elif kind == "skip":  # the divergence guard (femto/divergence.py) skipped an update
            status.line(f"step {event['step']} skipped: its {event['reason']}")
        elif kind == "best":
            status.line(
                f"best val loss {event['val_loss']:.4f} at step {event['step']}: "
                f"saved to {event['dir']}"
            )
        elif kind == "checkpoint":
            if prompt is None or cfg.sample_tokens == 0:
                status.line(f"saved {run_dir} at step {event['step']}")
                return
            rng = np.random.default_rng(cfg.seed)  # the same draws each time: samples compare
            new = generate(event["model"], prompt, cfg.sample_tokens, 0.8, 200, rng)
            status.line(
                f"saved {run_dir} at step {event['step']}; sample:\n"
                f"{show_text(run.tokenizer, new)}\n{'-' * 40}"
            )
        elif kind == "done":
            done.update(event)

    previous = signal.signal(signal.SIGINT, on_sigint)
    previous_term = signal.signal(signal.SIGTERM, on_sigint)  # schedulers and `docker stop`
    try:
        with _mpi_fail_fast(comm):
            final = training.train(run, on_event, stop, comm)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        status.close()
    if not root:
        return
    for line in _train_summary(run_dir, final, done, flops_token, peak):
        click.echo(line)


@main.command(short_help="Generate text from a trained run, streamed.")
@click.option("--out", default="out", show_default=True, help="Run directory to sample from.")
@click.option("--prompt", default="", help="Text to continue (empty: start from a newline).")
@click.option("--tokens", default=500, show_default=True, type=int, help="New tokens per sample.")
@click.option("--temperature", default=0.8, show_default=True, type=float, help="0 is greedy.")
@click.option(
    "--top-k", default=200, show_default=True, type=int, help="Keep the K likeliest (0: all)."
)
@click.option("--seed", default=1337, show_default=True, type=int)
@click.option("--num-samples", default=1, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="cpu, opencl or opencl:P:D.")
@click.option("--no-cache", is_flag=True, help="Recompute the whole context per token (slow).")
@click.option(
    "--prompt-file", metavar="FILE", help="Continue the UTF-8 text of FILE (instead of --prompt)."
)
@_ux_checkpoint_option
@click.option(
    "--allow-special", is_flag=True,
    help="Read the literal text <|endoftext|> in the prompt as the end-of-text token (by default "
    "it is ordinary text).",
)  # fmt: skip
@click.option(
    "--stop-at-eot", is_flag=True,
    help="End a sample at its first end-of-text token (by default it is shown as a blank line "
    "and sampling goes on).",
)  # fmt: skip
@user_errors
def sample(
    out: str, prompt: str, tokens: int, temperature: float, top_k: int, seed: int,
    num_samples: int, device: str, no_cache: bool, prompt_file: str | None, checkpoint: str,
    allow_special: bool, stop_at_eot: bool,
) -> None:  # fmt: skip
    """Generate text from a trained run, streamed as it is produced."""
    import numpy as np

    from femto.errors import ConfigError
    from femto.sample import (
        TextStream, check_sampling, encode_prompt, generate, load_run, show_text,
    )  # fmt: skip

    if num_samples < 1:
        raise ConfigError(f"--num-samples must be a positive integer, got {num_samples}")
    if top_k < 0:
        raise ConfigError(f"--top-k must be >= 0 (0 keeps every token), got {top_k}")
    check_sampling(temperature, top_k or None, tokens)
    if prompt_file is not None:
        if prompt:
            raise ConfigError("give --prompt or --prompt-file, not both")
        prompt = _ux_read_prompt_file(prompt_file)
    loaded = load_run(_ux_run_checkpoint(out, checkpoint), device)
    ids, notice = encode_prompt(
        loaded.tokenizer, prompt, loaded.model.config.block_size, allow_special
    )
    if notice:
        click.echo(f"notice: {notice}", err=True)
    eot_id = loaded.tokenizer.eot_id
    if stop_at_eot and eot_id is None:
        raise ConfigError(
            f"--stop-at-eot: the tokenizer of {out} has no end-of-text token (its corpus had no "
            "document breaks)"
        )
    stop_ids = (eot_id,) if stop_at_eot else ()
    rng = np.random.default_rng(seed)

    def write(text: str) -> None:
        click.echo(text, nl=False)
        sys.stdout.flush()

    for i in range(num_samples):
        if i:
            click.echo("\n" + "-" * 40)
        write(show_text(loaded.tokenizer, ids))
        stream = TextStream(loaded.tokenizer, write, ids)
        generate(
            loaded.model, ids, tokens, temperature, top_k or None, rng, stream, not no_cache,
            stop_ids,
        )  # fmt: skip
        stream.flush()
    click.echo()


@main.command(name="eval", short_help="Cross-entropy and perplexity of a run on a corpus.")
@click.option("--out", default="out", show_default=True, help="Run directory of the model.")
@click.option("--data", help="Corpus name or path. [default: the run's training corpus]")
@click.option(
    "--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
    help="The whole corpus, or its first 90% / last 10% (the training run's split).",
)  # fmt: skip
@click.option("--batch-size", default=32, show_default=True, type=int, help="Windows per batch.")
@click.option("--device", default="cpu", show_default=True, help="cpu, opencl or opencl:P:D.")
@_ux_checkpoint_option
@user_errors
def evaluate_command(
    out: str, data: str | None, split: str, batch_size: int, device: str, checkpoint: str
) -> None:
    """Mean cross-entropy (nats/token) and perplexity of a run's model on a corpus."""
    from femto.data import encode_corpus, resolve_corpus, train_val_split
    from femto.errors import ConfigError
    from femto.evaluate import evaluate, perplexity
    from femto.sample import load_run
    from femto.train import VAL_FRACTION

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}")
    loaded = load_run(_ux_run_checkpoint(out, checkpoint), device)
    cache_root = _gpt_cache_root()
    corpus = resolve_corpus(
        data or loaded.state.train.get("data", "shakespeare"), cache_root / "datasets"
    )
    progress = _gpt_encoding_progress(corpus.name)
    try:
        tokens = encode_corpus(corpus, loaded.tokenizer, cache_root / "tokens", progress)
    finally:
        if progress is not None:
            progress.close()
    if corpus.summary():
        click.echo(f"notice: {corpus.summary()}", err=True)
    if split != "all":
        tokens = train_val_split(tokens, VAL_FRACTION)[0 if split == "train" else 1]
    what = f"corpus {corpus.name!r}" + ("" if split == "all" else f" ({split} split)")
    with _progress(f"evaluating on {corpus.name}", "windows") as progress:
        loss, positions = evaluate(loaded.model, tokens, batch_size, progress, what=what)
    click.echo(
        f"{what}: {loss:.4f} nats/token, perplexity {perplexity(loss):.3f} "
        f"({positions:,} positions in {positions // loaded.model.config.block_size:,} windows "
        f"of {loaded.model.config.block_size})"
    )


def _gpt_run_tokenizer(out: str):
    return _tok_load(pathlib.Path(out))[0]


@tokenize.command(short_help="Print the token ids of a text.")
@click.option(
    "--out", default="out", show_default=True, help="Run directory whose tokenizer to use."
)
@click.option("--file", "file_", type=click.Path(dir_okay=False), help="Encode this UTF-8 file.")
@click.option(
    "--allow-special", is_flag=True,
    help="Encode the literal text <|endoftext|> as the end-of-text token (by default it is "
    "ordinary text).",
)  # fmt: skip
@click.argument("text", required=False)
@user_errors
def encode(out: str, file_: str | None, text: str | None, allow_special: bool) -> None:
    """Print the token ids of TEXT (or --file) with a run's tokenizer, space-separated."""
    from femto.errors import TokenizerError

    if (text is None) == (file_ is None):
        raise TokenizerError("give exactly one of TEXT or --file FILE to encode")
    if file_ is not None:
        try:  # bytes, decoded exactly: text mode would turn \r\n into \n
            text = pathlib.Path(file_).read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise TokenizerError(f"--file {file_} does not exist") from None
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"--file {file_} is not UTF-8 (byte {exc.start:,})") from None
        except OSError as exc:
            raise TokenizerError(f"--file {file_} cannot be read: {exc.strerror}") from None
    from femto.tokenizers.special import encode_text

    ids = encode_text(_gpt_run_tokenizer(out), text, allow_special)
    click.echo(" ".join(map(str, ids)))


@tokenize.command(short_help="Print the text of token ids.")
@click.option(
    "--out", default="out", show_default=True, help="Run directory whose tokenizer to use."
)
@click.option(
    "--output", "output", metavar="FILE",
    help="Write the text to FILE as UTF-8, byte for byte (nothing added).",
)  # fmt: skip
@click.argument("ids", nargs=-1, required=True)
@user_errors
def decode(out: str, output: str | None, ids: tuple[str, ...]) -> None:
    """Print the text of token IDS (integers, separated by spaces or commas) with a run's tokenizer.

    A newline is added only when stdout is a terminal: `decode ... > file` holds exactly the text.
    """
    from femto.errors import TokenizerError

    tokenizer = _gpt_run_tokenizer(out)
    values = []
    for word in " ".join(ids).replace(",", " ").split():
        try:
            value = int(word)
        except ValueError:
            raise TokenizerError(f"token id {word!r} is not an integer") from None
        if not 0 <= value < tokenizer.vocab_size:
            raise TokenizerError(
                f"token id {value} is outside the vocabulary: ids must be in [0, {tokenizer.vocab_size - 1}]"
            )
        values.append(value)
    _ux_write_text(tokenizer.decode(values), output)


# ---- tokenize train|stats, data list|fetch (the tokenizers issue) ----


def _tok_data_home(data_home: str | None) -> pathlib.Path:
    return pathlib.Path(data_home).expanduser() if data_home else _gpt_cache_root() / "datasets"


def _tok_load(directory: pathlib.Path):
    """The tokenizer of a training run (config.json) or of `femto tokenize train --out` (tokenizer.json)."""
    from femto.tokenizers.base import DESCRIPTION_FILE, load_tokenizer

    if (directory / "config.json").is_file():
        from femto.sample import load_tokenizer_of

        tokenizer, state = load_tokenizer_of(directory)
        return tokenizer, state.train.get("data")
    if not (directory / DESCRIPTION_FILE).is_file():
        from femto.errors import TokenizerError

        raise TokenizerError(
            f"{directory} holds no tokenizer (no config.json or {DESCRIPTION_FILE}): create one with "
            "`femto tokenize train --data PATH --out DIR` or `femto train --out DIR`"
        )
    return load_tokenizer(directory), None


def _tok_show(piece: str) -> str:
    """A piece with its whitespace visible: newline as \\n, tab as \\t, and so on."""
    return repr(piece)[1:-1] if piece.isprintable() is False or piece.strip() != piece else piece


_data_home_option = click.option(
    "--data-home",
    type=click.Path(file_okay=False),
    help="Where downloaded corpora live. [default: $FEMTO_CACHE_DIR/datasets or ~/.cache/femto/datasets]",
)


@tokenize.command(name="train", short_help="Train a tokenizer on a corpus and save it.")
@click.option(
    "--tokenizer",
    "kind",
    default="char",
    show_default=True,
    help="Tokenizer by name: char, byte, sentencepiece or an installed plugin.",
)
@click.option(
    "--vocab", type=int,
    help="Vocabulary size (sentencepiece: required; the total, including 256 byte-fallback "
    "pieces, <unk>, the newline and (for corpora with document breaks) <|endoftext|>, so "
    "--vocab 500 learns 241 or 242 pieces).",
)  # fmt: skip
@click.option("--data", "spec", required=True, help="Corpus: a bundled name or a path.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write the tokenizer into (tokenizer.json and its own files).",
)
@click.option(
    "--sp-model-type",
    type=click.Choice(["unigram", "bpe"]),
    help="sentencepiece algorithm. [default: unigram]",
)
@_data_home_option
@user_errors
def tokenize_train(
    kind: str, vocab: int | None, spec: str, out: str, sp_model_type: str | None,
    data_home: str | None,
) -> None:  # fmt: skip
    """Train a tokenizer on a corpus and save it into --out.

    Example: femto tokenize train --tokenizer sentencepiece --vocab 500 --data tinystories --out tok/
    """
    import time

    from femto.data import resolve_corpus, train_tokenizer
    from femto.errors import ConfigError
    from femto.tokenizers.folder import replace_tokenizer_folder

    out_dir = pathlib.Path(out)
    if (out_dir / "config.json").is_file():
        raise ConfigError(
            f"{out_dir} holds a training run: its tokenizer belongs to its model, so pick another --out"
        )
    options = {}
    if sp_model_type is not None:
        if kind != "sentencepiece":
            raise ConfigError(f"--sp-model-type applies to --tokenizer sentencepiece, not {kind!r}")
        options["model_type"] = sp_model_type
    corpus = resolve_corpus(spec, _tok_data_home(data_home))
    start = time.perf_counter()
    reading = _progress(f"reading {corpus.name}", "B", then=f"training the {kind} tokenizer")
    with reading as progress:
        tokenizer = train_tokenizer(corpus, kind, vocab, progress, **options)
    seconds = time.perf_counter() - start
    replace_tokenizer_folder(tokenizer, out_dir)  # as a whole: a kill leaves the old or the new
    if corpus.summary():
        click.echo(corpus.summary())
    eot = f", end-of-text id {tokenizer.eot_id}" if tokenizer.eot_id is not None else ""
    files = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    click.echo(
        f"trained {kind} tokenizer ({options.get('model_type', 'unigram') + ', ' if kind == 'sentencepiece' else ''}"
        f"{tokenizer.vocab_size:,} symbols{eot}) on {corpus.name!r} "
        f"({corpus.size_bytes:,} bytes) in {seconds:.1f} s"
    )
    click.echo(f"saved to {out_dir}: {', '.join(files)}")
    click.echo(f"inspect it: femto tokenize stats --out {out_dir} --data {spec}")


@tokenize.command(name="stats", short_help="Characters per token, frequent pieces, round trip.")
@click.option(
    "--out",
    default="out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Run directory or `tokenize train` directory holding the tokenizer.",
)
@click.option("--data", "spec", help="Corpus to measure on. [default: the run's training corpus]")
@click.option(
    "--top",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="How many of the most frequent pieces to list.",
)
@_data_home_option
@user_errors
def tokenize_stats(out: str, spec: str | None, top: int, data_home: str | None) -> None:
    """Vocabulary size, characters and bytes per token, frequent pieces, and a round-trip check."""
    import numpy as np

    from femto.data import resolve_corpus
    from femto.errors import ConfigError

    tokenizer, run_data = _tok_load(pathlib.Path(out))
    spec = spec or run_data
    if spec is None:
        raise ConfigError(f"pass --data: {out} does not record a training corpus")
    corpus = resolve_corpus(spec, _tok_data_home(data_home))
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    chars = nbytes = chunks = 0
    mismatch: tuple[int, int] | None = None  # (chunk, first differing character)
    progress = _progress(f"encoding {corpus.name}", "B")
    try:
        for text, done in corpus.chunks():
            ids = tokenizer.encode(text)
            counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=tokenizer.vocab_size)
            back = tokenizer.decode(ids)
            if back != text and mismatch is None:
                first = next((i for i, (a, b) in enumerate(zip(back, text)) if a != b), None)
                mismatch = (
                    chunks,
                    chars + (first if first is not None else min(len(back), len(text))),
                )
            chars += len(text)
            nbytes += len(text.encode("utf-8", "surrogatepass"))
            chunks += 1
            progress(done, corpus.size_bytes)
    finally:
        progress.close()
    total = int(counts.sum())
    if total == 0:
        raise ConfigError(f"corpus {corpus.name!r} encodes to no tokens")
    used = int((counts > 0).sum())
    click.echo(
        f"tokenizer   {tokenizer.name}, {tokenizer.vocab_size:,} symbols "
        f"({used:,} used on this corpus)"
        + (f", end-of-text id {tokenizer.eot_id}" if tokenizer.eot_id is not None else "")
    )
    click.echo(
        f"corpus      {corpus.name}: {chars:,} characters, {nbytes:,} bytes -> {total:,} tokens"
    )
    click.echo(f"per token   {chars / total:.3f} characters, {nbytes / total:.3f} bytes")
    if corpus.summary():
        click.echo(f"reddit      {corpus.summary()}")
    if top:
        click.echo(f"most frequent pieces (of {total:,} tokens):")
        for rank, token_id in enumerate(np.argsort(-counts, kind="stable")[:top], 1):
            if counts[token_id] == 0:
                break
            piece = _tok_show(tokenizer.id_to_piece(int(token_id)))
            click.echo(
                f"  {rank:>3}. id {int(token_id):>6}  {counts[token_id] / total:7.2%}  "
                f"{int(counts[token_id]):>12,}  {piece}"
            )
    if mismatch is not None:
        raise click.ClickException(
            f"round trip FAILED: decode(encode(text)) differs from the corpus in chunk {mismatch[0]} "
            f"(first at character {mismatch[1]:,})"
        )
    click.echo(f"round trip  exact: decode(encode(text)) == text on all {chars:,} characters")


@data.command(name="list", short_help="The corpora femto knows, and which are present.")
@_data_home_option
@user_errors
def data_list(data_home: str | None) -> None:
    """Show the corpora femto knows by name, which are present, and their sizes."""
    from femto.data import CATALOGUE, FETCH_ALIASES, corpus_path

    home = _tok_data_home(data_home)
    click.echo(f"  {'name':<17} {'status':<15} {'size':>13}  description")
    for name, info in CATALOGUE.items():
        path = corpus_path(info, home)
        if path.is_file():
            status = "bundled" if info.url is None else "downloaded"
            size = f"{path.stat().st_size:,} B"
        else:
            status = "missing" if info.url is None else "not downloaded"
            size = f"{info.size:,} B" if info.size else "-"
        click.echo(f"  {name:<17} {status:<15} {size:>13}  {info.description}")
        if path.is_file():
            click.echo(f"  {'':<17} {path}")
    for alias, target in FETCH_ALIASES.items():
        click.echo(f"`femto data fetch {alias}` downloads {target} into {home}")
    click.echo(
        "--data also takes a path: a UTF-8 text file, a folder of them, or a Reddit comment dump "
        "(.jsonl / .ndjson / RC_YYYY-MM.zst)"
    )


@data.command(name="fetch", short_help="Download a corpus (resumable, sha256-checked).")
@click.argument("name")
@click.option("--url", help="Download from this address (a mirror) instead of the catalogue's.")
@click.option("--sha256", help="Expected sha256 of the file, when the server publishes none.")
@_data_home_option
@user_errors
def data_fetch(name: str, url: str | None, sha256: str | None, data_home: str | None) -> None:
    """Download a corpus (e.g. `tinystories`, the full training file): resumable, sha256-checked."""
    from femto.data import CATALOGUE, FETCH_ALIASES, corpus_path, fetch_corpus

    home = _tok_data_home(data_home)
    resolved = FETCH_ALIASES.get(name, name)
    info = CATALOGUE.get(resolved)
    if info is not None and info.url is not None and corpus_path(info, home).is_file():
        click.echo(f"{resolved} is already downloaded: {corpus_path(info, home)}")
        return
    progress = _progress(f"downloading {resolved}", "B")
    try:
        path = fetch_corpus(name, home, url=url, sha256=sha256, progress=progress)
    finally:
        progress.close()
    click.echo(f"downloaded {path} ({path.stat().st_size:,} bytes, sha256 verified)")
    click.echo(f"use it with: femto train --data {resolved}")


# ---- plot (issue 13) ----


@main.command(short_help="Chart runs' losses (terminal, or a file with --save).")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--y", "metrics", multiple=True,
    type=click.Choice(["loss", "train", "val", "lr", "tokens_per_s", "grad_norm"]),
    help="What to draw (repeat for more): loss = each logged step's training loss, train / val = "
    "the evaluations' losses, lr, tokens_per_s, grad_norm. [default: loss and val]",
)  # fmt: skip
@click.option(
    "--x", "x", type=click.Choice(["step", "tokens"]), default="step", show_default=True,
    help="Horizontal axis: optimizer steps or tokens trained on.",
)  # fmt: skip
@click.option(
    "--save", type=click.Path(dir_okay=False),
    help="Write the chart to FILE (.png, .svg or .pdf; needs matplotlib: pip install "
    "'femto[plot]') instead of drawing it in the terminal.",
)  # fmt: skip
@user_errors
def plot(runs: tuple[str, ...], metrics: tuple[str, ...], x: str, save: str | None) -> None:
    """Draw the metrics of one or more runs (their metrics.jsonl) on one chart.

    \b
    Examples:
      femto plot runs/a runs/b
      femto plot runs/a --y val --y train --y lr --x tokens --save curves.png
    """
    import shutil

    from femto.plot import save_chart, terminal_chart
    from femto.runlog import load_run_log

    logs = [load_run_log(pathlib.Path(run)) for run in runs]
    chosen = list(dict.fromkeys(metrics)) or ["loss", "val"]
    if save is not None:
        save_chart(logs, chosen, pathlib.Path(save), x)
        click.echo(f"wrote {save}")
        return
    size = shutil.get_terminal_size((100, 30))
    tty = sys.stdout.isatty()
    click.echo(
        terminal_chart(logs, chosen, x, size.columns, max(size.lines - 3, 12), color=tty),
        color=tty,
    )


# ---- devices (the OpenCL issue) ----


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


@main.command(short_help="List OpenCL devices, for --device opencl:P:D.")
@click.option("--json", "as_json", is_flag=True, help="Print the device list as JSON.")
@user_errors
def devices(as_json: bool) -> None:
    """Show the CPU kernel path, and list OpenCL platforms and devices, for --device opencl:P:D.

    The device marked * is what plain --device opencl picks: the first GPU, else the first device.
    --json lists the OpenCL devices only.
    """
    import json

    from femto.backend import cpu, opencl  # lazily: pyopencl loads only for this command

    error = cpu.cpu_path_error()
    if error is not None:
        raise click.ClickException(error)
    if not as_json:
        click.echo(f"  cpu: {cpu.cpu_summary()}")

    rows = opencl.list_devices()
    gpus = [r for r in rows if "GPU" in r["type"]]
    default = (gpus or rows)[0] if rows else None
    if as_json:
        click.echo(json.dumps([{**r, "default": r is default} for r in rows], indent=2))
        return
    if not rows:
        raise click.ClickException(
            f"OpenCL platforms exist but none has a device: {opencl.INSTALL_HINT}"
        )
    header = f"  {'device':<12} {'type':<5} {'memory':>9} {'units':>5}  name (platform, version)"
    click.echo(header)
    for r in rows:
        mark = "*" if r is default else " "
        spec = f"opencl:{r['platform']}:{r['device']}"
        click.echo(
            f"{mark} {spec:<12} {r['type']:<5} {_gib(r['memory_bytes']):>9} {r['compute_units']:>5}  "
            f"{r['name']} ({r['platform_name']}, {r['version']})"
        )

