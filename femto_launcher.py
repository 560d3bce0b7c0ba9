"""The `femto` command's entry point. It lives outside the femto package so that it already runs
before femto (numpy, the C extension) is imported: a Ctrl-C or SIGTERM in that first fraction of a
second ends in one line, as one at any later point of start-up does, instead of an import traceback."""

from __future__ import annotations

import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        from femto.cli import main as femto_main
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted during start-up: nothing done\n")
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    femto_main()


if __name__ == "__main__":
    main()
