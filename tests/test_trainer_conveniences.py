"""nanoGPT's conveniences and exact output: `train --config`, `--keep-best` with `--checkpoint
best`, `--init-from`, `--lr-decay-steps` and the resume notice, `sample --prompt-file`, `tokenize
decode --output` and `encode --file` byte for byte, the Reddit summary; bad input: one-line errors.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from click.testing import CliRunner

from femto.cli import main
from femto.data import bundled_root
from femto.train import TrainConfig, lr_at

TINY = [
    "--steps", "3", "--batch-size", "4", "--block-size", "16", "--n-layer", "1", "--n-head", "2",
    "--n-embd", "16", "--eval-every", "1", "--eval-batches", "2", "--save-every", "2",
    "--warmup", "1", "--sample-tokens", "0",
]  # fmt: skip
TINY_TOML = """
steps = 3
batch-size = 4
block_size = 16
n-layer = 1
n-head = 2
n-embd = 16
eval-every = 1
eval-batches = 2
save-every = 2
warmup = 1
sample-tokens = 0
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("conveniences")
    text = (bundled_root() / "shakespeare" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (root / "a.txt").write_text(text[:20_000], encoding="utf-8")
    (root / "b.txt").write_text(text[20_000:40_000], encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def env(workdir) -> dict:
    return {"FEMTO_CACHE_DIR": str(workdir / "cache")}


def invoke(args, env, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, **kwargs)


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def best_run(workdir, env) -> pathlib.Path:
    """A run trained from a config file (one option overridden), keeping its best checkpoint."""
    (workdir / "tiny.toml").write_text(TINY_TOML + "keep-best = true\nlr = 0.01\n")
    run = workdir / "best-run"
    result = invoke(
        ["train", "--data", workdir / "a.txt", "--out", run, "--config", workdir / "tiny.toml",
         "--steps", "4"], env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return run


def test_config_file_values_are_stored_and_the_command_line_wins(best_run):
    saved = json.loads((best_run / "config.json").read_text())
    assert saved["train"]["steps"] == 4  # the command line
    assert saved["train"]["batch_size"] == 4 and saved["train"]["lr"] == 0.01  # the file
    assert saved["train"]["keep_best"] is True and saved["model"]["n_embd"] == 16


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("stepz = 3\n", ["unknown key 'stepz'", "bad.toml"]),
        ('steps = "many"\n', ["key 'steps' must be an integer", "'many'", "bad.toml"]),
        ("lr = true\n", ["key 'lr' must be a number", "bad.toml"]),
        ('sp-model-type = "wordpiece"\n', ["key 'sp-model-type' must be one of unigram, bpe"]),
        ("steps = \n", ["is not valid TOML", "bad.toml"]),
        ("steps = 3\nsteps_ = 1\n", ["unknown key 'steps_'"]),
    ],
)
def test_bad_config_files(content, fragments, workdir, env, tmp_path):
    (tmp_path / "bad.toml").write_text(content)
    result = invoke(["train", "--out", tmp_path / "r", "--config", tmp_path / "bad.toml"], env)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "r").exists()


def test_config_file_can_name_the_run_directory(workdir, env, tmp_path):
    run = tmp_path / "from-file"
    (tmp_path / "c.toml").write_text(TINY_TOML + f'out = "{run}"\ndata = "{workdir / "a.txt"}"\n')
    result = invoke(["train", "--config", tmp_path / "c.toml"], env)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["train"]["data"] == str(workdir / "a.txt")


def test_missing_config_file(env, tmp_path):
    result = invoke(["train", "--out", tmp_path / "r", "--config", tmp_path / "none.toml"], env)
    assert_one_line_error(result, "--config", "none.toml does not exist")


def test_keep_best_is_loadable_by_sample_and_eval(best_run, env):
    best = json.loads((best_run / "best" / "config.json").read_text())
    latest = json.loads((best_run / "config.json").read_text())
    assert best["best_val_loss"] == latest["best_val_loss"]
    assert 1 <= best["step"] <= latest["step"]
    result = invoke(["eval", "--out", best_run, "--checkpoint", "best", "--split", "val"], env)
    assert result.exit_code == 0, result.output
    loss = float(result.output.split(": ")[1].split()[0])
    assert loss == pytest.approx(best["best_val_loss"], abs=0.3)
    sample = invoke(
        ["sample", "--out", best_run, "--checkpoint", "best", "--tokens", "5", "--prompt", "A"], env
    )
    assert sample.exit_code == 0 and sample.output.startswith("A"), sample.output


