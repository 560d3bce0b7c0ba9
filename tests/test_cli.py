"""`femto train`, `sample`, `eval`, `tokenize encode|decode` through click's test runner: a tiny run
end to end, resume, Ctrl-C, and every kind of bad input (one-line error, non-zero exit, run untouched).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal

import pytest
from click.testing import CliRunner

import femto.train
from femto.cli import main
from femto.data import bundled_root

TINY = [
    "--steps", "3", "--batch-size", "4", "--block-size", "16", "--n-layer", "1", "--n-head", "2",
    "--n-embd", "16", "--eval-every", "2", "--eval-batches", "2", "--save-every", "2",
    "--log-every", "1", "--warmup", "1", "--sample-tokens", "20",
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("cli")
    text = (bundled_root() / "shakespeare" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (root / "corpus.txt").write_text(text[:20_000], encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def env(workdir) -> dict:
    return {"FEMTO_CACHE_DIR": str(workdir / "cache")}


def invoke(args, env, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, **kwargs)


@pytest.fixture(scope="module")
def trained(workdir, env) -> pathlib.Path:
    """A 3-step run every read-only test shares (tests that change a run work on a copy)."""
    run = workdir / "run"
    result = invoke(["train", "--data", workdir / "corpus.txt", "--out", run, *TINY], env)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(trained, tmp_path / "run"))


def snapshot(directory: pathlib.Path) -> dict:
    if not directory.exists():
        return {}
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), f"a traceback instead of a message: {result.exception!r}"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_writes_a_run(trained):
    assert {p.name for p in trained.iterdir()} >= {
        "model.safetensors", "optimizer.safetensors", "config.json", "metrics.jsonl",
    }  # fmt: skip
    config = json.loads((trained / "config.json").read_text())
    assert config["step"] == 3 and config["model"]["n_layer"] == 1
    assert config["tokens_seen"] == 3 * 4 * 16
    steps = [
        json.loads(line)["step"] for line in (trained / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]


def test_train_output_has_progress_and_samples(workdir, env, tmp_path):
    result = invoke(
        ["train", "--data", workdir / "corpus.txt", "--out", tmp_path / "r", *TINY], env
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "new run in" in out and "parameters" in out
    assert "step 3/3 | loss " in out and "| val " in out and "tok/s" in out and "ETA" in out
    assert out.count("sample:") == 2  # checkpoints at step 2 and at the end
    # every evaluation leaves a line: both losses, speed and MFU
    evals = [line for line in out.splitlines() if line.startswith("eval step ")]
    assert [line.split(":")[0] for line in evals] == ["eval step 2", "eval step 3"]
    assert all("train " in e and "| val " in e and "tok/s" in e and "MFU " in e for e in evals)
    assert "MFLOP per token" in out and "GFLOP/s" in out
    # the summary: time, speed, final losses, the best and where it was, the files
    assert "done: step 3 of 3 in " in out and "training" in out and "saving and sampling" in out
    assert "tokens/s, MFU " in out and "final loss  train " in out
    best = min(
        json.loads(line)["val_loss"]
        for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
        if "val_loss" in json.loads(line)
    )
    assert f"best val    {best:.4f} at step " in out
    assert "model.safetensors" in out.splitlines()[-2] and "metrics.jsonl" in out.splitlines()[-2]


class RecordingProgress:
    """Stands in for the terminal progress bar: remembers every (done, total) and the close."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int]] = []
        self.closed = False

    def __call__(self, done: int, total: int) -> None:
        self.reports.append((done, total))

    def close(self) -> None:
        self.closed = True


def test_train_and_eval_report_encoding_progress(workdir, tmp_path, monkeypatch):
    bars: list[RecordingProgress] = []

    def make_bar(what: str) -> RecordingProgress:
        bars.append(RecordingProgress())
        return bars[-1]

    monkeypatch.setattr("femto.cli.progress.encoding_progress", make_bar)
    env = {"FEMTO_CACHE_DIR": str(tmp_path / "cache")}  # empty: the corpus is encoded afresh
    corpus = workdir / "corpus.txt"
    result = invoke(["train", "--data", corpus, "--out", tmp_path / "r", *TINY], env)
    assert result.exit_code == 0, result.output
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text(encoding="utf-8")[:5_000], encoding="utf-8")
    result = invoke(["eval", "--out", tmp_path / "r", "--data", other], env)
    assert result.exit_code == 0, result.output
    sizes = [corpus.stat().st_size, other.stat().st_size]
    assert [bar.reports[-1] for bar in bars] == [(size, size) for size in sizes]
    assert all(bar.closed for bar in bars)


