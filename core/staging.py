"""The staging store: uploaded originals and intermediate artefacts, addressed by task id.

Backed by fsspec so a local folder (the default) and object stores (`s3://...`, when the API
and the workers run on different machines) are used the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from core.errors import ConfigurationError, StagingUnwritable

ORIGINAL = "original"
TEXT = "text.json"
CHUNKS = "chunks.json"


class StagingStore:
    """Keys are `<task_id>/<name>`; every write replaces the whole object (retry-safe)."""

    def __init__(self, url: str) -> None:
        fs, root = url_to_fs(url)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = cast(str, root).rstrip("/")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError as exc:  # a file in its path, a folder the user may not write
            # Named by its path, never the URL, which may hold a key. It was a traceback from
            # the API's start-up and from the worker's, once its model had loaded.
            raise ConfigurationError(
                f"DOCINGEST_STAGING_URL: cannot make the folder {exc.filename or self.root}: "
                f"{exc.strerror or exc}"
            ) from exc

    def path(self, task_id: str, name: str) -> str:
        return f"{self.folder(task_id)}/{name}"

    def folder(self, task_id: str) -> str:
        """The task's folder; ValueError for a task id that would name another folder (empty,
        `.`, `..`, or with a separator): removing its "folder" removed the whole store."""
        if task_id in ("", ".", "..") or "/" in task_id or "\\" in task_id:
            raise ValueError(f"{task_id!r} is not a task id")
        return f"{self.root}/{task_id}"

    def open_write(self, task_id: str, name: str) -> BinaryIO:
        path = self.path(task_id, name)
        folder = path.rsplit("/", 1)[0]
        try:
            self.fs.makedirs(folder, exist_ok=True)
        except FileExistsError:
            # The same race as below, earlier: os.makedirs saw the folder, then the cleanup
            # removed it before its own check that it is a folder. Make it again, once.
            self.fs.makedirs(folder, exist_ok=True)
        try:
            return cast(BinaryIO, self.fs.open(path, "wb"))
        except FileNotFoundError:
            # The task's folder was removed between the two calls: the cleanup of a finished
            # task whose id an upload reuses (a repeated Idempotency-Key). Make it again, once.
            self.fs.makedirs(folder, exist_ok=True)
            return cast(BinaryIO, self.fs.open(path, "wb"))

    def make_durable(self, task_id: str, name: str) -> None:
        """On a local disk, put the staged object, its task's folder and the folder's entry in
        the store on the disk (fsync), so that they survive a crash of the host: the API
        answered 202 with an upload still in the page cache, which a crash then lost or kept
        cut short. An object store (S3) keeps an object once written: nothing to do there.
        An object removed meanwhile (its upload discarded) is no error."""
        if not isinstance(self.fs, LocalFileSystem):
            return
        with contextlib.suppress(FileNotFoundError):
            for path, flags in (
                (self.path(task_id, name), os.O_RDONLY),
                (self.folder(task_id), os.O_RDONLY | os.O_DIRECTORY),
                (self.root, os.O_RDONLY | os.O_DIRECTORY),
            ):
                descriptor = os.open(path, flags)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)

    def open_read(self, task_id: str, name: str) -> BinaryIO:
        return cast(BinaryIO, self.fs.open(self.path(task_id, name), "rb"))

    def exists(self, task_id: str, name: str) -> bool:
        return bool(self.fs.exists(self.path(task_id, name)))

    def size(self, task_id: str, name: str) -> int:
        return int(self.fs.size(self.path(task_id, name)))

    def write_bytes(self, task_id: str, name: str, data: bytes) -> None:
        """Write atomically where the backend allows it: a reader never sees half a file.
        StagingUnwritable when the store refuses it (full, read-only), with nothing of it left
        behind: each failed try of a step left its part, filling a full store further."""
        final = self.path(task_id, name)
        partial = f"{final}.partial"
        try:
            with refused_writes():
                with self.open_write(task_id, f"{name}.partial") as out:
                    out.write(data)
                self.fs.mv(partial, final)
        except StagingUnwritable:
            with contextlib.suppress(OSError):
                self.fs.rm(partial)
            raise

    def read_bytes(self, task_id: str, name: str) -> bytes:
        with self.open_read(task_id, name) as src:
            return src.read()

    def write_json(self, task_id: str, name: str, value: Any) -> None:
        self.write_bytes(task_id, name, json.dumps(value, ensure_ascii=False).encode())

    def read_json(self, task_id: str, name: str) -> Any:
        return json.loads(self.read_bytes(task_id, name))

    def remove(self, task_id: str, name: str) -> None:
        """Remove one staged object, and the task folder once empty; missing is not an error."""
        path = self.path(task_id, name)
        # Not "exists, then rm": the task's cleanup may remove it in between (an upload of the
        # same Idempotency-Key answered as a replay while the key's task ended), and that
        # upload was answered 500.
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)
        folder = self.folder(task_id)
        try:
            if self.fs.exists(folder) and not self.fs.ls(folder):
                self.fs.rmdir(folder)
        except OSError:
            pass  # another upload of the same task id wrote into it meanwhile: keep it

    def remove_task(self, task_id: str) -> None:
        """Remove everything staged for a task; removing twice is not an error."""
        folder = self.folder(task_id)
        with contextlib.suppress(FileNotFoundError):  # another remover may be halfway through
            self.fs.rm(folder, recursive=True)


@contextlib.contextmanager
def refused_writes() -> Iterator[None]:
    """A write's OSError as StagingUnwritable, saying why in the system's words ("No space
    left on device"), never the path, which names the server's files. A full store was a
    500 "Internal error" for an upload, and a task's step failed as "reading the file failed
    with an internal error" or "the embedding model failed". FileNotFoundError stays itself:
    a task folder removed meanwhile, which the steps report as their input gone."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        reason = f" ({exc.strerror})" if exc.strerror else ""
        raise StagingUnwritable(f"the staging store could not be written{reason}") from exc
