"""The run directory: safetensors weights and optimizer moments, config.json, metrics.jsonl.

Everything here is host arrays and JSON; no backend is touched. Files are written atomically, and a
checkpoint (three files) is committed through a small journal so that a crash at any instant leaves the
last complete checkpoint readable. Nothing is unpickled or executed while loading.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from dataclasses import dataclass, field

import numpy as np

from femto.errors import CheckpointError, ConfigError, WriteFailed
from femto.fileio import append_line, fsync_directory, write_atomic, write_failed, write_synced
from femto.memory_estimate import check_fits, weights_bytes
from femto.model import GPTConfig, checked_weights
from femto.runlock import checkpoint_lock
from femto.safe_read import MAX_JSON_BYTES, check_links, loads_json, read_bytes

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
JOURNAL_FILE = ".checkpoint-commit.json"
BEST_DIR = "best"  # --keep-best: the lowest-val-loss checkpoint, a run directory inside the run
CHECKPOINT_FILES = (MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE)
# every name femto writes in a run directory (tokenizer files included)
RUN_FILES = (*CHECKPOINT_FILES, METRICS_FILE, JOURNAL_FILE, "tokenizer.json", "vocab.json",
             "tokenizer.model")  # fmt: skip
MAX_HEADER_BYTES = 100_000_000  # the safetensors reference implementation's limit
# a header describes each tensor in one flat object: {"name": {"shape": [...], ...}}
MAX_HEADER_DEPTH = 4
_F32 = np.dtype("<f4")


# ---- safetensors ----


def safetensors_pieces(
    tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> list[bytes | memoryview]:
    """The safetensors file as pieces to write in turn: u64 little-endian header length, JSON header,
    then each tensor's raw F32 data, viewed in place (a checkpoint is never copied whole in memory).

    The header is padded with spaces to a multiple of 8 bytes, as the reference writer does, so every
    tensor starts aligned.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks: list[memoryview] = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name], dtype=_F32)
        raw = memoryview(array.reshape(-1).view(np.uint8))  # the bytes, in place
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + raw.nbytes],
        }
        chunks.append(raw)
        offset += raw.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    return [len(header_bytes).to_bytes(8, "little") + header_bytes, *chunks]


def encode_safetensors(
    tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> bytes:
    """The safetensors bytes in one piece (see safetensors_pieces)."""
    return b"".join(bytes(piece) for piece in safetensors_pieces(tensors, metadata))


def save_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray], metadata=None) -> None:
    write_atomic(path, safetensors_pieces(tensors, metadata))


