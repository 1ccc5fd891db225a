"""What `DOCINGEST_EMBEDDING_PRECISION=auto` resolves to on this machine.

- On a GPU: bfloat16.
- On a CPU without native bf16 (neither AVX512_BF16 nor AMX): float32. bf16 is emulated there;
  it embedded at a third of float32's rate on the development machine of 2026-11-28.
- On a CPU with native bf16 it depends on the chip, so `auto` measures. On the development
  machine of 2026-11-29 (AVX512_BF16, no AMX) bfloat16 embedded at ~0.73x float32 in the
  embedding lanes: oneDNN's bf16 matrix product ran at ~75 GFLOPS on one core against MKL's
  ~130 for float32. Where bf16 pays, it pays well: the issue that asked for it measured 1.9x,
  and on the AMD EPYC (Zen 4, AVX512_BF16) of 2026-11-30 night `auto` measured 1.76x and chose
  it (oneDNN's bf16 product ~213 GFLOPS on one core against MKL's ~97 for float32).

The measurement (activities/embed.py) runs the same micro-batches of chunk-sized texts in both
precisions, alternately, after a warm-up; bfloat16 is taken only when it is at least
`BF16_MIN_SPEEDUP` times as fast, since it moves vectors slightly (cosine to float32 >= 0.998).
The verdict is saved per CPU, core count, torch version and model in
`DOCINGEST_HOME/models/auto-precision.json`, so a machine decides once (a few seconds at the
first start): a worker and an API sharing that folder agree, and restarting on the same
machine and installation keeps the precision of new vectors (another CPU, core count, torch or
model is measured anew). Delete the file to measure again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from core.filelock import exclusive

PRECISIONS = ("auto", "float32", "bfloat16", "int8")
BF16_MIN_SPEEDUP = 1.2
# Timed encodes of the sample per precision, alternating, after one warm-up each: a single pair
# once came out 1.17x for bfloat16 where five medians give 0.76-0.84x (other guests of the VM).
TIMED_ROUNDS = 5
VERDICTS_FILE = "auto-precision.json"
M = TypeVar("M")

log = logging.getLogger(__name__)

# Chunk-sized prose (~1,000 characters, ~200 tokens, like a default chunk) to time.
_SAMPLE = (
    "Durable ingestion means that an upload, once acknowledged, is extracted, chunked, embedded "
    "and stored even when a worker dies halfway: the workflow records each finished step, and "
    "a retried step finds what the first attempt left. The agent then searches the chunks by "
    "the cosine distance of their vectors to the question's vector, so the vectors of one "
    "corpus must come from one model in one precision. Reduced precision halves the bytes each "
    "matrix product reads and, on a processor with native support, doubles the products per "
    "cycle; emulated, it is slower than single precision. Whether native support pays also "
    "depends on the library's kernels, the cache sizes and the memory bandwidth of the machine, "
    "which is why the service measures instead of guessing from the processor's feature flags. "
    "A chunk of about a thousand characters, like this sample, is what the embedding model reads "
    "most often, so the sample is timed in the lanes and micro-batches that embed real chunks. "
)


def cpu_info() -> tuple[str, set[str]]:
    """The CPU model name ("" when there is none) and the flags of the first processor in
    /proc/cpuinfo."""
    model, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            lines = cpuinfo.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def cpu_has_native_bf16() -> bool:
    """AVX512_BF16 or AMX: bfloat16 matrix math in hardware (else it is emulated, and slow)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_info()[1])


def sample_texts(count: int) -> list[str]:
    """`count` chunk-sized texts, each a little different (no two tokenize alike)."""
    return [f"Sample {number}. {_SAMPLE[number:]}{_SAMPLE[:number]}" for number in range(count)]


@dataclass(frozen=True)
class Verdict:
    """What `auto` chose on a CPU with native bf16, and the timings it chose from."""

    precision: str
    float32_s: float  # the sample's median time in each precision
    bfloat16_s: float
    measured_at: str

    @property
    def speedup(self) -> float:
        """bfloat16's rate over float32's."""
        return self.float32_s / self.bfloat16_s