def test_checkpoint_best_without_keep_best(workdir, env, tmp_path):
    run = tmp_path / "r"
    assert invoke(["train", "--data", workdir / "a.txt", "--out", run, *TINY], env).exit_code == 0
    assert not (run / "best").exists()
    for command in ("sample", "eval"):
        result = invoke([command, "--out", run, "--checkpoint", "best"], env)
        assert_one_line_error(result, "has no best checkpoint", "--keep-best")


def test_init_from_fine_tunes_on_a_new_corpus(best_run, workdir, env, tmp_path):
    run = tmp_path / "ft"
    result = invoke(
        ["train", "--data", workdir / "b.txt", "--out", run, "--init-from", best_run, "--steps",
         "1", "--batch-size", "2", "--eval-batches", "1", "--sample-tokens", "0"], env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())
    source = json.loads((best_run / "config.json").read_text())
    assert saved["model"] == source["model"] and saved["step"] == 1
    assert saved["train"]["init_from"] == str(best_run)
    assert saved["train"]["data"] == str(workdir / "b.txt")
    # the fine-tuned run starts from the source's weights: its first loss is the source's level,
    # far below a fresh model's ln(vocab) = 4.06
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] < 3.9


@pytest.mark.parametrize(
    ("extra", "data", "fragments"),
    [
        (["--n-embd", "32", "--tokenizer", "byte"], "b.txt",
         ["--n-embd 32 (the source has 16)", "--tokenizer 'byte' (the source uses 'char')"]),
        ([], "README.md", ["keeps the source run's tokenizer, which cannot encode", "'#'"]),
    ],
)  # fmt: skip
def test_init_from_refuses_another_shape_or_tokenizer(
    extra, data, fragments, best_run, workdir, env, tmp_path
):
    path = workdir / data if data != "README.md" else pathlib.Path(__file__).parents[1] / data
    result = invoke(
        ["train", "--data", path, "--out", tmp_path / "ft", "--init-from", best_run, *extra], env
    )
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "ft").exists()


def test_init_from_a_missing_run(workdir, env, tmp_path):
    result = invoke(
        ["train", "--data", workdir / "b.txt", "--out", tmp_path / "ft", "--init-from",
         tmp_path / "nothing"], env,
    )  # fmt: skip
    assert_one_line_error(result, "--init-from", "no run there")


def test_lr_decay_steps_holds_the_schedule():
    short = TrainConfig(steps=300, warmup=10)
    extended = TrainConfig(steps=600, warmup=10)
    held = TrainConfig(steps=600, warmup=10, lr_decay_steps=300)
    assert lr_at(299, held) == lr_at(299, short) and lr_at(300, held) == short.min_lr
    assert lr_at(500, held) == short.min_lr
    assert lr_at(300, extended) > 1.5 * lr_at(300, short)  # re-stretched


def test_resume_with_more_steps_says_what_the_schedule_does(workdir, env, tmp_path):
    run = tmp_path / "r"
    assert invoke(["train", "--data", workdir / "a.txt", "--out", run, *TINY], env).exit_code == 0
    stretched = invoke(["train", "--out", run, "--steps", "4", "--sample-tokens", "0"], env)
    assert stretched.exit_code == 0, stretched.output
    assert "the cosine decay now ends at step 4 instead of 3" in stretched.output
    assert "pass --lr-decay-steps 3 to keep the old schedule" in stretched.output
    held = invoke(["train", "--out", run, "--steps", "5", "--lr-decay-steps", "4"], env)
    assert held.exit_code == 0, held.output
    assert "the learning-rate schedule is unchanged" in held.output
    assert json.loads((run / "config.json").read_text())["train"]["lr_decay_steps"] == 4
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] == pytest.approx(1e-4)  # step 5 is past the decay's end: min_lr


