"""Why a model folder does not load, in one line: a folder copied without its weights, or a
model repository cloned without Git LFS (pointer files where its weights go), was a traceback
from the worker's start, or the int8 build's advice to make its cache folder writable."""

from __future__ import annotations

from pathlib import Path
from pickle import UnpicklingError

from safetensors import SafetensorError

from core.errors import ConfigurationError

# What loading a model folder raises for files missing or not what their names say: no weights
# (OSError), a config that names no model (ValueError), a weights file that is not one.
LOAD_ERRORS = (OSError, ValueError, SafetensorError, UnpicklingError)
# How a Git LFS pointer file begins: what a clone without Git LFS holds in place of a file.
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_LFS_POINTER_MAX_BYTES = 1024


def unloadable(model_path: str, exc: Exception) -> ConfigurationError:
    """The error of the model in `model_path`, which raised `exc` (one of LOAD_ERRORS)."""
    return ConfigurationError(
        f"DOCINGEST_EMBEDDING_MODEL: the model in {model_path} cannot be loaded: "
        f"{_reason(Path(model_path), exc)}"
    )


def _reason(folder: Path, exc: Exception) -> str:
    """Weights left as Git LFS pointers read as "header too large" (safetensors) or as
    torch's advice to load them with `weights_only=False`, which would not help."""
    pointers = [
        file.name
        for file in sorted(folder.glob("*"))
        if file.is_file()
        and file.stat().st_size <= _LFS_POINTER_MAX_BYTES
        and file.read_bytes().startswith(_LFS_POINTER)
    ]
    if pointers:
        return (
            f"{', '.join(pointers)} holds a Git LFS pointer, not the file: run `git lfs pull` "
            "in that folder (the clone was made without Git LFS)"
        )
    reason = str(exc).strip()
    return reason.splitlines()[0] if reason else type(exc).__name__
