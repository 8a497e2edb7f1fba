"""How every table and plot disc-ray writes is formatted: one number formatter, one interval formatter, one
Markdown / CSV table writer and one figure helper (matplotlib, Agg backend, no display needed).

Used by ``eval.md`` (:mod:`disc_ray.evaluation.runner`), ``disc-ray report`` (:mod:`disc_ray.evaluation.report`),
the sweep's ``trials.md`` / ``trials.csv`` / ``pareto.png`` (:mod:`disc_ray.tuning.outputs`), the reproduction's
``results.md`` / ``results.csv`` / plots (:mod:`disc_ray.reproduce`) and the frontier plot
(:mod:`disc_ray.evaluation.frontier`). What each table holds stays with its caller; how it is written is here.

    from disc_ray.reporting import format_ci, format_number, markdown_table, new_figure, save_figure
    text = markdown_table(["run", "score"], [["a", format_ci(41.2, (36.1, 46.3))], ["b", format_number(None)]])
    fig, ax = new_figure()
    ax.plot([0, 1], [2, 3], label="run")
    save_figure(fig, ax, "out/plot.png", "A title")
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping, Sequence

MISSING = "-"
"""What a cell shows for a value that was not measured (None)."""


def format_number(value, digits: int = 2, *, small: str | None = None) -> str:
    """One table cell: ``None`` -> ``"-"``; a bool -> ``"yes"`` / ``"no"``; a float -> ``digits`` decimals
    (``41.20``), except a float with ``0 < |value| < 0.01`` when ``small`` says otherwise: ``"significant"`` ->
    ``digits`` significant digits (``0.00034``), ``"exponent"`` -> one digit and an exponent (``3e-04``, how
    learning rates read); anything else (ints, strings) -> ``str(value)``. Raises ValueError for another ``small``."""
    if small not in (None, "significant", "exponent"):
        raise ValueError(f"small must be None, 'significant' or 'exponent', got {small!r}")
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if small is not None and 0 < abs(value) < 1e-2:
            return f"{value:.{digits}g}" if small == "significant" else f"{value:.0e}"
        return f"{value:.{digits}f}"
    return str(value)


def format_ci(value: float | None, ci: Sequence[float] | None, digits: int = 2, signed: bool = False) -> str:
    """A value and its interval: ``"41.20 [36.10, 46.30]"`` (``"+2.10 [-0.50, +4.60]"`` when ``signed``);
    ``"-"`` for no value; the value alone when ``ci`` is None or its low end is None."""
    if value is None:
        return MISSING
    spec = f"{'+' if signed else ''}.{digits}f"
    text = format(value, spec)
    if ci is not None and len(ci) == 2 and ci[0] is not None:
        text += f" [{format(ci[0], spec)}, {format(ci[1], spec)}]"
    return text


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table (no trailing newline) of already formatted cells. Raises ValueError when a row
    has not as many cells as the header (the table would render shifted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells for {len(header)} columns: {list(row)[:3]}...")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain-text table for the console (columns left-aligned, two spaces apart, no trailing newline) of already
    formatted cells. Raises ValueError as :func:`markdown_table` does."""
    rows = [list(row) for row in rows]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells for {len(header)} columns: {row[:3]}...")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows))


def write_csv(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """``rows`` as CSV with a header line: the ``columns`` (default: the first row's keys) in that order, keys
    outside them left out, ``None`` written as an empty cell, floats at full precision."""
    path = Path(path)
    columns = list(columns if columns is not None else (rows[0] if rows else []))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: row.get(key) for key in columns} for row in rows)
    return path


def new_figure(figsize: tuple[float, float] = (6.4, 4.8)):
    """A ``(figure, axes)`` pair on matplotlib's Agg backend (files only, no display), 120 dpi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=120)


def save_figure(fig, ax, path: str | Path, title: str, *, legend: bool = True) -> Path:
    """Title (10 pt), light grid, legend (8 pt) when ``legend``; write ``path`` (PNG by its suffix; parent folders
    made) and close the figure."""
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_error_bars(ax, x: float, y: float, x_ci, y_ci, *, colour: str) -> None:
    """95% intervals as error bars around ``(x, y)``; ``x_ci`` / ``y_ci`` are ``(low, high)`` or None (no bar)."""
    def err(centre, ci):
        return None if ci is None else [[max(centre - ci[0], 0.0)], [max(ci[1] - centre, 0.0)]]

    if x_ci is None and y_ci is None:
        return
    ax.errorbar([x], [y], xerr=err(x, x_ci), yerr=err(y, y_ci), fmt="none", ecolor=colour, elinewidth=1, capsize=3,
                alpha=0.6, zorder=2)
