"""Keep API keys out of the server's log.

A browser watching a task sends its key as `?token=<key>` (it cannot set headers on a
WebSocket), and uvicorn logs each WebSocket it accepts, and each request, with its query
string, at INFO: the default level of `docingest api`. Every key a browser used was written
to the log in full, while the database keeps only its hash.
"""

from __future__ import annotations

import logging
import re

# The loggers whose lines quote a request's path and query string.
SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access")
REDACTED = "[redacted]"
# The parameter's name as the server reads it: each letter may come percent-encoded (`%74oken`
# is `token` to the route, which took the key, and was logged whole).
_NAME = "".join(f"(?:{letter}|%{ord(letter):02x})" for letter in "token")
_TOKEN = re.compile(rf"([?&]{_NAME}=)[^&\s\"]*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Replaces the value of a `token` query parameter in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redacted(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        return True


def _redacted(value: object) -> object:
    return _TOKEN.sub(rf"\g<1>{REDACTED}", value) if isinstance(value, str) else value


_FILTER = RedactTokens()


def redact_tokens_in_server_logs() -> None:
    """Install the filter on uvicorn's loggers (once: a logger keeps one copy of a filter)."""
    for name in SERVER_LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)