def test_resume_continues_and_finished_run_is_left_alone(run_copy, env):
    result = invoke(["train", "--out", run_copy, "--steps", "5"], env)
    assert result.exit_code == 0, result.output
    assert "resuming at step 3" in result.output and "done: step 5" in result.output
    before = snapshot(run_copy)
    result = invoke(["train", "--out", run_copy, "--steps", "5"], env)
    assert result.exit_code == 0 and "nothing to train" in result.output
    assert snapshot(run_copy) == before


def test_ctrl_c_finishes_the_step_saves_and_exits_zero(workdir, env, tmp_path, monkeypatch):
    real_get_batch = femto.train.get_batch
    calls = []

    def interrupting_get_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # during step 2 of 3
            os.kill(os.getpid(), signal.SIGINT)
        return real_get_batch(*args, **kwargs)

    monkeypatch.setattr(femto.train, "get_batch", interrupting_get_batch)
    run = tmp_path / "r"
    args = ["train", "--data", workdir / "corpus.txt", "--out", run, *TINY, "--steps", "50"]
    result = invoke(args, env)
    assert result.exit_code == 0, result.output
    assert "interrupted: finishing this step and saving" in result.output
    assert json.loads((run / "config.json").read_text())["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sample_streams_seeded_text(trained, env):
    args = ["sample", "--out", trained, "--prompt", "ROMEO:", "--tokens", "30", "--seed", "3"]
    first, second = invoke(args, env), invoke(args, env)
    assert first.exit_code == 0, first.output
    assert first.output == second.output and first.output.startswith("ROMEO:")
    assert len(first.output) == len("ROMEO:") + 30 + 1  # char tokenizer: one char per token
    other = invoke([*args[:-1], "4"], env)
    assert other.output != first.output
    greedy = invoke(["sample", "--out", trained, "--tokens", "10", "--temperature", "0"], env)
    assert greedy.exit_code == 0 and greedy.output.startswith("\n")
    many = invoke(["sample", "--out", trained, "--tokens", "5", "--num-samples", "3"], env)
    assert many.output.count("-" * 40) == 2


def test_sample_long_prompt_keeps_the_tail_with_a_notice(trained, env):
    prompt = "First Citizen: " * 3  # 45 characters, block_size 16
    result = invoke(["sample", "--out", trained, "--prompt", prompt, "--tokens", "5"], env)
    assert result.exit_code == 0, result.output
    assert "keeping its last 16" in result.stderr
    assert result.stdout.startswith(prompt[-16:])


def test_eval_prints_loss_and_perplexity(trained, env, workdir):
    result = invoke(["eval", "--out", trained], env)
    assert result.exit_code == 0, result.output
    words = result.output.split()
    loss = float(words[words.index("nats/token,") - 1])
    assert abs(float(words[words.index("perplexity") + 1]) - 2.718281828**loss) < 0.01 * loss
    assert "windows of 16" in result.output
    val = invoke(
        ["eval", "--out", trained, "--split", "val", "--data", workdir / "corpus.txt"], env
    )
    assert val.exit_code == 0 and "(val split)" in val.output
    n_val = 20_000 - int(20_000 * 0.9)
    assert f"{(n_val - 1) // 16 * 16:,} positions" in val.output


def test_tokenize_encode_and_decode_round_trip(trained, env, tmp_path):
    result = invoke(["tokenize", "encode", "--out", trained, "To be"], env)
    assert result.exit_code == 0, result.output
    ids = result.output.split()
    assert len(ids) == 5
    back = invoke(["tokenize", "decode", "--out", trained, *ids], env)
    assert back.output == "To be"  # no newline added when stdout is not a terminal
    (tmp_path / "f.txt").write_text("be\n")
    from_file = invoke(["tokenize", "encode", "--out", trained, "--file", tmp_path / "f.txt"], env)
    assert from_file.output.split()[:2] == ids[3:] and len(from_file.output.split()) == 3


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--data", "/no/such/corpus"], ["no corpus at '/no/such/corpus'"]),
        (["train", "--batch-size", "0"], ["--batch-size must be a positive integer, got 0"]),
        (["train", "--steps", "-3"], ["--steps must be a positive integer, got -3"]),
        (["train", "--n-layer", "-1"], ["n_layer must be a positive integer, got -1"]),
        (["train", "--block-size", "0"], ["block_size must be a positive integer, got 0"]),
        (["train", "--n-embd", "0"], ["n_embd must be a positive integer, got 0"]),
        (["train", "--n-embd", "30", "--n-head", "4"], ["n_embd 30 must be divisible by n_head 4"]),
        (["train", "--grad-accum", "0"], ["--grad-accum must be a positive integer"]),
        (["train", "--lr", "-1"], ["--lr must be a positive number"]),
        (["train", "--dropout", "1.5"], ["dropout must be in [0, 1)"]),
        (["train", "--device", "tpu"], ["unknown device 'tpu'"]),
        (["sample", "--out", "{fresh}"], ["no run in", "femto train --out"]),
        (["eval", "--out", "{fresh}"], ["no run in"]),
    ],
)
def test_bad_options_on_a_new_run(args, fragments, workdir, env, tmp_path):
    fresh = tmp_path / "fresh"
    args = [a.replace("{fresh}", str(fresh)) for a in args]
    if args[0] == "train":  # click keeps the last --data, so a test's own --data wins
        args = ["train", "--out", str(fresh), "--data", str(workdir / "corpus.txt"), *args[1:]]
    assert_one_line_error(invoke(args, env), *fragments)
    assert not fresh.exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--n-layer", "2"], ["--n-layer 2 (the run has 1)", "another --out"]),
        (["train", "--tokenizer", "byte"], ["--tokenizer 'byte' (the run has 'char')"]),
        (["train", "--steps", "0"], ["--steps must be a positive integer, got 0"]),
        (["train", "--device", "tpu"], ["unknown device 'tpu'"]),
        (["train", "--device", "cpu:1"], ["unknown device 'cpu:1'"]),
        (["sample", "--tokens", "-1"], ["--tokens must be >= 0"]),
        (["sample", "--num-samples", "0"], ["--num-samples must be a positive integer"]),
        (["sample", "--temperature", "-0.5"], ["--temperature must be >= 0"]),
        (["sample", "--top-k", "-2"], ["--top-k must be >= 0"]),
        (["sample", "--prompt", "naïve"], ["'ï'"]),
        (["eval", "--batch-size", "0"], ["--batch-size must be a positive integer"]),
        (["eval", "--data", "/no/such/file"], ["no corpus at"]),
        (["tokenize", "decode", "3", "999"], ["token id 999 is outside the vocabulary"]),
        (["tokenize", "decode", "x"], ["token id 'x' is not an integer"]),
        (["tokenize", "encode", "the ü"], ["'ü' (U+00FC) at position 4"]),
        (["tokenize", "encode"], ["exactly one of TEXT or --file"]),
    ],
)
def test_bad_input_on_an_existing_run_leaves_it_alone(args, fragments, trained, env):
    before = snapshot(trained)
    command = args[:2] if args[0] == "tokenize" else args[:1]
    rest = args[len(command) :]
    result = invoke([*command, "--out", trained, *rest], env)
    assert_one_line_error(result, *fragments)
    assert snapshot(trained) == before


