"""What a figure reports (metrics with units and optional targets) and the statistics used."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


class BenchmarkError(RuntimeError):
    """The stack did not behave as a figure needs (an upload refused, a task not complete)."""


@dataclass(frozen=True)
class Target:
    """A bound a metric must meet: `>= 0.9` or `<= 50`."""

    op: Literal[">=", "<="]
    bound: float

    def met(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass
class Metric:
    name: str
    value: float | None
    unit: str
    target: Target | None = None

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        return self.target.met(self.value)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": str(self.target) if self.target else None,
            "passed": self.passed,
        }


@dataclass
class FigureResult:
    """One figure: its metrics, the raw numbers behind them, or why it could not be measured."""

    key: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None
    seconds: float = 0.0

    def add(self, name: str, value: float, unit: str, target: Target | None = None) -> None:
        self.metrics.append(Metric(name, value, unit, target))

    @property
    def passed(self) -> bool | None:
        """False when a target was missed, True when every target was met, None without any."""
        verdicts = [metric.passed for metric in self.metrics if metric.passed is not None]
        return all(verdicts) if verdicts else None

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "metrics": [metric.as_json() for metric in self.metrics],
            "details": self.details,
            "unavailable": self.unavailable,
            "seconds": round(self.seconds, 1),
        }


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least `fraction` of them below or
    at it (p99 of 320 samples is the fourth largest)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency_summary(samples_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds and the sample count, for `details`."""
    return {
        "samples": len(samples_s),
        "p50_ms": round(percentile(samples_s, 0.50) * 1000, 2),
        "p90_ms": round(percentile(samples_s, 0.90) * 1000, 2),
        "p99_ms": round(percentile(samples_s, 0.99) * 1000, 2),
        "max_ms": round(max(samples_s) * 1000, 2),
    }
