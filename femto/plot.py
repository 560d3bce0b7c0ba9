"""Charts of runs' metrics: as text for a terminal (plotext) or as a PNG/SVG/PDF file (matplotlib).

Each group of quantities with one unit (losses, learning rate, tokens/s, gradient norm) gets a
panel; several runs share every panel, one colour per run. Returns text or writes a file; never
prints.
matplotlib is an optional extra, imported only when a file is asked for.
"""

from __future__ import annotations

import pathlib
import re

from femto.errors import ConfigError
from femto.runlog import FIELDS, RunLog

LABELS = {
    "loss": "train loss (step)",
    "train": "train loss (eval)",
    "val": "val loss",
    "lr": "learning rate",
    "tokens_per_s": "tokens/s",
    "grad_norm": "grad norm",
}
# quantities drawn in one panel share a unit
PANELS = {
    "loss": "loss (nats/token)",
    "train": "loss (nats/token)",
    "val": "loss (nats/token)",
    "lr": "learning rate",
    "tokens_per_s": "tokens/s",
    "grad_norm": "gradient norm",
}
SAVE_FORMATS = (".png", ".svg", ".pdf")
X_LABELS = {"step": "step", "tokens": "tokens"}
MARKERS = ("braille", "x", "+", "o", "*", "#")  # plotext markers when there is no colour
SYMBOLS = ("braille", "•", "+")  # with colour: one per quantity in a panel (three at most)
PALETTE = (12, 9, 10, 13, 11, 14, 208, 7)  # 256-colour codes: blue, red, green, magenta, ...
SAMPLES = {"braille": "⠒⠒", "•": "•─•"}


def panels(metrics: list[str]) -> list[tuple[str, list[str]]]:
    """(panel title, its metrics) in the order the metrics were asked for."""
    grouped: dict[str, list[str]] = {}
    for metric in metrics:
        if metric not in FIELDS:
            raise ConfigError(f"cannot plot {metric!r}: choose from {', '.join(FIELDS)}")
        grouped.setdefault(PANELS[metric], []).append(metric)
    return list(grouped.items())


def _check(runs: list[RunLog], metrics: list[str], x: str) -> None:
    if x not in X_LABELS:
        raise ConfigError(f"--x must be step or tokens, got {x!r}")
    if not any(run.series(FIELDS[m], x)[0] for run in runs for m in metrics):
        raise ConfigError(
            f"nothing to plot: no run has {', '.join(metrics)} against {x} "
            f"({', '.join(run.name for run in runs)})"
        )


def _name(run: RunLog, runs: list[RunLog], metric: str, panel_metrics: list[str]) -> str:
    parts = [run.name] if len(runs) > 1 else []
    if len(panel_metrics) > 1 or not parts:
        parts.append(LABELS[metric])
    return " ".join(parts)


def terminal_chart(
    runs: list[RunLog],
    metrics: list[str],
    x: str = "step",
    width: int = 100,
    height: int = 30,
    color: bool = True,
) -> str:
    """The chart as text (with ANSI colours when `color`), width x height characters in all, with a
    legend under each panel (inside, it would hide the lines it names)."""
    import plotext

    _check(runs, metrics, x)
    groups = panels(metrics)
    figure = plotext.figure
    figure.clear()
    legend_rows = 1 + len(runs) * max(len(g) for _, g in groups) // 3
    figure.plot_size(width, max(height - legend_rows * len(groups), 8 * len(groups)))
    if len(groups) > 1:
        figure.subplots(len(groups), 1)
    legends = []
    for row, (title, group) in enumerate(groups, 1):
        panel = figure.subplot(row, 1) if len(groups) > 1 else figure
        panel.theme("simple")  # the terminal's own background
        entries = []
        for index, run in enumerate(runs):
            for metric in group:
                xs, ys = run.series(FIELDS[metric], x)
                if not xs:
                    continue
                if color:  # a colour per run, a symbol per quantity
                    hue, symbol = PALETTE[index % len(PALETTE)], SYMBOLS[group.index(metric)]
                    marker = plotext.marker(symbol, pixel=hue)
                else:  # a symbol per line
                    hue, symbol = None, MARKERS[len(entries) % len(MARKERS)]
                    marker = symbol
                signal = panel.signal(xs, ys, marker=marker)
                signal.lines()
                panel.draw(signal)
                sample = SAMPLES.get(symbol, symbol * 2)
                if hue is not None:
                    sample = f"\033[38;5;{hue}m{sample}\033[0m"
                entries.append(f"{sample} {_name(run, runs, metric, group)}")
        panel.title(title)
        panel.label(X_LABELS[x])
        legends.append("   ".join(entries))
    chart = figure.build().string(colorless=not color)
    figure.clear()
    # the panels are stacked in one block of rows: split it at each panel's title row to interleave
    # the legends (each panel's block starts with its centred title)
    lines = chart.splitlines()
    starts = [i for i, line in enumerate(lines) if _plain(line).strip() in {t for t, _ in groups}]
    if len(starts) != len(groups):
        return chart + "\n" + "\n".join(legends)
    out = []
    for number, start in enumerate(starts):
        stop = starts[number + 1] if number + 1 < len(starts) else len(lines)
        out.extend(lines[start:stop])
        out.append("  " + legends[number])
    return "\n".join(out)


def _plain(line: str) -> str:
    return re.sub(r"\033\[[0-9;]*m", "", line)


def save_chart(runs: list[RunLog], metrics: list[str], path: pathlib.Path, x: str = "step") -> None:
    """Write the chart to `path`; its suffix picks the format (.png, .svg or .pdf)."""
    path = pathlib.Path(path)
    if path.suffix.lower() not in SAVE_FORMATS:
        raise ConfigError(
            f"--save {path}: the file name must end in {', '.join(SAVE_FORMATS)} (the format)"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"--save {path}: folder {path.parent} does not exist")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            "--save needs matplotlib, which is not installed: pip install 'femto[plot]' "
            "(or drop --save to draw in the terminal)"
        ) from None
    _check(runs, metrics, x)
    groups = panels(metrics)
    fig = Figure(figsize=(9, 3.2 * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    styles = {
        "loss": {"linewidth": 1.0, "alpha": 0.55},
        "train": {"linestyle": ":", "marker": ".", "linewidth": 1.5},
        "val": {"linestyle": "-", "marker": "o", "markersize": 3.5, "linewidth": 2.0},
    }
    for ax, (title, group) in zip(axes, groups):
        for index, run in enumerate(runs):
            for metric in group:
                xs, ys = run.series(FIELDS[metric], x)
                if xs:
                    ax.plot(
                        xs, ys, color=f"C{index % 10}", label=_name(run, runs, metric, group),
                        **styles.get(metric, {"linewidth": 1.2}),
                    )  # fmt: skip
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    axes[-1].set_xlabel(X_LABELS[x])
    fig.suptitle(", ".join(run.name for run in runs))
    fig.savefig(path)
