"""The staging store on a local folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigurationError
from core.staging import StagingStore


def test_a_folder_that_cannot_be_made_is_named_in_one_line(tmp_path: Path) -> None:
    """The API and the worker said it as an OSError traceback."""
    (tmp_path / "file").write_text("not a folder")
    staging = tmp_path / "file" / "staging"
    with pytest.raises(ConfigurationError) as refused:
        StagingStore(f"file://{staging}")
    assert str(refused.value) == (
        f"DOCINGEST_STAGING_URL: cannot make the folder {staging}: Not a directory"
    )


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


@pytest.mark.parametrize("task_id", ["", ".", "..", "a/b", "../x", "a\\b"])
def test_a_task_id_that_names_another_folder_is_refused(tmp_path: Path, task_id: str) -> None:
    # remove_task("") removed the whole store: every upload's original (a workflow started by
    # hand with an empty task id reached it through its record's cleanup).
    staging = StagingStore(str(tmp_path / "staging"))
    staging.write_bytes("kept", "original", b"an upload")
    with pytest.raises(ValueError, match="is not a task id"):
        staging.remove_task(task_id)
    with pytest.raises(ValueError, match="is not a task id"):
        staging.remove(task_id, "original")
    with pytest.raises(ValueError, match="is not a task id"):
        staging.write_bytes(task_id, "original", b"x")
    assert staging.read_bytes("kept", "original") == b"an upload"


def test_make_durable_syncs_a_staged_file_and_its_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload is on the disk before its 202: the file, its task's folder and the store's
    folder (which holds the task folder's entry) are each synced; one discarded meanwhile is
    no error, and an object store (no local files) has nothing to sync."""
    staging = StagingStore(str(tmp_path))
    staging.write_bytes("task", "original", b"received bytes")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    staging.make_durable("task", "original")
    assert synced == [str(tmp_path / "task" / "original"), str(tmp_path / "task"), str(tmp_path)]
    staging.remove_task("task")
    staging.make_durable("task", "original")  # discarded: nothing to sync, no error
    StagingStore("memory://staging").make_durable("task", "original")
    assert len(synced) == 3
