"""What a user sees around the work: `femto plot` on real tiny runs (terminal and files), progress
for eval and tokenizer training, the MFU peak, whole help texts, metrics.jsonl's documentation."""

from __future__ import annotations

import json
import pathlib
import re
import sys

import click
import pytest
from click.testing import CliRunner

from femto import throughput
from femto.cli import main
from femto.data import bundled_root
from femto.model import GPTConfig

TINY = [
    "--steps", "6", "--batch-size", "4", "--block-size", "16", "--n-layer", "1", "--n-head", "2",
    "--n-embd", "16", "--eval-every", "2", "--eval-batches", "2", "--save-every", "6",
    "--log-every", "1", "--warmup", "1", "--sample-tokens", "0",
]  # fmt: skip
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def invoke(args, env, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, **kwargs)


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), f"a traceback instead of a message: {result.exception!r}"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("ux")
    text = (bundled_root() / "shakespeare" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (root / "corpus.txt").write_text(text[:20_000], encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def env(workdir) -> dict:
    return {"FEMTO_CACHE_DIR": str(workdir / "cache")}


@pytest.fixture(scope="module")
def runs(workdir, env) -> list[pathlib.Path]:
    """Two real tiny runs that differ in learning rate (and so in their curves)."""
    made = []
    for name, lr in (("a", "1e-3"), ("b", "3e-3")):
        run = workdir / name
        args = ["train", "--data", workdir / "corpus.txt", "--out", run, "--lr", lr, *TINY]
        result = invoke(args, env)
        assert result.exit_code == 0, result.output
        made.append(run)
    return made


def records(run: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- femto plot ----


def test_plot_draws_several_runs_in_the_terminal(runs, env):
    result = invoke(["plot", *runs], env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\033[" not in out  # not a terminal: no colour codes
    assert "loss (nats/token)" in out and "step" in out
    for run in runs:  # the legend names each run's lines
        assert f"{run} train loss (step)" in out and f"{run} val loss" in out
    # the y axis spans the losses logged
    losses = [r["loss"] for run in runs for r in records(run)]
    ticks = [float(t) for t in re.findall(r"^ *(\d+\.\d+)┤", out, flags=re.M)]
    assert ticks and min(losses) - 0.05 <= min(ticks) and max(ticks) <= max(losses) + 0.05


def test_plot_lr_and_tokens_per_s_get_panels_and_tokens_an_axis(runs, env):
    result = invoke(["plot", runs[0], "--y", "lr", "--y", "tokens_per_s", "--x", "tokens"], env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "learning rate" in out and "tokens/s" in out and "tokens" in out
    last_tokens = records(runs[0])[-1]["tokens"]
    assert last_tokens == 6 * 4 * 16
    assert f"{last_tokens:.1f}" in out or str(last_tokens) in out  # the x axis ends at the tokens


def test_plot_save_png_and_svg(runs, env, tmp_path):
    pytest.importorskip("matplotlib")
    png, svg = tmp_path / "curves.png", tmp_path / "curves.svg"
    result = invoke(["plot", *runs, "--y", "val", "--y", "train", "--y", "lr", "--save", png], env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {png}"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 500 and height > 500  # two panels: loss, learning rate
    result = invoke(["plot", runs[0], "--save", svg], env)
    assert result.exit_code == 0, result.output
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "val loss" in text and "train loss (step)" in text


def test_plot_save_without_matplotlib_is_one_line(runs, env, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = invoke(["plot", runs[0], "--save", tmp_path / "c.png"], env)
    assert_one_line_error(result, "needs matplotlib", "pip install 'femto[plot]'")
    assert not (tmp_path / "c.png").exists()


def test_plot_bad_input_is_one_line(runs, env, tmp_path):
    result = invoke(["plot", tmp_path / "nothing"], env)
    assert_one_line_error(result, "nothing", "not a run directory", "femto train --out")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke(["plot", empty], env)
    assert_one_line_error(result, "metrics.jsonl is missing or empty", "femto train --out")
    result = invoke(["plot", runs[0], "--save", tmp_path / "chart.jpg"], env)
    assert_one_line_error(result, "chart.jpg", ".png, .svg, .pdf")
    result = invoke(["plot", runs[0], "--save", tmp_path / "no" / "chart.png"], env)
    assert_one_line_error(result, "does not exist")
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')  # no val yet, no config
    result = invoke(["plot", old, "--y", "val"], env)
    assert_one_line_error(result, "nothing to plot", "val")
    result = invoke(["plot", old, "--x", "tokens"], env)
    assert_one_line_error(result, "nothing to plot", "tokens")


# ---- the training log's numbers ----


def test_metrics_record_tokens_and_eval_train_loss(runs):
    rows = records(runs[0])
    assert [r["tokens"] for r in rows] == [4 * 16 * s for s in range(1, 7)]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert all(isinstance(r["train_loss"], float) for r in evals)


def test_flops_per_token_is_nanogpts_estimate():
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    # nanoGPT: N non-embedding params (wpe left out, tied head counted once in wte)
    n = 65 * 128 + 4 * (12 * 128 * 128 + 13 * 128) + 2 * 128
    assert config.num_params() == n
    assert throughput.flops_per_token(config) == 6 * n + 12 * 4 * 128 * 64


def test_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    calls = []

    def fake_measure(backend):
        calls.append(backend.device_name)
        return 123e9

    monkeypatch.setattr(throughput, "measure_peak_flops", fake_measure)
    flops, key, measured = throughput.peak_flops("cpu", tmp_path)
    assert (flops, measured) == (123e9, True) and "threads" in key
    assert throughput.peak_flops("cpu", tmp_path) == (123e9, key, False) and len(calls) == 1
    (tmp_path / throughput.PEAK_FILE).write_text("{not json")  # damaged: measured again
    assert throughput.peak_flops("cpu", tmp_path)[2] is True and len(calls) == 2


def test_the_probe_measures_a_plausible_peak():
    from femto.backend.base import get_backend

    flops = throughput.measure_peak_flops(get_backend("cpu"), size=128, seconds=0.05)
    assert 1e8 < flops < 1e14


def test_peak_from_the_environment(workdir, env, tmp_path):
    given = {**env, "FEMTO_PEAK_FLOPS": "1e12"}
    result = invoke(
        ["train", "--data", workdir / "corpus.txt", "--out", tmp_path / "r", *TINY], given
    )
    assert result.exit_code == 0, result.output
    assert "against 1,000.0 GFLOP/s (FEMTO_PEAK_FLOPS)" in result.output
    bad = {**env, "FEMTO_PEAK_FLOPS": "fast"}
    result = invoke(
        ["train", "--data", workdir / "corpus.txt", "--out", tmp_path / "s", *TINY], bad
    )
    assert_one_line_error(result, "FEMTO_PEAK_FLOPS", "'fast'")


# ---- progress ----


class Recorder:
    def __init__(self, label: str, unit: str, then: str | None) -> None:
        self.label, self.unit, self.then = label, unit, then
        self.reports: list[tuple[int, int]] = []
        self.closed = False

    def __call__(self, done: int, total: int) -> None:
        self.reports.append((done, total))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def recorders(monkeypatch) -> list[Recorder]:
    made: list[Recorder] = []

    def factory(label: str, unit: str = "", then: str | None = None) -> Recorder:
        made.append(Recorder(label, unit, then))
        return made[-1]

    monkeypatch.setattr("femto.cli.progress.stderr_progress", factory)
    return made


def test_eval_reports_progress_over_windows(runs, env, recorders):
    result = invoke(["eval", "--out", runs[0], "--batch-size", "8"], env)
    assert result.exit_code == 0, result.output
    bar = next(r for r in recorders if r.label.startswith("evaluating"))
    windows = int(re.search(r"in ([\d,]+) windows", result.output).group(1).replace(",", ""))
    assert bar.unit == "windows" and bar.reports[-1] == (windows, windows) and bar.closed
    assert [done for done, _ in bar.reports] == sorted(done for done, _ in bar.reports)


def test_tokenizer_training_reports_reading_then_training(workdir, env, recorders, tmp_path):
    corpus = workdir / "corpus.txt"
    result = invoke(
        ["tokenize", "train", "--tokenizer", "sentencepiece", "--vocab", "400", "--data", corpus,
         "--out", tmp_path / "tok"], env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (bar,) = [r for r in recorders if r.label.startswith("reading")]
    size = corpus.stat().st_size
    assert bar.unit == "B" and bar.reports[-1] == (size, size) and bar.closed
    assert bar.then == "training the sentencepiece tokenizer"
    recorders.clear()
    result = invoke(
        ["train", "--data", corpus, "--out", tmp_path / "r", "--tokenizer", "char", *TINY], env
    )
    assert result.exit_code == 0, result.output
    bar = next(r for r in recorders if r.label.startswith("reading"))
    assert bar.reports[-1] == (size, size) and bar.then == "training the char tokenizer"
    assert all(r.closed for r in recorders)


# ---- help and docs ----


def test_femto_alone_prints_help_and_succeeds():
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "train" in result.output and "plot" in result.output


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in all_commands(main)], ids=" ".join)
def test_help_summaries_are_whole(path):
    parent = CliRunner().invoke(main, [*path[:-1], "--help"], terminal_width=80)
    assert parent.exit_code == 0, parent.output
    lines = parent.output.splitlines()
    listing = [line for line in lines if line.strip().startswith(path[-1] + " ")]
    assert listing, parent.output
    summary = listing[0].strip()[len(path[-1]):].strip()
    assert summary.endswith(".") and not summary.endswith("..."), summary
    assert not re.search(r"\b(e\.g|i\.e)\.$", summary), summary
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def readme_metrics_fields() -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### metrics.jsonl") :]
    section = section[: section.index("\n## ")]
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))


def test_every_metrics_field_is_documented(runs):
    written = {key for run in runs for record in records(run) for key in record}
    assert {"grad_norm", "train_loss", "tokens", "val_loss"} <= written
    assert written <= readme_metrics_fields(), written - readme_metrics_fields()


def test_piped_progress_is_plain_lines(runs, env, monkeypatch):
    import femto.cli.progress

    monkeypatch.setattr(femto.cli.progress, "QUIET_S", 0.0)  # as if every piece of work were slow
    monkeypatch.setattr(femto.cli.progress, "PIPE_INTERVAL_S", 0.0)
    result = invoke(["eval", "--out", runs[0], "--batch-size", "8"], env)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("evaluating on")]
    assert len(lines) >= 2 and "\r" not in result.output and "\033" not in result.output
    summary = r"evaluating on corpus\.txt: [\d,]+ windows in 0:0\d, [\d,]+ windows/s"
    assert re.fullmatch(summary, lines[-1]), lines[-1]
    assert re.match(r"evaluating on corpus\.txt: \d+%, [\d,]+ windows of [\d,]+ windows", lines[0])


def test_terminal_chart_in_colour_has_a_colour_per_run_and_a_legend_per_panel(runs):
    from femto.plot import PALETTE, terminal_chart
    from femto.runlog import load_run_log

    logs = [load_run_log(run) for run in runs]
    text = terminal_chart(logs, ["loss", "val", "lr"], "step", 100, 40, color=True)
    plain = re.sub(r"\033\[[0-9;]*m", "", text)
    assert "\033[48;" not in text  # no painted background: the terminal's own
    for index, run in enumerate(runs):
        assert f"\033[38;5;{PALETTE[index]}m" in text
        assert f"{run} val loss" in plain and f"{run} train loss (step)" in plain
    lines = plain.splitlines()
    names = ("loss (nats/token)", "learning rate")
    titles = [i for i, line in enumerate(lines) if line.strip() in names]
    assert len(titles) == 2
    assert "val loss" in lines[titles[1] - 1]  # the loss panel's legend sits under it
    assert lines[-1].strip().endswith(str(runs[1]))  # and the lr panel's, naming the runs