def decode_safetensors(buf: bytes, source: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse and strictly validate safetensors bytes; every problem names `source` (the file)."""
    size = len(buf)
    if size < 8:
        raise CheckpointError(
            f"{source} is truncated: {size} bytes, too short for a safetensors header"
        )
    n = int.from_bytes(buf[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"{source} is corrupt: header length {n:,} bytes is implausible")
    if 8 + n > size:
        raise CheckpointError(
            f"{source} is truncated: header promises {n:,} header bytes, file has {size - 8:,} after "
            "the length (interrupted save?)"
        )
    header = loads_json(
        bytes(buf[8 : 8 + n]), source, CheckpointError, MAX_HEADER_DEPTH, "its header"
    )
    if not isinstance(header, dict):
        raise CheckpointError(f"{source} is corrupt: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{source} is corrupt: __metadata__ must map strings to strings")
    data_size = size - 8 - n
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(
                f"{source}: tensor {name} needs exactly dtype, shape and data_offsets, got {entry!r}"
            )
        if entry["dtype"] != "F32":
            raise CheckpointError(
                f"{source}: tensor {name} has dtype {entry['dtype']!r}; femto reads F32 only "
                "(convert with tensor.float() before saving)"
            )
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise CheckpointError(f"{source}: tensor {name} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(f"{source}: tensor {name} has invalid data_offsets {offsets!r}")
        nbytes = math.prod(shape) * 4
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointError(
                f"{source}: tensor {name} of shape {shape} needs {nbytes:,} bytes, its data_offsets "
                f"{offsets} span {offsets[1] - offsets[0]:,}"
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise CheckpointError(
                f"{source} is corrupt: tensor {name} starts at data byte {begin:,}, expected {end:,} "
                "(tensors must tile the data without gaps or overlaps)"
            )
        end = stop
    if end != data_size:
        if end > data_size:
            raise CheckpointError(
                f"{source} is truncated: header promises {end:,} data bytes, file has {data_size:,} "
                "(interrupted save?)"
            )
        raise CheckpointError(
            f"{source} is corrupt: {data_size - end:,} bytes after the last tensor's data"
        )
    base = 8 + n
    tensors = {}
    for name, entry in header.items():
        begin, stop = entry["data_offsets"]
        array = np.frombuffer(buf, dtype=_F32, count=(stop - begin) // 4, offset=base + begin)
        tensors[name] = array.reshape(entry["shape"]).astype(np.float32)
    return tensors, metadata


def load_safetensors(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    path = pathlib.Path(path)
    try:
        buf = read_bytes(path, CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: a run directory is created by `femto train --out {path.parent}`"
        ) from None
    return decode_safetensors(buf, str(path))


# ---- the run directory ----


@dataclass
class RunState:
    """Everything config.json holds besides the arrays: configs, progress, RNG and tokenizer."""

    model: GPTConfig
    train: dict
    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float | None = None
    # "micro_batches": the data stream's next global micro-batch; older runs: a generator's state
    rng: dict = field(default_factory=dict)
    tokenizer: dict = field(default_factory=dict)  # the tokenizer's save() description
    timing: dict = field(default_factory=dict)  # seconds spent so far (femto.timing.Totals)

    def to_json(self) -> dict:
        return {
            "format": "femto-run",
            "format_version": FORMAT_VERSION,
            "model": self.model.to_dict(),
            "train": self.train,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "rng": self.rng,
            "tokenizer": self.tokenizer,
            "timing": self.timing,
        }


def _journal_path(run_dir: pathlib.Path) -> pathlib.Path:
    return run_dir / JOURNAL_FILE


def _pending_name(name: str) -> str:
    return f".{name}.pending"


def _committed_path(run_dir: pathlib.Path, name: str) -> pathlib.Path:
    """Where the current checkpoint's file `name` lies: its pending copy while a commit that was cut
    short is still being rolled forward, the file itself otherwise. Reading never modifies the run."""
    pending = run_dir / _pending_name(name)
    if _journal_path(run_dir).exists() and pending.exists():
        return pending
    return run_dir / name


def check_run_files(run_dir: pathlib.Path) -> None:
    """Refuse a run directory whose files are links leading out of it or nowhere (femto would write
    through them: a dangling metrics.jsonl link would create a file elsewhere)."""
    check_links(run_dir, RUN_FILES, CheckpointError)
    if (run_dir / METRICS_FILE).is_symlink():
        raise CheckpointError(
            f"{run_dir / METRICS_FILE} is a symlink: femto appends to it and never through a link; "
            "replace the link with the file"
        )


def has_checkpoint(run_dir: pathlib.Path) -> bool:
    return _committed_path(pathlib.Path(run_dir), CONFIG_FILE).exists()


def finish_interrupted_commit(run_dir: pathlib.Path) -> None:
    """Roll a checkpoint commit that a crash cut short forward, and drop half-written pending files.

    The journal is written only after every pending file is complete and fsynced, so when it exists
    the pending files (those not yet renamed) are the newer, whole checkpoint.
    """
    run_dir = pathlib.Path(run_dir)
    if _journal_path(run_dir).exists():
        for name in CHECKPOINT_FILES:
            pending = run_dir / _pending_name(name)
            if pending.exists():
                os.replace(pending, run_dir / name)
        fsync_directory(run_dir)
        _journal_path(run_dir).unlink()
        fsync_directory(run_dir)
    for name in CHECKPOINT_FILES:
        (run_dir / _pending_name(name)).unlink(missing_ok=True)


def save_checkpoint(
    run_dir: pathlib.Path,
    weights: dict[str, np.ndarray],
    optimizer_state: dict[str, np.ndarray],
    state: RunState,
) -> None:
    """Write model.safetensors, optimizer.safetensors and config.json as one atomic commit.

    Each file goes to a pending name and is fsynced; then a journal naming them is written; then they
    are renamed into place and the journal removed. A crash before the journal keeps the old
    checkpoint; a crash after it is finished by the next save, and readers already see the new one.
    """
    run_dir = pathlib.Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with checkpoint_lock(run_dir, exclusive=True):  # readers see no file move half-way
            finish_interrupted_commit(run_dir)
    except OSError as exc:
        raise write_failed(exc.filename or run_dir, exc) from None
    meta = {
        "format": "pt",
        "femto_step": str(state.step),
        "femto_format_version": str(FORMAT_VERSION),
    }
    contents = {
        MODEL_FILE: safetensors_pieces(weights, meta),
        OPTIMIZER_FILE: safetensors_pieces(optimizer_state, meta),
        CONFIG_FILE: (json.dumps(state.to_json(), indent=2) + "\n").encode("utf-8"),
    }
    try:
        for name, data in contents.items():
            write_synced(run_dir / _pending_name(name), data)
        fsync_directory(run_dir)
        with checkpoint_lock(run_dir, exclusive=True):
            write_atomic(
                _journal_path(run_dir), json.dumps({"files": list(contents)}).encode("utf-8")
            )
    except BaseException as exc:
        # no journal, so the pending files are not a checkpoint yet: drop them, keep the old one
        for name in contents:
            (run_dir / _pending_name(name)).unlink(missing_ok=True)
        if isinstance(exc, (WriteFailed, OSError)):
            cause = str(exc if isinstance(exc, WriteFailed) else write_failed(run_dir, exc))
            for name in contents:  # name the file the user knows, not its pending copy
                cause = cause.replace(str(run_dir / _pending_name(name)), str(run_dir / name))
            raise WriteFailed(
                f"the checkpoint of step {state.step} was not saved: {cause} "
                f"({run_dir} keeps its previous checkpoint)"
            ) from None
        raise
    try:
        with checkpoint_lock(run_dir, exclusive=True):
            finish_interrupted_commit(run_dir)
    except OSError as exc:  # the journal is whole: the next start rolls this commit forward
        raise write_failed(run_dir, exc) from None


def load_state(run_dir: pathlib.Path) -> RunState:
    """Read and validate config.json of the run in `run_dir`."""
    run_dir = pathlib.Path(run_dir)
    path = _committed_path(run_dir, CONFIG_FILE)
    shown = run_dir / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(
            f"no run in {run_dir}: {shown} is missing (a run is created by `femto train --out {run_dir}`)"
        )
    try:
        data = read_bytes(path, CheckpointError, run_dir, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise CheckpointError(f"no run in {run_dir}: {shown} is missing") from None
    raw = loads_json(data, str(shown), CheckpointError)
    if not isinstance(raw, dict) or raw.get("format") != "femto-run":
        raise CheckpointError(f'{shown} is not a femto run config (no "format": "femto-run")')
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{shown} has format_version {version!r}; this femto reads versions 1..{FORMAT_VERSION} "
            "(upgrade femto to read newer runs)"
        )
    try:
        model = GPTConfig.from_dict(raw.get("model"))
    except ConfigError as exc:
        raise CheckpointError(f'{shown}: invalid "model": {exc}') from None
    # a crafted n_layer or n_embd must not make a reader allocate without bound
    check_fits(weights_bytes(model), f"the model in {shown} (its weights alone)", CheckpointError)
    checks = {
        "train": dict,
        "step": int,
        "tokens_seen": int,
        "rng": dict,
        "tokenizer": dict,
    }
    for key, kind in checks.items():
        if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
            raise CheckpointError(
                f'{shown}: "{key}" must be a {kind.__name__}, got {raw.get(key)!r}'
            )
    if raw["step"] < 0 or raw["tokens_seen"] < 0:
        raise CheckpointError(f"{shown}: step and tokens_seen must be non-negative")
    best = raw.get("best_val_loss")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        raise CheckpointError(f'{shown}: "best_val_loss" must be a number or null, got {best!r}')
    for name, value in raw["rng"].items():
        if name == "micro_batches":  # the data stream's position (a count since issue 10)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CheckpointError(
                    f'{shown}: "rng" entry "micro_batches" must be a count >= 0, got {value!r}'
                )
            continue
        _check_rng_state(value, f'{shown}: "rng" entry {name!r}')  # a run saved before that
    for key in ("data", "tokenizer", "device"):  # read by sample, eval and tokenize stats too
        if key in raw["train"] and not isinstance(raw["train"][key], str):
            raise CheckpointError(
                f'{shown}: "train" option "{key}" must be a string, got {raw["train"][key]!r}'
            )
    return RunState(
        model=model,
        train=raw["train"],
        step=raw["step"],
        tokens_seen=raw["tokens_seen"],
        best_val_loss=None if best is None else float(best),
        rng=raw["rng"],
        tokenizer=raw["tokenizer"],
        # runs saved before timing was recorded (or a damaged entry): the ETA starts afresh
        timing=raw["timing"] if isinstance(raw.get("timing"), dict) else {},
    )


def _check_rng_state(value: object, what: str) -> None:
    """A numpy bit generator state that PCG64 (every femto RNG) accepts, or a CheckpointError."""
    try:
        np.random.PCG64().state = value
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        shown = repr(value)[:80]
        raise CheckpointError(f"{what} is not a numpy PCG64 state ({exc}): got {shown}") from None


def _check_finite(tensors: dict[str, np.ndarray], shown: pathlib.Path) -> None:
    """Refuse NaN and infinity: a diverged or damaged checkpoint would sample garbage, exit 0."""
    for name, array in tensors.items():
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise CheckpointError(
                f"{shown}: tensor {name} holds {bad:,} non-finite value(s) (NaN or infinity) of "
                f"{array.size:,}: the checkpoint is diverged or damaged; resume from a good copy"
            )


def _check_step(metadata: dict[str, str], state: RunState, shown: pathlib.Path) -> None:
    step = metadata.get("femto_step")
    if step is not None and step != str(state.step):
        raise CheckpointError(
            f"{shown} holds step {step} but config.json says step {state.step}: the files come from "
            "different checkpoints (copied by hand?)"
        )


def load_weights(run_dir: pathlib.Path, state: RunState) -> dict[str, np.ndarray]:
    """model.safetensors as arrays, checked against the model config (every name and shape)."""
    run_dir = pathlib.Path(run_dir)
    shown = run_dir / MODEL_FILE
    # the weights (twice: nanoGPT's files may carry the tied lm_head too) and a header at most
    limit = 2 * weights_bytes(state.model) + 8 + MAX_HEADER_BYTES
    tensors, metadata = decode_safetensors(_read(run_dir, MODEL_FILE, limit), str(shown))
    _check_step(metadata, state, shown)
    tensors = checked_weights(state.model, tensors, str(shown))  # nanoGPT's tied lm_head dropped
    _check_finite(tensors, shown)
    return tensors


def load_optimizer_state(run_dir: pathlib.Path, state: RunState) -> dict[str, np.ndarray]:
    """optimizer.safetensors as arrays (names checked by the optimizer that loads them)."""
    run_dir = pathlib.Path(run_dir)
    shown = run_dir / OPTIMIZER_FILE
    limit = 2 * weights_bytes(state.model) + 8 + MAX_HEADER_BYTES  # two moments per weight
    tensors, metadata = decode_safetensors(_read(run_dir, OPTIMIZER_FILE, limit), str(shown))
    _check_step(metadata, state, shown)
    _check_finite(tensors, shown)
    return tensors


def _read(run_dir: pathlib.Path, name: str, limit: int) -> bytes:
    path = _committed_path(run_dir, name)
    try:
        return read_bytes(path, CheckpointError, run_dir, limit)
    except FileNotFoundError:
        raise CheckpointError(
            f"{run_dir / name} is missing: the run in {run_dir} is incomplete "
            f"(`femto train --out {run_dir}` writes it)"
        ) from None


# ---- metrics.jsonl ----


def append_metrics(run_dir: pathlib.Path, record: dict) -> None:
    """Append one JSON line, fsynced; a failed write leaves no partial line (fileio.append_line)."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
    append_line(run_dir / METRICS_FILE, line)


def read_metrics(run_dir: pathlib.Path) -> list[dict]:
    """The logged records; a torn last line (a crash mid-append) is skipped."""
    path = pathlib.Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # a torn or crafted line
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_metrics(run_dir: pathlib.Path, step: int) -> None:
    """Keep the records up to `step` (a resumed run re-logs the steps after its checkpoint)."""
    path = pathlib.Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [
        r for r in read_metrics(run_dir) if isinstance(r.get("step"), int) and r["step"] <= step
    ]
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept)
    write_atomic(path, data.encode("utf-8"))
