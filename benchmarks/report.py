"""One table on stdout and results.json on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.measure import FigureResult, Metric

HEADERS = ("figure", "metric", "value", "unit", "target", "result")


def format_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "cosine":  # differences show in the fourth decimal
        return f"{value:.5f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def verdict(metric: Metric) -> str:
    return {True: "pass", False: "FAIL", None: ""}[metric.passed]


def rows(figures: list[FigureResult]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for figure in figures:
        if figure.unavailable is not None:
            out.append((figure.title, "unavailable", "-", "", "", figure.unavailable))
            continue
        for index, metric in enumerate(figure.metrics):
            title = figure.title if index == 0 else ""
            target = str(metric.target) if metric.target else ""
            value = format_value(metric.value, metric.unit)
            out.append((title, metric.name, value, metric.unit, target, verdict(metric)))
    return out


def render_table(figures: list[FigureResult]) -> str:
    table = [HEADERS, *rows(figures)]
    widths = [max(len(row[column]) for row in table) for column in range(len(HEADERS))]
    widths[-1] = len(HEADERS[-1])  # the last column may hold a sentence: let it run on
    lines = []
    for number, row in enumerate(table):
        cells = [
            cell.rjust(width) if column == 2 and number else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_results(path: Path, header: dict[str, Any], figures: list[FigureResult]) -> None:
    document = {**header, "figures": {figure.key: figure.as_json() for figure in figures}}
    path.write_text(json.dumps(document, indent=2) + "\n")
