"""The staging store on a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.staging import StagingStore


def test_a_write_survives_the_task_folder_removed_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeated Idempotency-Key reuses a task id: the first task's cleanup can remove the
    folder between the upload's `makedirs` and its `open` (an API 500 seen under load)."""
    staging = StagingStore(str(tmp_path))
    staging.write_bytes("task", "first", b"1")
    opened = staging.fs.open

    def open_after_cleanup(path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "w" in mode and not getattr(open_after_cleanup, "done", False):
            open_after_cleanup.done = True  # type: ignore[attr-defined]
            staging.remove_task("task")  # the cleanup, at the worst moment
        return opened(path, mode, **kwargs)

    monkeypatch.setattr(staging.fs, "open", open_after_cleanup)
    with staging.open_write("task", "original") as out:
        out.write(b"2")
    assert staging.read_bytes("task", "original") == b"2"
