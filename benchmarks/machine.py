"""The machine a run measured: CPU, bf16 support, library versions, what the worker resolved."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import psutil

from activities.precision import cpu_has_native_bf16, cpu_info


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def steal_share(since: Any) -> float | None:
    """The share of CPU time the hypervisor gave to other guests since `since` (a
    psutil.cpu_times()): on a shared VM the figures move with it (17 % seen here on a busy
    day, against ~0 on a quiet one)."""
    now = psutil.cpu_times()
    if not hasattr(now, "steal"):
        return None
    total = sum(now) - sum(since)
    return round((now.steal - since.steal) / total, 3) if total > 0 else None


def describe_machine(
    device: str,
    precision: str,
    source: str,
    load_at_start: tuple[float, ...],
    cpu_at_start: Any,
) -> dict[str, Any]:
    """Everything results.json records about where and with what the figures were measured."""
    import torch

    model, flags = cpu_info()
    model = model or platform.processor() or "unknown"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": bool({"amx_bf16", "amx_tile"} & flags),
        "native_bf16": cpu_has_native_bf16(),
        "gpu": gpu_name(),
        "load_average_at_start": [round(load, 2) for load in load_at_start],
        "load_average_at_end": [round(load, 2) for load in os.getloadavg()],
        "cpu_steal_share": steal_share(cpu_at_start),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sentence_transformers": version("sentence-transformers"),
        "embedding_device": device,
        "embedding_precision": precision,
        "embedding_precision_source": source,
    }