def corrupt_header(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:12] = b"\x00\xff\x00\xff"
    path.write_bytes(bytes(data))


def truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (corrupt_header, ["model.safetensors is corrupt"]),
        (truncate, ["model.safetensors is truncated", "interrupted save?"]),
    ],
)
@pytest.mark.parametrize("command", ["train", "sample", "eval"])
def test_damaged_weights_are_one_line_errors(damage, fragments, command, run_copy, env):
    damage(run_copy / "model.safetensors")
    before = snapshot(run_copy)
    extra = ["--steps", "5"] if command == "train" else []
    assert_one_line_error(invoke([command, "--out", run_copy, *extra], env), *fragments)
    assert snapshot(run_copy) == before


def test_weights_from_a_different_model_config(run_copy, workdir, env, tmp_path):
    other = tmp_path / "other"
    args = ["train", "--data", workdir / "corpus.txt", "--out", other, *TINY, "--n-embd", "8"]
    assert invoke(args, env).exit_code == 0
    shutil.copy(other / "model.safetensors", run_copy / "model.safetensors")
    before = snapshot(run_copy)
    for command in (["sample"], ["eval"], ["train", "--steps", "5"]):
        result = invoke([command[0], "--out", run_copy, *command[1:]], env)
        assert_one_line_error(
            result, "model.safetensors: tensor transformer.wte.weight has shape", ", 8]",
            "different model config",
        )  # fmt: skip
    assert snapshot(run_copy) == before
