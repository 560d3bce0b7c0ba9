"""femto.cli.progress: bars on a terminal, periodic plain lines in a pipe, the training status line; and
femto.timing: the ETA with evaluations and checkpoints, carried over a resume."""

from __future__ import annotations

import io

import pytest

from femto.cli.progress import Progress, StatusLine, amount, duration
from femto.timing import OWN_STEPS, RunTimer, occurrences


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_amounts_and_durations():
    assert amount(999, "B") == "999 B" and amount(1_500, "B") == "1.5 kB"
    assert amount(27_000_000, "B") == "27.0 MB" and amount(3e9, "B") == "3.0 GB"
    assert amount(12_345, "windows") == "12,345 windows" and amount(7, "") == "7"
    assert duration(59.9) == "0:59" and duration(61) == "1:01" and duration(3_725) == "1:02:05"
    assert duration(-3) == "0:00"


def test_pipe_prints_a_line_per_interval_and_a_summary():
    clock, out = Clock(), io.StringIO()
    progress = Progress("encoding x", out, tty=False, unit="B", clock=clock, interval=10.0)
    for second in range(1, 26):
        clock.now += 1.0
        progress(second * 1_000_000, 25_000_000)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # at 10 s, at 20 s, and the summary
    assert lines[0] == "encoding x: 40%, 10.0 MB of 25.0 MB, 1.0 MB/s, ETA 0:15, 0:10 elapsed"
    assert lines[1].startswith("encoding x: 80%, 20.0 MB of 25.0 MB") and "ETA 0:05" in lines[1]
    assert lines[2] == "encoding x: 25.0 MB in 0:25, 1.0 MB/s"
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()


def test_pipe_is_quiet_for_quick_work():
    clock, out = Clock(), io.StringIO()
    with Progress("encoding x", out, tty=False, unit="B", clock=clock) as progress:
        clock.now += 0.2
        progress(10, 10)
    assert out.getvalue() == ""


def test_terminal_bar_has_rate_and_eta_and_leaves_one_line():
    clock, out = Clock(), io.StringIO()
    progress = Progress("evaluating", out, tty=True, unit="windows", clock=clock)
    clock.now += 2.0
    progress(50, 200)
    text = out.getvalue()
    assert text.startswith("\r\033[K") and " 25% |" in text
    assert "50/200 windows" in text and "25 windows/s" in text and "ETA 0:06" in text
    clock.now += 0.01
    progress(51, 200)  # within REDRAW_S of the last draw: not redrawn
    assert out.getvalue() == text
    clock.now += 6.0
    progress(200, 200)
    progress.close()
    assert out.getvalue().endswith("\r\033[Kevaluating: 200 windows in 0:08, 25 windows/s\n")
    quick = io.StringIO()
    with Progress("x", quick, tty=True, clock=clock) as progress:
        clock.now += 0.5
        progress(1, 1)
    assert quick.getvalue().endswith("\r\033[K")  # the bar is cleared, no line is left


def test_then_reports_the_uncounted_phase():
    clock, out = Clock(), io.StringIO()
    progress = Progress(
        "reading c", out, tty=False, unit="B", then="training the sentencepiece tokenizer",
        clock=clock,
    )  # fmt: skip
    clock.now += 2.0
    progress(4_000_000, 4_000_000)
    clock.now += 7.0
    progress.close()
    assert out.getvalue().splitlines() == [
        "reading c: 4.0 MB in 0:02; training the sentencepiece tokenizer ...",
        "reading c: 4.0 MB read, then training the sentencepiece tokenizer in 0:07 (0:09 in all)",
    ]


def test_status_line_keeps_permanent_lines_above_the_live_one():
    out = io.StringIO()
    status = StatusLine(out, tty=True)
    status.live("step 1/10")
    status.line("eval step 1: val 2.0")
    status.live("step 2/10")
    status.close()
    assert out.getvalue() == (
        "\r\033[Kstep 1/10" + "\r\033[Keval step 1: val 2.0\nstep 1/10" + "\r\033[Kstep 2/10\n"
    )
    piped = io.StringIO()
    status = StatusLine(piped, tty=False)
    status.live("step 1/10")  # a pipe would keep every rewrite: the caller prints what stays
    status.line("eval step 1: val 2.0")
    status.close()
    assert piped.getvalue() == "eval step 1: val 2.0\n"


@pytest.mark.parametrize(
    "after, upto, every, last, expected",
    [(0, 2500, 250, 2500, 10), (2000, 2500, 250, 2500, 2), (0, 10, 4, 10, 3), (8, 10, 4, 10, 1),
     (10, 10, 4, 10, 0), (0, 3, 100, 3, 1)],
)  # fmt: skip
def test_occurrences(after, upto, every, last, expected):
    brute = sum(1 for s in range(after + 1, upto + 1) if s % every == 0 or s == last)
    assert occurrences(after, upto, every, last) == brute == expected


def test_eta_counts_evaluations_and_checkpoints():
    timer = RunTimer()
    timer.add_step(0.1)
    assert timer.step_s() == pytest.approx(0.1)  # the first step is all there is
    timer.add_step(0.1)
    for _ in range(8):
        timer.add_step(0.1)
    # no evaluation measured yet: guessed from the step time (2 splits x 3 forwards a third each)
    assert timer.eval_s(eval_batches=3, grad_accum=1) == pytest.approx(2 * 3 * 0.1 / 3)
    timer.add_eval(2.0)
    timer.add_checkpoint(5.0)
    # steps 10..100: 90 steps, evaluations at 20, 30, ..., 100 (9), checkpoints at 50 and 100 (2)
    eta = timer.eta(10, 100, eval_every=10, save_every=50, eval_batches=3, grad_accum=1)
    assert eta == pytest.approx(90 * 0.1 + 9 * 2.0 + 2 * 5.0)


def test_a_resumed_timer_starts_from_the_earlier_sessions():
    first = RunTimer()
    for _ in range(30):
        first.add_step(0.2)
    first.add_eval(1.0)
    saved = first.to_dict(wall_s=12.0)
    resumed = RunTimer(saved)
    resumed.add_step(1.0)  # the first step of a session pays for the capture: not the rate
    assert resumed.step_s() == pytest.approx(0.2)
    assert resumed.eval_s(20, 1) == pytest.approx(1.0)
    resumed.add_step(0.5)  # a slower setting now: blended with the earlier sessions at first
    assert resumed.step_s() == pytest.approx((30 * 0.2 + 0.5) / 31)
    for _ in range(OWN_STEPS - 1):
        resumed.add_step(0.5)  # once measured enough, its own rate counts alone
    assert resumed.step_s() == pytest.approx(0.5)
    total = resumed.total(wall_s=3.0)
    assert total.steps == 30 + OWN_STEPS + 1 and total.wall_s == 15.0 and total.evals == 1
    assert RunTimer({"steps": "x"}).before.steps == 0  # a damaged entry: start afresh


def test_terminal_bar_narrows_to_fit(monkeypatch):
    import os

    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback: os.terminal_size((80, 20)))
    clock, out = Clock(), io.StringIO()
    progress = Progress("evaluating on tinystories", out, tty=True, unit="windows", clock=clock)
    clock.now += 10.0
    progress(11_072, 41_857)
    line = out.getvalue().split("\r\033[K")[-1]
    # the rate and ETA fit in 80 columns: the bar gives way (narrower, or gone)
    assert line.startswith("evaluating on tinystories  26%") and line.endswith("ETA 0:27")
    assert len(line) <= 79
