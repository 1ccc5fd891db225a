"""`python -m benchmarks [--quick] [--only NAME[,NAME]] [--output PATH] [--strict]`

Starts a private stack, runs the figures (idle-stack figures first, saturated ones last),
prints one table and writes results.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks import (
    backends,
    large_document,
    pipeline,
    searchable,
    status,
    store,
    upload_ack,
)
from benchmarks.context import FULL, QUICK, Context
from benchmarks.machine import describe_machine
from benchmarks.measure import FigureResult
from benchmarks.report import render_table, write_results
from benchmarks.stack import BENCH_ENV, Stack, running_stack

DEFAULT_OUTPUT = Path(__file__).parent / "results.json"


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    run: Callable[[Context], Awaitable[FigureResult]]


# The order they run in: those that need an idle stack first, those that saturate it last.
FIGURES = [
    Figure(module.KEY, module.TITLE, module.run)
    for module in (pipeline, backends, searchable, store, large_document, status, upload_ack)
]


def log(message: str) -> None:
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run docingest's figures on a private stack (see benchmarks/README.md).",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help="only these figures: " + ", ".join(figure.key for figure in FIGURES),
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results.json path")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed or a figure fails"
    )
    args = parser.parse_args(argv)
    known = [figure.key for figure in FIGURES]
    wanted = [name.strip() for name in (args.only or "").split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    args.figures = [figure for figure in FIGURES if not wanted or figure.key in wanted]
    return args


async def run_one(ctx: Context, figure: Figure) -> FigureResult:
    """Run one figure; a failure becomes an `unavailable` entry and the stack is drained."""
    log(f"{figure.title} …")
    started = time.monotonic()
    try:
        result = await figure.run(ctx)
    except Exception as exc:
        traceback.print_exc()
        result = FigureResult(figure.key, figure.title, unavailable=f"error: {exc}")
        await ctx.stack.terminate_all()
        await ctx.stack.wait_idle()
    result.seconds = time.monotonic() - started
    log(f"{figure.title} done in {result.seconds:.0f} s")
    return result


def run_header(
    stack: Stack, quick: bool, load: tuple[float, ...], cpu_at_start: Any
) -> dict[str, Any]:
    device, precision, source = stack.resolved_embedding()
    settings = stack.settings
    return {
        "mode": "quick" if quick else "full",
        "machine": describe_machine(device, precision, source, load, cpu_at_start),
        "settings": {
            name: getattr(settings, name)
            for name in (
                "chunk_size",
                "chunk_overlap",
                "embedding_device",
                "embedding_precision",
                "embedding_batch_size",
                "embed_activity_chunks",
                "embed_window",
            )
        },
    }


async def run_figures(
    figures: list[Figure], quick: bool
) -> tuple[list[FigureResult], dict[str, Any]]:
    load, cpu_at_start = os.getloadavg(), psutil.cpu_times()
    started = time.monotonic()
    log("starting PostgreSQL, Temporal, the worker and the API …")
    async with running_stack() as stack:
        log(f"stack ready in {time.monotonic() - started:.0f} s (state in {stack.home})")
        ctx = Context(stack, QUICK if quick else FULL, quick)
        results = [await run_one(ctx, figure) for figure in figures]
        header = run_header(stack, quick, load, cpu_at_start)
    header["duration_s"] = round(time.monotonic() - started, 1)
    return results, header


def main(argv: list[str] | None = None) -> int:
    for name, value in {**BENCH_ENV, "TQDM_DISABLE": "1"}.items():  # no model-loading bars
        os.environ.setdefault(name, value)
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    results, header = asyncio.run(run_figures(args.figures, args.quick))
    results.sort(key=lambda result: result.title)
    print(render_table(results))
    write_results(args.output, header, results)
    log(f"results written to {args.output} ({header['duration_s']:.0f} s in all)")
    steal = header["machine"].get("cpu_steal_share")
    if steal is not None:
        log(f"CPU time taken by other guests of this VM during the run: {steal:.1%}")
    missed = any(r.passed is False or r.unavailable is not None for r in results)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