def median_seconds(
    float32_model: M, bfloat16_model: M, texts: list[str], encode: Callable[[M, list[str]], object]
) -> tuple[float, float]:
    """The median seconds of `encode(model, texts)` for each model, timed alternately."""
    timings: dict[int, list[float]] = {0: [], 1: []}
    for attempt in range(1 + TIMED_ROUNDS):
        for index, model in enumerate((float32_model, bfloat16_model)):
            started = time.perf_counter()
            encode(model, texts)
            if attempt:
                timings[index].append(time.perf_counter() - started)
    return statistics.median(timings[0]), statistics.median(timings[1])


def choose(float32_s: float, bfloat16_s: float) -> str:
    return "bfloat16" if float32_s >= BF16_MIN_SPEEDUP * bfloat16_s else "float32"


def machine_key(model_key: str, cores: int) -> str:
    """What the verdict holds for: this CPU, its usable cores, this torch, this model."""
    import torch

    model_name, flags = cpu_info()
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:8]
    name = model_name or platform.machine()
    return f"{name} flags:{digest} cores:{cores} torch:{torch.__version__} {model_key}"


def saved_verdict(cache_dir: Path | None, key: str) -> Verdict | None:
    """The verdict saved for `key`, or None. Read without the lock: the file is only ever
    replaced whole."""
    if cache_dir is None:
        return None
    return _verdict(_read(cache_dir / VERDICTS_FILE).get(key))


def auto_cpu_precision(
    cache_dir: Path | None, key: str, measure: Callable[[], tuple[float, float]]
) -> tuple[Verdict, bool]:
    """The verdict for `key` and whether it was measured now (else it was saved earlier).
    `measure` returns the sample's seconds in float32 and in bfloat16. Several processes may
    ask at once: one measures under a file lock, the others then read its verdict. A folder
    that cannot be locked or written (a read-only DOCINGEST_HOME) still gives the saved
    verdict if there is one, else a measurement at every start: never a failed start."""
    if cache_dir is None:
        return _measured(measure), True
    path = cache_dir / VERDICTS_FILE
    with contextlib.ExitStack() as held:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive(cache_dir / f".{VERDICTS_FILE}.lock"))
        except OSError as exc:
            log.warning("cannot lock the auto precision verdicts in %s (%s)", cache_dir, exc)
        saved = saved_verdict(cache_dir, key)
        if saved is not None:
            return saved, False
        verdict = _measured(measure)
        try:
            _write(path, {**_read(path), key: asdict(verdict)})
        except OSError as exc:
            log.warning("cannot keep the auto precision verdict in %s (%s)", path, exc)
    return verdict, True


def _measured(measure: Callable[[], tuple[float, float]]) -> Verdict:
    float32_s, bfloat16_s = measure()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return Verdict(choose(float32_s, bfloat16_s), float32_s, bfloat16_s, now)


def _read(path: Path) -> dict[str, object]:
    """The saved verdicts; none when the file is missing or unreadable (measured again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _verdict(saved: object) -> Verdict | None:
    """A saved verdict, or None when it is missing or malformed (then measured again)."""
    if not isinstance(saved, dict):
        return None
    try:
        verdict = Verdict(
            str(saved["precision"]),
            float(saved["float32_s"]),
            float(saved["bfloat16_s"]),
            str(saved["measured_at"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    timings = (verdict.float32_s, verdict.bfloat16_s)
    if verdict.precision not in ("float32", "bfloat16") or not all(
        math.isfinite(seconds) and seconds > 0 for seconds in timings
    ):
        return None
    return verdict


def _write(path: Path, verdicts: dict[str, object]) -> None:
    """Replace the file whole (readers never see half of it); no temporary file left behind."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
        try:
            # Readable by every user sharing the folder: a temporary file is private (0600),
            # and an API running as another user than the worker could not read the verdict
            # (it then measured for itself, and its queries could come out in the other
            # precision than the worker's chunks).
            os.fchmod(out.fileno(), 0o644)
            json.dump(verdicts, out, indent=2, sort_keys=True)
            out.close()
            os.replace(out.name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(out.name)
            raise