def test_old_runs_without_lr_decay_steps_resume(workdir, env, tmp_path):
    run = tmp_path / "r"
    assert invoke(["train", "--data", workdir / "a.txt", "--out", run, *TINY], env).exit_code == 0
    config = json.loads((run / "config.json").read_text())
    for key in ("lr_decay_steps", "keep_best", "init_from"):
        del config["train"][key]
    (run / "config.json").write_text(json.dumps(config))
    result = invoke(["train", "--out", run, "--steps", "4"], env)
    assert result.exit_code == 0, result.output


def test_prompt_file_is_read_exactly(best_run, env, tmp_path):
    (tmp_path / "p.txt").write_bytes("ROMEO:\nA".encode())
    result = invoke(
        ["sample", "--out", best_run, "--prompt-file", tmp_path / "p.txt", "--tokens", "3"], env
    )
    assert result.exit_code == 0 and result.output.startswith("ROMEO:\nA"), repr(result.output)
    # no newline translation: the \r reaches the (char) tokenizer, which has no such character
    (tmp_path / "crlf.txt").write_bytes(b"ROMEO:\r\nA")
    crlf = invoke(["sample", "--out", best_run, "--prompt-file", tmp_path / "crlf.txt"], env)
    assert_one_line_error(crlf, "U+000D")
    both = invoke(
        ["sample", "--out", best_run, "--prompt-file", tmp_path / "p.txt", "--prompt", "A"], env
    )
    assert_one_line_error(both, "give --prompt or --prompt-file, not both")
    missing = invoke(["sample", "--out", best_run, "--prompt-file", tmp_path / "none.txt"], env)
    assert_one_line_error(missing, "--prompt-file", "none.txt does not exist")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    bad = invoke(["sample", "--out", best_run, "--prompt-file", tmp_path / "latin1.txt"], env)
    assert_one_line_error(bad, "latin1.txt is not UTF-8 (byte 3)")


def test_decode_writes_exact_bytes(workdir, env, tmp_path):
    best_run = tmp_path / "tok"
    made = invoke(
        ["tokenize", "train", "--tokenizer", "byte", "--data", workdir / "a.txt", "--out",
         best_run], env,
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    source = "ROMEO:\r\nSpeak \u00e9.\n"
    (tmp_path / "src.txt").write_bytes(source.encode("utf-8"))
    ids = invoke(["tokenize", "encode", "--out", best_run, "--file", tmp_path / "src.txt"], env)
    assert ids.exit_code == 0, ids.output
    assert len(ids.output.split()) == len(source.encode())  # the \r survived: bytes exactly
    piped = invoke(["tokenize", "decode", "--out", best_run, *ids.output.split()], env)
    assert piped.stdout_bytes == source.encode("utf-8")  # no newline added off a terminal
    out = tmp_path / "back.txt"
    written = invoke(
        ["tokenize", "decode", "--out", best_run, "--output", out, *ids.output.split()], env
    )
    assert written.exit_code == 0 and written.output == ""
    assert out.read_bytes() == source.encode("utf-8")
    nowhere = invoke(
        ["tokenize", "decode", "--out", best_run, "--output", tmp_path / "no" / "x.txt", "1"], env
    )
    assert_one_line_error(nowhere, "--output", "does not exist")


def test_reddit_summary_is_printed_once_by_each_command(workdir, env, tmp_path):
    text = (workdir / "a.txt").read_text(encoding="utf-8")
    lines = [json.dumps({"body": text[i : i + 400]}) for i in range(0, 16_000, 400)]
    lines += [json.dumps({"body": "[deleted]"}), json.dumps({"body": "[removed]"})]
    lines.append(json.dumps({"body": "a comment cut short"})[:15])
    dump = tmp_path / "dump.jsonl"
    dump.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = (
        "kept 40 comment(s), dropped 2 deleted or removed, skipped 1 malformed line(s) "
        "(first: dump.jsonl line 43: truncated JSON"
    )
    env = {"FEMTO_CACHE_DIR": str(tmp_path / "cache")}
    for attempt in ("new run", "cache hit"):
        run = tmp_path / attempt.replace(" ", "-")
        result = invoke(["train", "--data", dump, "--out", run, *TINY], env)
        assert result.exit_code == 0, result.output
        assert result.output.count(summary) == 1, result.output
        assert "malformed" not in result.output.replace(summary, ""), result.output
    result = invoke(["eval", "--out", run], env)
    assert result.exit_code == 0 and result.output.count(summary) == 1, result.output
