"""Apply the Alembic migrations shipped in the `migrations` package."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations


def _config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url is not None:
        # configparser treats % as interpolation: escape it in passwords and query strings.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_to_head(url: str) -> None:
    command.upgrade(_config(url), "head")


@functools.cache
def revisions_behind_head() -> frozenset[str]:
    """The revisions this release migrates from: a database at one of them lacks tables or
    columns the code uses (one at a revision not shipped here is a later release's)."""
    script = ScriptDirectory.from_config(_config())
    head = script.get_current_head()
    return frozenset(revision.revision for revision in script.walk_revisions()) - {head}
