"""The one formatter / table writer / figure helper every table and plot goes through (disc_ray.reporting)."""

from __future__ import annotations

import csv

import pytest

from disc_ray.reporting import draw_error_bars, format_ci, format_number, markdown_table, new_figure, save_figure, write_csv


def test_format_number_writes_each_kind_of_cell():
    assert format_number(None) == "-" and format_number(True) == "yes" and format_number(False) == "no"
    assert format_number(41.204) == "41.20" and format_number(0.12345, 4) == "0.1235" and format_number(12) == "12"
    assert format_number(0.00034) == "0.00"  # fixed decimals unless asked otherwise
    assert format_number(0.00034, small="significant") == "0.00034" and format_number(-0.0012, 3, small="significant") == "-0.0012"
    assert format_number(3e-4, small="exponent") == "3e-04" and format_number(0.0, small="exponent") == "0.00"
    assert format_number("completed") == "completed"
    with pytest.raises(ValueError, match="small must be"):
        format_number(1.0, small="sci")


def test_format_ci_signs_and_missing_values():
    assert format_ci(41.2, (36.1, 46.3)) == "41.20 [36.10, 46.30]"
    assert format_ci(2.1, [-0.5, 4.6], signed=True) == "+2.10 [-0.50, +4.60]"
    assert format_ci(None, (1.0, 2.0)) == "-" and format_ci(1.0, None, digits=4) == "1.0000" and format_ci(1.0, [None, None]) == "1.00"


def test_markdown_table_and_csv(tmp_path):
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        markdown_table(["a", "b"], [["1"]])
    path = write_csv(tmp_path / "t.csv", [{"a": 1.5, "b": None, "extra": "x"}, {"a": 2}], ["b", "a"])
    assert list(csv.reader(path.open())) == [["b", "a"], ["", "1.5"], ["", "2"]]


def test_save_figure_writes_a_png(tmp_path):
    fig, ax = new_figure()
    ax.plot([0, 1], [1, 2], label="line")
    draw_error_bars(ax, 0.5, 1.5, (0.4, 0.6), None, colour="tab:blue")
    path = save_figure(fig, ax, tmp_path / "sub" / "plot.png", "title")
    assert path.read_bytes()[:4] == b"\x89PNG"
