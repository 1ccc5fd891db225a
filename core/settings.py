"""Process settings, read once at each process edge (api factory, worker main, CLI)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal

from fsspec.core import split_protocol
from fsspec.registry import get_filesystem_class
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

MIB = 1024 * 1024
# What torch is given as a device: `auto` is resolved at model load (activities.embed).
EMBEDDING_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$", re.ASCII)
MAX_PORT = 65535  # TCP
# A sentence-transformers model folder has one of these (a plain transformers model, config).
MODEL_FILES = ("modules.json", "config.json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# host:port, the host a name, an IPv4 address or a bracketed IPv6 one (the SDK's form).
TEMPORAL_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$", re.ASCII)
# The PostgreSQL URLs `core.db.normalize_url` makes psycopg 3 ones; another driver's
# (`postgresql+asyncpg://`) failed at the first connection on a module that is not installed.
PSYCOPG_DRIVERS = ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2")


# The settings whose default is "unset" (the embedded server, local dev, HOME/staging, the
# bundled model): an empty value is taken as unset.
UNSET_WHEN_EMPTY = ("database_url", "temporal_address", "staging_url", "embedding_model")

# Embed activities of one document at most (about six history events each: Temporal fails a
# workflow past 51,200 events).
MAX_EMBED_ACTIVITIES = 5_000


class Settings(BaseSettings):
    """Every setting of docingest; each is overridable by a `DOCINGEST_<NAME>` variable."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_", extra="ignore")

    home: Path = Field(default=Path(".docingest"), description="Embedded state folder.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means the embedded PostgreSQL."
    )
    temporal_address: str | None = Field(
        default=None, description="host:port of an existing Temporal; unset means local dev."
    )
    temporal_namespace: str = Field(default="default", min_length=1)
    temporal_port: int = Field(default=7233, ge=1, le=MAX_PORT)
    temporal_ui_port: int = Field(default=8233, ge=1, le=MAX_PORT)
    # Not empty: an empty host listened on every interface, not on the default's loopback.
    api_host: str = Field(default="127.0.0.1", min_length=1)
    api_port: int = Field(default=8000, ge=1, le=MAX_PORT)
    staging_url: str | None = Field(
        default=None, description="fsspec URL of the staging store; unset means HOME/staging."
    )
    max_upload_bytes: int = Field(default=50 * MIB, gt=0, description="Per file.")
    max_batch_files: int = Field(default=100, ge=1, le=1000)
    max_batch_bytes: int = Field(default=500 * MIB, gt=0, description="Whole batch request.")
    staging_ttl: timedelta = Field(
        default=timedelta(days=7),
        ge=timedelta(minutes=1),
        description="Staging of finished (or vanished) tasks is removed after this long.",
    )
    upload_orphan_grace: timedelta = Field(
        default=timedelta(hours=1),
        # Shorter, the sweep could take the folder of an upload still streaming in.
        ge=timedelta(minutes=1),
        description="Staging of an upload that never started its workflow goes after this.",
    )
    key_cache_ttl: timedelta = Field(
        default=timedelta(seconds=10),
        description="How long the API trusts a checked key without asking the database "
        "(a deleted key works that much longer); 0 = always ask.",
    )
    progress_max_age: timedelta = Field(
        default=timedelta(seconds=1),
        description="How old a task list `/api/progress` may answer with, refreshed in the "
        "background while clients poll (writes through the API drop it at once); 0 = always "
        "ask Temporal.",
    )
    search_ef_search: int = Field(default=100, ge=10, le=1000, description="HNSW ef_search.")
    search_exact_max_chunks: int = Field(
        default=5_000,
        ge=0,
        description="An agent with at most this many stored chunks is searched exactly (every "
        "chunk compared, no index); a larger one through the HNSW index.",
    )
    chunk_size: int = Field(default=1000, ge=100, le=20_000)
    chunk_overlap: int = Field(default=100, ge=0, le=10_000)
    embedding_model: str | None = Field(
        default=None, description="Local sentence-transformers model path; unset = bundled."
    )
    embedding_device: str = Field(
        default="auto", description="cpu, cuda, cuda:N, or auto (CUDA when present)."
    )
    embedding_precision: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        default="auto",
        description="auto: bfloat16 on a GPU; on a CPU with AVX512_BF16/AMX whichever measured "
        "faster there (README, auto precision), else float32; "
        "int8: the ONNX export quantized per channel (CPU, `int8` extra), asked for only.",
    )
    embedding_batch_size: int = Field(default=32, ge=1, le=1024)
    embed_activity_chunks: int = Field(
        default=128, ge=1, le=10_000, description="Chunks embedded by one activity."
    )
    max_document_chunks: int = Field(
        default=20_000, ge=1, description="A document past this many chunks fails."
    )
    extract_time_limit: timedelta = Field(
        default=timedelta(minutes=5),
        ge=timedelta(seconds=1),
        le=timedelta(minutes=9),
        description=(
            "How long (wall clock) the worker lets a child process read one PDF, Word file or "
            "HTML file over 1 MiB before it stops it and fails the document as too slow to "
            "read; under the extract step's 10-minute timeout."
        ),
    )
    extract_memory_limit_mib: int = Field(
        default=2048,
        ge=64,
        le=1024 * 1024,
        description=(
            "Memory (MiB, address space beyond what it starts with) that the child process "
            "reading one PDF, Word file or HTML file over 1 MiB may use; a file that needs more "
            "fails (DocumentTooLarge, or CorruptDocument when the PDF reader crashes at the "
            "limit)."
        ),
    )
    activity_heartbeat_timeout: timedelta = Field(
        default=timedelta(minutes=1),
        ge=timedelta(seconds=1),  # steps take it in whole seconds (IngestTask.heartbeat_timeout_s)
        description="How soon a lost worker's activity is retried.",
    )
    database_attempts: int = Field(
        default=10, ge=1, le=100, description="Attempts of store/record before `error`."
    )
    embed_window: int = Field(default=4, ge=1, le=64, description="Embed batches in flight.")
    worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description=(
            "Nice increment of `docingest worker`: on a shared machine embedding yields the "
            "CPU to the API, Temporal and PostgreSQL; 0 keeps normal priority."
        ),
    )
    # Not empty: the SDK refuses a worker or a schedule of no task queue with a traceback.
    task_queue: str = Field(default="docingest", min_length=1)
    embed_task_queue: str = Field(default="docingest-embed", min_length=1)
    log_level: str = "INFO"

    @field_validator(
        "staging_ttl",
        "extract_time_limit",
        "activity_heartbeat_timeout",
        "upload_orphan_grace",
        "key_cache_ttl",
        "progress_max_age",
        mode="before",
    )
    @classmethod
    def _seconds(cls, value: object) -> object:
        """Durations also read as plain seconds (`DOCINGEST_STAGING_TTL=3600`)."""
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value

    @field_validator("home", mode="before")
    @classmethod
    def _home_not_empty(cls, value: object) -> object:
        """An empty one was the current folder: the database, Temporal's file and the staging
        store were made there, not under `.docingest`."""
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "DOCINGEST_HOME is empty: give the folder for docingest's state, or unset it "
                "for .docingest"
            )
        return value

    @field_validator("embedding_device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        """Refused here rather than by torch at the first model load (the API's first search)."""
        if not EMBEDDING_DEVICE.fullmatch(value):
            raise ValueError(
                f"DOCINGEST_EMBEDDING_DEVICE ({value!r}) must be auto, cpu, cuda or cuda:N"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        """Refused here rather than by `logging` with a traceback, once the command runs."""
        if value.upper() not in LOG_LEVELS:
            raise ValueError(
                f"DOCINGEST_LOG_LEVEL ({value!r}) must be one of {', '.join(LOG_LEVELS)}"
            )
        return value

    @field_validator(*UNSET_WHEN_EMPTY, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`DOCINGEST_DATABASE_URL=` (a compose file's `${DATABASE_URL:-}`, an `.env` line left
        blank) means the default, as if unset, not a URL to refuse."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        """Refused here rather than with a SQLAlchemy traceback at the first connection; the
        message never repeats the URL, which may hold a password."""
        if value is None:
            return None
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):  # no URL at all, or a port that is no number
            url = None
        if url is None or url.get_backend_name() not in ("postgres", "postgresql"):
            raise ValueError(
                "DOCINGEST_DATABASE_URL must be a PostgreSQL URL, "
                "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            )
        if url.drivername not in PSYCOPG_DRIVERS:
            raise ValueError(
                f"DOCINGEST_DATABASE_URL names the {url.get_driver_name()} driver: docingest "
                "connects with psycopg 3, postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            )
        return value

    @field_validator("temporal_address")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        """Refused here rather than by the Temporal SDK with a traceback."""
        if value is None:
            return None
        found = TEMPORAL_ADDRESS.fullmatch(value)
        if found is None or not 1 <= int(found.group(2)) <= MAX_PORT:
            raise ValueError(
                f"DOCINGEST_TEMPORAL_ADDRESS ({value!r}) must be HOST:PORT, e.g. temporal:7233"
            )
        return value

    @field_validator("staging_url")
    @classmethod
    def _staging_backend_installed(cls, value: str | None) -> str | None:
        """Refused here rather than with a traceback as the API or the worker starts (an
        `s3://` URL without s3fs); the message never repeats the URL, which may hold a key."""
        if value is None:
            return None
        for link in value.split("::"):  # fsspec's chained URLs, `simplecache::s3://…`
            try:
                get_filesystem_class(split_protocol(link)[0] or "file")
            except (ImportError, ValueError) as exc:  # not installed, or no such protocol
                raise ValueError(f"DOCINGEST_STAGING_URL: {exc}") from exc
        return value

    @field_validator("embedding_model")
    @classmethod
    def _model_folder_exists(cls, value: str | None) -> str | None:
        """Refused here rather than at the first model load (the API's first search), where
        a folder that holds no model failed with a traceback from transformers."""
        if value is None:
            return value
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise ValueError(
                f"DOCINGEST_EMBEDDING_MODEL ({value!r}) is not a folder: give the path of a "
                "local sentence-transformers model, or unset it for the bundled one"
            )
        if not any((folder / name).is_file() for name in MODEL_FILES):
            raise ValueError(
                f"DOCINGEST_EMBEDDING_MODEL ({value!r}) holds no model (no "
                f"{' or '.join(MODEL_FILES)}): give the path of a local sentence-transformers "
                "model, or unset it for the bundled one"
            )
        return value

    @model_validator(mode="after")
    def _overlap_at_most_half_the_size(self) -> Settings:
        """As the API requires of an upload's chunking (`api.ingest_start.chunking`)."""
        if self.chunk_overlap > self.chunk_size // 2:
            raise ValueError(
                f"DOCINGEST_CHUNK_OVERLAP ({self.chunk_overlap}) must be at most half of "
                f"DOCINGEST_CHUNK_SIZE ({self.chunk_size})"
            )
        return self

    @model_validator(mode="after")
    def _history_fits(self) -> Settings:
        """Each embed activity adds about six events to the task's Temporal history, which
        fails past 51,200: the largest document allowed must fit with room to spare."""
        activities = -(-self.max_document_chunks // self.embed_activity_chunks)
        if activities > MAX_EMBED_ACTIVITIES:
            least = -(-self.max_document_chunks // MAX_EMBED_ACTIVITIES)
            raise ValueError(
                f"DOCINGEST_EMBED_ACTIVITY_CHUNKS ({self.embed_activity_chunks}) is too small "
                f"for DOCINGEST_MAX_DOCUMENT_CHUNKS ({self.max_document_chunks}): a document "
                f"would take {activities} embed activities, over {MAX_EMBED_ACTIVITIES} (its "
                f"Temporal history would outgrow its limit); use at least {least}"
            )
        return self

    @model_validator(mode="after")
    def _two_task_queues(self) -> Settings:
        """A worker polls both queues with different work on each: one queue for both made
        `docingest worker` die at start-up on an SDK error (overlapping workers), and split
        roles take each other's activities, which they cannot run."""
        if self.task_queue == self.embed_task_queue:
            raise ValueError(
                f"DOCINGEST_EMBED_TASK_QUEUE must differ from DOCINGEST_TASK_QUEUE "
                f"(both {self.task_queue!r})"
            )
        return self

    def as_environment(self) -> dict[str, str]:
        """The `DOCINGEST_*` variables that give another process exactly these settings."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, timedelta):
                value = int(value.total_seconds())
            env[f"DOCINGEST_{name.upper()}"] = str(value)
        return env

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def models_dir(self) -> Path:
        """Where built model files (the int8 ONNX export) are kept."""
        return self.resolved_home / "models"

    @property
    def resolved_staging_url(self) -> str:
        return self.staging_url or str(self.resolved_home / "staging")

    @property
    def resolved_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"
