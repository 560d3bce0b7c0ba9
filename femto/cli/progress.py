"""Progress on the command line: a bar with rate and ETA on a terminal, periodic lines in a pipe.

Part of the CLI layer (only the femto.cli package imports it): library code reports (done, total)
through a callback and never prints; this module turns those reports into text on a stream. It also holds the
training status line, which stays at the bottom of a terminal while permanent lines scroll above it.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

PIPE_INTERVAL_S = 10.0  # seconds between plain lines when the output is a log or a pipe
REDRAW_S = 0.1  # a terminal bar is redrawn at most this often
QUIET_S = 1.0  # work that took less than this leaves no line in a pipe


def duration(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def amount(n: float, unit: str) -> str:
    """Bytes in decimal kB/MB/GB; other units as a plain count with thousands separators."""
    if unit == "B":
        for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if n >= scale:
                return f"{n / scale:.1f} {name}"
        return f"{n:.0f} B"
    return f"{n:,.0f} {unit}".rstrip()


class Progress:
    """A (done, total) callback that draws itself: a bar on a terminal, a line every
    PIPE_INTERVAL_S elsewhere, and a closing line with the time taken and the rate.

    `then` names work that follows the counted part without reporting (sentencepiece fitting its
    pieces after reading the corpus): once done reaches total the bar turns into that label with the
    elapsed time, kept ticking on a terminal by a thread until close().
    """

    def __init__(
        self,
        label: str,
        stream: TextIO,
        tty: bool,
        unit: str = "",
        then: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,  # None: PIPE_INTERVAL_S
    ) -> None:
        self.label, self.stream, self.tty, self.unit, self.then = label, stream, tty, unit, then
        self.clock = clock
        self.interval = PIPE_INTERVAL_S if interval is None else interval
        self.start = clock()
        self.done = self.total = 0
        self.last_draw = self.last_line = self.start
        self.drawn = self.printed = False
        self.then_start: float | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, done: int, total: int) -> None:
        if self.then_start is not None:
            return  # the counted part is over; the ticker shows the rest
        self.done, self.total = done, max(total, done)
        now = self.clock()
        if self.then is not None and self.then_start is None and self.total and done >= total:
            self.then_start = now
            self._announce_then()
            return
        if self.tty:
            if now - self.last_draw >= REDRAW_S or done >= self.total:
                self.last_draw = now
                self._draw(self._bar_text(now))
        elif now - self.last_line >= self.interval:
            self.last_line = now
            self._line(f"{self.label}: {self._counts(now)}")

    def _rate(self, now: float) -> float:
        elapsed = now - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def _counts(self, now: float) -> str:
        rate = self._rate(now)
        parts = []
        if self.total:
            parts.append(f"{100 * self.done / self.total:.0f}%")
            parts.append(f"{amount(self.done, self.unit)} of {amount(self.total, self.unit)}")
        else:
            parts.append(amount(self.done, self.unit))
        if rate > 0:
            parts.append(f"{amount(rate, self.unit)}/s")
            if self.total and self.done < self.total:
                parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        parts.append(f"{duration(now - self.start)} elapsed")
        return ", ".join(parts)

    def _bar_text(self, now: float) -> str:
        """label NN% |####....| done/total unit  rate/s  ETA m:ss, the bar narrowed to fit."""
        rate = self._rate(now)
        if self.unit == "B":
            counts = f"{amount(self.done, 'B')}/{amount(self.total, 'B')}"
        else:
            counts = f"{self.done:,}/{self.total:,} {self.unit}".rstrip()
        if not self.total:
            counts = amount(self.done, self.unit)
        tail = counts
        if rate > 0:
            tail += f"  {amount(rate, self.unit)}/s"
            if self.total and self.done < self.total:
                tail += f"  ETA {duration((self.total - self.done) / rate)}"
        if not self.total:
            return f"{self.label} {tail}"
        fraction = self.done / self.total
        columns = shutil.get_terminal_size((100, 20)).columns - 1
        width = min(24, columns - len(self.label) - len(tail) - 10)
        filled = int(width * fraction)
        bar = f"|{'#' * filled}{'.' * (width - filled)}| " if width >= 5 else ""
        return f"{self.label} {100 * fraction:3.0f}% {bar}{tail}"

    def _draw(self, text: str) -> None:
        with self._lock:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\033[K" + text[:width])
            self.stream.flush()
            self.drawn = True

    def _line(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.printed = True

    def _announce_then(self) -> None:
        took = duration(self.clock() - self.start)
        read = f"{self.label}: {amount(self.done, self.unit)} in {took}"
        if self.tty:
            self._draw(f"{read}; {self.then}")
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        elif self.clock() - self.start >= QUIET_S or self.printed:
            self._line(f"{read}; {self.then} ...")

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._draw(f"{self.then} ({duration(self.clock() - self.then_start)} elapsed)")

    def close(self) -> None:
        """Leave one line saying what was done, unless it took under a second."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        now = self.clock()
        took = now - self.start
        if self.then_start is not None:
            summary = (
                f"{self.label}: {amount(self.done, self.unit)} read, then {self.then} in "
                f"{duration(now - self.then_start)} ({duration(took)} in all)"
            )
        elif self.done:
            rate = f", {amount(self._rate(now), self.unit)}/s" if took > 0 else ""
            summary = f"{self.label}: {amount(self.done, self.unit)} in {duration(took)}{rate}"
        else:
            summary = None
        if summary is None or took < QUIET_S and not self.printed:
            summary = None  # quick work leaves no line behind
        if self.tty:
            if self.drawn:
                with self._lock:
                    self.stream.write("\r\033[K" + (summary + "\n" if summary else ""))
                    self.stream.flush()
        elif summary is not None:
            self._line(summary)


class StatusLine:
    """The training log: permanent lines, and on a terminal one live line kept below them.

    In a pipe the live line is not shown (each rewrite would become a line); callers print what
    should stay with line().
    """

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream, self.tty = stream, tty
        self.current = ""

    def live(self, text: str) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size((120, 20)).columns - 1
        self.current = text[:width]
        self.stream.write("\r\033[K" + self.current)
        self.stream.flush()

    def line(self, text: str) -> None:
        """A line that stays: on a terminal it goes above the live line, which is drawn again."""
        if self.tty and self.current:
            self.stream.write("\r\033[K" + text + "\n" + self.current)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the live line, so what follows starts on a line of its own."""
        if self.tty and self.current:
            self.stream.write("\n")
            self.stream.flush()
        self.current = ""


def stderr_progress(label: str, unit: str = "", then: str | None = None) -> Progress:
    """Progress on stderr: a bar on a terminal, a plain line every few seconds in a log or a pipe
    (and nothing at all for work that took under a second there)."""
    return Progress(label, sys.stderr, sys.stderr.isatty(), unit, then)


def encoding_progress(what: str) -> Progress:
    """Encoding a corpus into the token cache (a cache hit reports nothing)."""
    return stderr_progress(f"encoding {what}", "B")
